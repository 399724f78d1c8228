"""tools/study.py: docs/study.md's block is what the recorded study runs render to, and its claims
follow the correlations (significance, sign, constant measures)."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pages import page_with_block

from lbtf import study as stats
from lbtf.errors import UsageError
from tools import readme, study

ROOT = Path(__file__).resolve().parents[1]


def test_study_block_is_the_recorded_runs_rendered():
    text = (ROOT / "docs" / "study.md").read_text()
    block = text.split(study.BEGIN, 1)[1].split(study.END, 1)[0].strip()
    assert block == study.block(ROOT / "docs")
    for f in (ROOT / "docs").glob("study_*.json"):
        results = json.loads(f.read_text())
        assert (ROOT / "docs" / study.figure_name(results)).stat().st_size > 1000


def corr_row(measure, tau_batch, p_batch, tau_gap, p_gap, bn="moving"):
    return {"measure": measure, "bn": bn, "space": "full", "epsilon": "-", "n": 15,
            "tau_gap_acc": tau_gap, "p_gap_acc": p_gap, "tau_gap_loss": 0.0, "p_gap_loss": 1.0,
            "tau_batch": tau_batch, "p_batch": p_batch, "largest_sharper": 2, "trials": 3}


def test_claims_sort_measures_by_sign_and_significance():
    corr = pd.DataFrame([corr_row("trace", -0.6, 0.001, -0.5, 0.01),
                         corr_row("pacbayes", 0.5, 0.02, 0.4, 0.04),
                         corr_row("average", 0.3, 0.2, 0.1, 0.6),
                         corr_row("hessian", math.nan, math.nan, math.nan, math.nan)])
    text = study.claims("Moving BN", corr)
    assert "Larger with the batch size: pacbayes." in text
    assert "Smaller with the batch size: trace." in text
    assert "Rising with the accuracy gap: pacbayes." in text
    assert "Falling with it: trace." in text
    assert "Constant (no correlation defined): hessian." in text
    assert "average" not in text  # p 0.2: no claim either way


def sweep(gaps: dict[int, list[float]]) -> dict:
    """A minimal batch_sweep results.json: runs with the given accuracy gaps per batch size, and a
    measure equal to the batch size (perfectly ordered)."""
    runs = [{"trial": t, "regime": f"B{b}", "batch_size": b, "train_acc": 1.0,
             "test_acc": 1.0 - g / 100, "train_loss": 0.01, "test_loss": 0.5 + g, "epochs": 20,
             "stop_reason": "patience"} for b, gs in gaps.items() for t, g in enumerate(gs)]
    found = pd.DataFrame([{"trial": r["trial"], "regime": r["regime"], "measure": "trace",
                           "bn": "moving", "space": "full", "epsilon": None,
                           "value": float(r["batch_size"])} for r in runs])
    corr = stats.correlations(stats.joined(found, pd.DataFrame(runs)))
    return {"experiment": "batch_sweep", "network": "F1", "dataset": "mnist1d", "bn_layer": "batch",
            "run_name": "study_test", "batch_sizes": list(gaps), "seconds": 120.0,
            "environment": {"cpu_cores": 2, "cpu": "test cpu"},
            "measurement": {"measures": ["trace"], "measure_samples": 10}, "runs": runs,
            "measurements": found.to_dict(orient="records"),
            "correlations": corr.to_dict(orient="records")}


def test_gap_claim_and_correlations_from_a_known_sweep():
    """Gaps rising with the batch size in every trial: Kendall's tau between gap and batch size
    computed by hand, and the measure (equal to the batch size) ordered with both."""
    results = sweep({32: [1.0, 2.0, 3.0], 128: [4.0, 5.0, 6.0], 400: [7.0, 8.0, 9.0]})
    gaps, sizes = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9.0]), np.repeat([32, 128, 400], 3)
    concordant = sum(np.sign(gaps[i] - gaps[j]) * np.sign(sizes[i] - sizes[j])
                     for i in range(9) for j in range(i))
    tau = concordant / math.sqrt(36 * (36 - 9))  # tau-b: 36 pairs, 9 tied in batch size
    assert f"Kendall tau {tau:+.2f}" in study.gap_claim(results)
    assert "grows with the batch size" in study.gap_claim(results)
    text = study.render_one(results, "fig.png")
    assert "Larger with the batch size: trace." in text
    assert "Rising with the accuracy gap: trace." in text
    assert "3/3" in text  # the largest batch has the larger value in every trial
    assert "2.0 min on 2 CPU cores (test cpu)" in text


def test_update_records_the_run_and_refuses_one_without_measurements(tmp_path):
    docs, run, page = page_with_block(tmp_path, "study.md", study.BEGIN, study.END)
    results = sweep({32: [1.0, 2.0, 3.0], 400: [5.0, 6.0, 7.0]})
    with pytest.raises(UsageError, match="did not finish"):
        study.update(page, run, results, docs)
    assert "old" in page.read_text()
    with pytest.raises(UsageError, match="without measurements"):
        study.update(page, run, {**results, "correlations": []}, docs)
    (run / "measures_vs_gap.png").write_bytes(b"x" * 2000)
    (run / "results.json").write_text(json.dumps(results))
    assert readme.update(tmp_path, run) == "docs/study.md"
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert text.split(study.BEGIN)[1].split(study.END)[0].strip() == study.block(docs)
    assert (docs / "study_test_measures_vs_gap.png").is_file()


def test_a_run_measured_at_one_loss_says_so_and_comes_last(tmp_path):
    plain = sweep({32: [1.0, 2.0, 3.0], 400: [5.0, 6.0, 7.0]})
    at = {**plain, "run_name": "study_at",
          "measurement": {**plain["measurement"], "point": "the first epoch at training loss <= 0.03"}}
    assert "every run measured at first epoch at training loss <= 0.03" in study.render_one(at, "f")
    assert "measured at its lowest training loss" in study.render_one(plain, "f")
    for name, r in (("study_a_at.json", at), ("study_b.json", plain)):
        (tmp_path / name).write_text(json.dumps(r))
    text = study.block(tmp_path)
    assert text.index("`study_test`") < text.index("`study_at`")
