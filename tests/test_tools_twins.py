"""tools/twins.py: the conv twins' block in docs/results.md is what the recorded seeds render to,
and each seed's gap is judged against its own noise."""

import json
from pathlib import Path

import pytest
import scipy.stats
from pages import page_with_block

from lbtf.errors import UsageError
from tools import readme, twins

ROOT = Path(__file__).resolve().parents[1]


def test_twins_block_is_the_recorded_seeds_rendered():
    text = (ROOT / "docs" / "results.md").read_text()
    block = text.split(twins.BEGIN, 1)[1].split(twins.END, 1)[0].strip()
    assert block == twins.block(ROOT / "docs")


def twin(seed: int, sb: list[float], lb: list[float], stop: str = "converged") -> dict:
    runs = [{"trial": t, "regime": regime, "seed": seed + t, "test_acc": a / 100, "train_acc": 1.0,
             "epochs": 50, "stop_reason": stop}
            for regime, accs in (("SB", sb), ("LB", lb)) for t, a in enumerate(accs)]
    sharper = [{"measure": "sharpness", "bn": bn, "space": space, "epsilon": eps,
                "trials": len(sb), "lb_sharper": k, "median_ratio": 2.0}
               for bn, k in (("moving", len(sb)), ("batch", 0))
               for space in ("full", "subspace") for eps in (1e-3, 5e-4)]
    return {"experiment": "table2", "network": "C1", "dataset": "cluttered_digits",
            "num_train": 4000, "batch_sizes": {"SB": 32, "LB": 400}, "seconds": 600.0,
            "environment": {"cpu_cores": 2, "cpu": "test cpu"}, "runs": runs,
            "measurements": [{"epsilon": 1e-3}, {"epsilon": 5e-4}], "lb_sharper": sharper,
            "distances": [{"ratio": 3.0}, {"ratio": 5.0}]}


def test_gap_in_units_of_the_larger_std():
    wide = twins.gap(twin(1000, [74.0, 76.0], [70.0, 70.0]))  # 5 points, std 1.414
    assert wide["points"] == pytest.approx(5.0) and wide["stds"] == pytest.approx(5 / 2**0.5)
    assert wide["beyond"]
    narrow = twins.gap(twin(1000, [73.0, 75.0], [72.0, 73.0]))  # 1.5 points, std 1.414
    assert not narrow["beyond"]
    assert not twins.gap(twin(1000, [70.0, 70.0], [75.0, 75.0]))["beyond"]  # reversed


def test_seed_row_counts_trials_and_stops():
    row = twins.seed_row(twin(2000, [74.0, 76.0], [70.0, 70.0], stop="max_epochs"))
    assert row["seeds"] == "2000-2001"
    assert row["LB sharper, moving BN (full; subspace)"] == "2/2, 2/2; 2/2, 2/2"
    assert row["LB sharper, batch BN (full; subspace)"] == "0/2, 0/2; 0/2, 0/2"
    assert row["stopped by the rule"] == "0/4" and row["distance ratio"] == "4.00 ± 1.41"


def test_verdict_counts_seeds_beyond_the_noise(tmp_path):
    seeds = [twin(1000, [74.0, 76.0], [70.0, 70.0]), twin(2000, [73.0, 75.0], [72.0, 73.0])]
    text = twins.render_network(seeds)
    assert "on 1 of 2 seeds: at this scale the twin does not show the paper's gap" in text
    assert "every seed (2/2)" in twins.render_network(seeds[:1] * 2)


def test_update_records_a_conv_table2_run_and_leaves_others(tmp_path):
    docs, run, page = page_with_block(tmp_path, "results.md", twins.BEGIN, twins.END)
    results = twin(1000, [74.0, 76.0], [70.0, 70.0])
    (run / "results.json").write_text(json.dumps({**results, "measurements": []}))
    with pytest.raises(UsageError, match="without sharpness"):
        readme.update(tmp_path, run)
    assert "old" in page.read_text()
    (run / "results.json").write_text(json.dumps(results))
    assert readme.update(tmp_path, run) == "docs/results.md"
    assert (docs / "twin_C1_seed1000.json").is_file()
    text = page.read_text()
    assert text.split(twins.BEGIN)[1].split(twins.END)[0].strip() == twins.block(docs)
    assert "old" not in text and text.endswith("rest\n")


def test_pooled_gap_is_welchs_test_over_every_trial():
    """SB 74, 76 | 73, 75 against LB 70, 70 | 72, 73: t and Welch-Satterthwaite's degrees of
    freedom by hand, the p-value from Student's t distribution."""
    seeds = [twin(1000, [74.0, 76.0], [70.0, 70.0]), twin(2000, [73.0, 75.0], [72.0, 73.0])]
    se_sb, se_lb = (5 / 3) / 4, 2.25 / 4  # sample variances 5/3 and 9/4, over 4 runs each
    t = 3.25 / (se_sb + se_lb) ** 0.5
    df = (se_sb + se_lb) ** 2 / (se_sb**2 / 3 + se_lb**2 / 3)
    p = 2 * scipy.stats.t.sf(t, df)
    text = twins.pooled(seeds)
    assert "4 SB and 4 LB runs" in text and "a gap of +3.25 points" in text
    assert f"two-sided p {p:.2g})" in text and 0.01 < p < 0.03
