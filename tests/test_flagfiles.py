"""Every flagfile in flags/ parses against lbtf's flag definitions and names what it claims."""

from pathlib import Path

import pytest
from absl import flags

import lbtf.experiments.flags  # noqa: F401  (defines the flags)
from lbtf.models import NETWORKS, PAPER_DATASET

FLAGFILES = sorted((Path(__file__).resolve().parents[1] / "flags").glob("*.flags"))


@pytest.fixture()
def fresh_flags():
    flags.FLAGS.unparse_flags()
    yield flags.FLAGS
    flags.FLAGS.unparse_flags()


def test_every_network_has_a_table2_flagfile():
    assert {f"table2_{n}.flags" for n in NETWORKS} <= {p.name for p in FLAGFILES}


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_flagfile_parses(path, fresh_flags):
    fresh_flags(["run_experiments.py", f"--flagfile={path}"])
    experiment, network = path.stem.split("_")[:2]
    assert fresh_flags.experiment == experiment and fresh_flags.network == network
    if not path.stem.endswith("_cpu"):
        assert fresh_flags.dataset == PAPER_DATASET[network]
        assert (fresh_flags.sb_batch_size, fresh_flags.lb_batch_size) == ("256", "0.1")
