"""Shared fixtures. Two logical CPU devices are configured before TensorFlow initialises, so that
MirroredStrategy can be tested on a machine without GPUs."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data root holding a small cached MNIST-1D (500 samples), shared by the whole session."""
    from lbtf.data import load_mnist1d

    d = tmp_path_factory.mktemp("data")
    load_mnist1d(num_samples=500, data_dir=str(d))
    return d


def run_cli(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs run_experiments.py in a fresh process, as a user would (`env` adds variables)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "run_experiments.py"), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def run_experiment(*args: str) -> tuple[Path | None, str]:
    """Runs an experiment in this process, its flags parsed and validated by absl as
    run_experiments.py does; returns its run folder and its log. Errors propagate as exceptions
    (UsageError, absl's flags.Error)."""
    import importlib

    from lbtf.experiments.flags import parse

    config = parse(list(args))
    lines: list[str] = []
    experiment = importlib.import_module(f"lbtf.experiments.{config.run.experiment}")
    run_dir = experiment.run(config, log=lines.append)
    return run_dir, "\n".join(lines)
