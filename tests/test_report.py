"""Report tables (lbtf.report) against values computed by hand, and the paper's numbers against a
transcription made here, row by row from the paper's text (report.py holds them column by column)."""

import pandas as pd
import pytest

from lbtf import report

# Keskar et al. (2017), Table 2: SB train, LB train, SB test, LB test (mean, std), in percent.
TABLE2 = """
F1 99.66 0.05 99.92 0.01 98.03 0.07 97.81 0.07
F2 99.99 0.03 98.35 2.08 64.02 0.20 59.45 1.05
C1 99.89 0.02 99.66 0.20 80.04 0.12 77.26 0.42
C2 99.99 0.04 99.99 0.01 89.24 0.12 87.26 0.07
C3 99.56 0.44 99.88 0.30 49.58 0.39 46.45 0.43
C4 99.10 1.23 99.57 1.84 63.08 0.50 57.81 0.17
"""
# Tables 3 (full space) and 4 (subspace, p = 100): SB and LB at eps 1e-3, then at eps 5e-4.
TABLE3 = """
F1 1.23 0.83 205.14 69.52 0.61 0.27 42.90 17.14
F2 1.39 0.02 310.64 38.46 0.90 0.05 93.15 6.81
C1 28.58 3.13 707.23 43.04 7.08 0.88 227.31 23.23
C2 8.68 1.32 925.32 38.29 2.07 0.86 175.31 18.28
C3 29.85 5.98 258.75 8.96 8.56 0.99 105.11 13.22
C4 12.83 3.84 421.84 36.97 4.07 0.87 109.35 16.57
"""
TABLE4 = """
F1 0.11 0.00 9.22 0.56 0.05 0.00 9.17 0.14
F2 0.29 0.02 23.63 0.54 0.05 0.00 6.28 0.19
C1 2.18 0.23 137.25 21.60 0.71 0.15 29.50 7.48
C2 0.95 0.34 25.09 2.61 0.31 0.08 5.82 0.52
C3 17.02 2.20 236.03 31.26 4.03 1.45 86.96 27.39
C4 6.05 1.13 72.99 10.96 1.89 0.33 19.85 4.12
"""


def _rows(text: str) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for line in text.strip().splitlines():
        net, *numbers = line.split()
        values = [float(v) for v in numbers]
        out[net] = list(zip(values[::2], values[1::2], strict=True))
    return out


def test_table2_constants_are_the_papers():
    for net, cells in _rows(TABLE2).items():
        assert [report.PAPER_TABLE2[net][c] for c in report.TABLE2_COLUMNS] == cells, net


@pytest.mark.parametrize("constants,text", [(report.PAPER_TABLE3, TABLE3),
                                            (report.PAPER_TABLE4, TABLE4)], ids=["3", "4"])
def test_sharpness_constants_are_the_papers(constants, text):
    columns = [(1e-3, "SB"), (1e-3, "LB"), (5e-4, "SB"), (5e-4, "LB")]
    for net, cells in _rows(text).items():
        assert [constants[net][c] for c in columns] == cells, net


def test_accuracy_summary_and_table2_markdown():
    runs = pd.DataFrame({"regime": ["SB", "SB", "LB", "LB"],
                         "train_acc": [0.99, 0.97, 1.0, 1.0], "test_acc": [0.9, 0.8, 0.7, 0.7]})
    summary = report.accuracy_summary(runs).set_index(["regime", "split"])
    # Sample std of 90 and 80 is sqrt(50) = 7.071.
    assert summary.loc[("SB", "test")][["mean", "std", "n"]].tolist() == pytest.approx(
        [85.0, 50 ** 0.5, 2])
    assert summary.loc[("LB", "train")][["mean", "std"]].tolist() == [100.0, 0.0]
    text = report.table2_markdown(report.accuracy_summary(runs), network="F1", dataset="d")
    ours = next(ln for ln in text.splitlines() if "lbtf, F1 on d" in ln)
    assert [c.strip() for c in ours.strip("|").split("|")][1:] == [
        "98.00 ± 1.41", "100.00 ± 0.00", "85.00 ± 7.07", "70.00 ± 0.00"]
    assert "| paper, F1" in text and "98.03 ± 0.07" in text


def test_sharper_counts_pair_trials():
    cells = {(0, "SB"): 1.0, (0, "LB"): 4.0, (1, "SB"): 2.0, (1, "LB"): 1.0,
             (2, "SB"): 3.0, (2, "LB"): 9.0}
    rows = pd.DataFrame([{"measure": "sharpness", "bn": "moving", "space": "full",
                          "epsilon": 1e-3, "trial": t, "regime": r, "value": v}
                         for (t, r), v in cells.items()])
    (out,) = report.sharper_counts(rows).to_dict(orient="records")
    # LB / SB per trial: 4, 0.5, 3; LB sharper in trials 0 and 2.
    assert (out["trials"], out["lb_sharper"], out["median_ratio"]) == (3, 2, 3.0)


def test_report_marks_stopped_measurements():
    rows = pd.DataFrame([{"measure": "sharpness", "space": "full", "bn": "moving", "epsilon": 1e-3,
                          "regime": r, "trial": t, "value": v, "stopped_at_start": s}
                         for r, t, v, s in (("SB", 0, 0.0, True), ("SB", 1, 2.0, False),
                                            ("LB", 0, 5.0, False), ("LB", 1, 7.0, False))])
    text = report.sharpness_markdown(rows, space="full", network="F1", dataset="d")
    assert "1.00 ± 1.41 (median 1.00; 0.00–2.00) †1" in text and "†k: k of the" in text
    assert "6.00 ± 1.41 (median 6.00; 5.00–7.00) |" in text
    # The paper's row for F1 at eps 1e-3 sits beside ours.
    assert "1.23 ± 0.83" in text and "205.14 ± 69.52" in text
