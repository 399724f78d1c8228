"""tools/readme.py: the README's Results block and docs/results.md's Hoffer block are what the
recorded runs render to, their claims follow the numbers, and recorded files name no machine."""

import json
from pathlib import Path

import pandas as pd
import pytest

from lbtf.errors import UsageError
from tools import readme

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
        readme.update(tmp_path, tmp_path / "no_run")
    assert "old" in page.read_text()


def hoffer_runs(test: dict[str, list[float]]) -> list[dict]:
    return [{"regime": c, "trial": t, "test_acc": a / 100, "train_acc": 1.0, "batch_size": 32 if
             c == "SB" else 1024, "epochs": 320 if c == "+RA" else 10, "stop_reason": "max_epochs",
             "seconds": 30.0} for c, accs in test.items() for t, a in enumerate(accs)]


def test_hoffer_claim_gives_the_gap_and_the_share_each_column_closes():
    runs = pd.DataFrame(hoffer_runs({"SB": [73.0, 75.0], "LB": [61.0, 61.0], "+LR": [67.0, 67.0],
                                     "+GBN": [71.0, 71.0], "+RA": [76.0, 76.0]}))
    # SB 74 +- 1.41 (sample std), LB 61: 13 points = 9.2 stds; +LR closes 6/13, +GBN 10/13,
    # +RA 15/13 of it.
    assert readme.hoffer_claim(runs) == (
        "LB is 13.00 points below SB, 9.2 times the larger std: a gap beyond the noise (training "
        "accuracy: LB +0.00 points against SB, so a generalisation gap); share of it closed: "
        "+LR 46%, +GBN 77%, +RA 115%.")
    # LB 40 points short in training accuracy of a 13-point test gap: underfitting.
    runs.loc[runs.regime == "LB", "train_acc"] = 0.6
    assert "(40.00 of its points already in training accuracy: mostly underfitting" in (
        readme.hoffer_claim(runs))
    level = pd.DataFrame(hoffer_runs({"SB": [55.0, 57.0], "LB": [54.0, 56.0], "+LR": [50.0, 50.0]}))
    assert readme.hoffer_claim(level).endswith("no gap beyond the noise (at least 3 times the "
                                               "larger std); the remedies cannot be judged against it.")


def test_readme_hoffer_block_is_the_recorded_twins_rendered():
    """docs/results.md's Hoffer block is exactly what the recorded runs (docs/hoffer_*.json) render
    to."""
    text = (ROOT / "docs" / "results.md").read_text()
    block = text.split(readme.HOFFER_BEGIN, 1)[1].split(readme.HOFFER_END, 1)[0].strip()
    assert block == readme.hoffer_block(ROOT / "docs")
    assert block.count("**") >= 2  # at least one twin recorded


def test_update_hoffer_records_a_run_and_rewrites_only_its_block(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "results.md"
    page.write_text(f"a\n{readme.BEGIN}\nkeep\n{readme.END}\n{readme.HOFFER_BEGIN}\nold\n"
                    f"{readme.HOFFER_END}\nb\n")
    run = tmp_path / "run"
    run.mkdir()
    results = {"experiment": "hoffer", "network": "F1", "dataset": "mnist1d",
               "environment": {"cpu_cores": 2}, "paper": ["MNIST", [98.27, 97.05, 97.55, 97.6,
                                                                   98.53]],
               "runs": hoffer_runs({"SB": [73.0, 75.0], "LB": [61.0, 61.0], "+LR": [67.0, 67.0],
                                    "+GBN": [71.0, 71.0], "+RA": [76.0, 76.0]})}
    results["runs"][0]["checkpoint"] = "/scratch/me/outputs/h/checkpoints/trial0_SB/weights-10"
    (run / "results.json").write_text(json.dumps(results))
    assert readme.update(tmp_path, run) == "docs/results.md"
    text = page.read_text()
    recorded = json.loads((tmp_path / "docs" / "hoffer_F1.json").read_text())
    assert "keep" in text and "old" not in text
    assert recorded["runs"][0]["checkpoint"] == "checkpoints/trial0_SB/weights-10"
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
             for ln in text.splitlines() if ln.startswith("| ")}
    assert cells["test"] == ["74.00 ± 1.41", "61.00 ± 0.00", "67.00 ± 0.00", "71.00 ± 0.00",
                             "76.00 ± 0.00"]
    assert cells["paper (MNIST, test)"] == ["98.27", "97.05", "97.55", "97.60", "98.53"]
    assert "SB 32, LB 1024, 2 trials; 10 epochs (320 in +RA); 5.0 min of training" in text


def test_recorded_files_name_no_machine_path():
    """Every recorded run in docs/ keeps its checkpoint paths inside its run folder."""
    for file in (ROOT / "docs").glob("*.json"):
        text = file.read_text().replace('"/device:', '"device:')  # device names are not paths
        assert '"/' not in text and '"outputs/' not in text and "/tmp/" not in text, file.name
