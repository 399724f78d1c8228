"""lbtf.readme: the README's Results section is what the recorded demo run renders to, and its
claims follow the numbers."""

import json
from pathlib import Path

import pytest

from lbtf import readme
from lbtf.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_are_the_recorded_run_rendered():
    """README.md between the markers is exactly render(docs/demo_results.json): a number typed
    into the README, or a run recorded without regenerating it, fails here."""
    text = (ROOT / "README.md").read_text()
    block = text.split(readme.BEGIN, 1)[1].split(readme.END, 1)[0].strip()
    results = json.loads((ROOT / "docs" / "demo_results.json").read_text())
    assert block == readme.render(results)
    for file in readme.FIGURES.values():
        assert (ROOT / "docs" / file).stat().st_size > 1000


def summary(sb, s_sb, lb, s_lb):
    return {"summary": [{"regime": "SB", "split": "test", "mean": sb, "std": s_sb},
                        {"regime": "LB", "split": "test", "mean": lb, "std": s_lb},
                        {"regime": "SB", "split": "train", "mean": 100.0, "std": 0.0},
                        {"regime": "LB", "split": "train", "mean": 100.0, "std": 0.0}]}


def test_accuracy_claim_measures_the_gap_in_stds():
    wide = readme.accuracy_claim(summary(73.0, 0.5, 65.0, 1.0))
    assert "by 8.00 points, 8.0 times the larger std: beyond the noise" in wide
    narrow = readme.accuracy_claim(summary(66.6, 0.78, 65.47, 0.67))
    assert "by 1.13 points, 1.4 times the larger std: not beyond the noise" in narrow
    reversed_ = readme.accuracy_claim(summary(60.0, 1.0, 65.0, 1.0))
    assert "is below LB" in reversed_ and "not beyond" in reversed_


def test_sharpness_claims_count_trials():
    results = {"lb_sharper": [
        {"bn": "moving", "space": "full", "epsilon": 1e-3, "trials": 3, "lb_sharper": 3,
         "median_ratio": 40.0},
        {"bn": "moving", "space": "full", "epsilon": 5e-4, "trials": 3, "lb_sharper": 2,
         "median_ratio": 3.0}]}
    (claim,) = readme.sharpness_claims(results)
    assert "3/3 trials at ε = 0.001" in claim and "2/3 trials at ε = 0.0005" in claim
    assert "in every trial" not in claim


def test_update_refuses_an_unfinished_run_and_leaves_the_readme(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(f"intro\n{readme.BEGIN}\nold\n{readme.END}\nrest\n")
    with pytest.raises(UsageError, match="results.json not found"):
        readme.update(page, tmp_path / "no_run", tmp_path)
    assert "old" in page.read_text()
