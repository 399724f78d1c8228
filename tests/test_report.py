"""Report tables (lbtf.report) against values computed by hand, and the paper's numbers against the
paper's own text (shared/paper beside the repository, as CI lays it out), parsed here."""

import re
from pathlib import Path

import pandas as pd
import pytest

from lbtf import report

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / \
    "keskar2017-large-batch-sharp-minima.txt"
NETS = ["F1", "F2", "C1", "C2", "C3", "C4"]


@pytest.fixture(scope="module")
def paper() -> str:
    if not PAPER.is_file():
        pytest.skip(f"the paper's text is not at {PAPER}")
    return PAPER.read_text()


def _pairs(text: str) -> list[tuple[float, float]]:
    return [(float(m), float(s)) for m, s in re.findall(r"([\d.]+)%? ± ([\d.]+)%?", text)]


def _block(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def test_table2_constants_are_the_papers(paper):
    """The text extraction keeps SB training per network, then LB training as a row of means and
    a row of stds, then SB and LB testing as rows of pairs."""
    block = _block(paper, "Table 2: Performance", "We emphasize")
    sb_train = {n: (float(m), float(s)) for n, m, s in
                re.findall(r"^(F1|F2|C1|C2|C3|C4) ([\d.]+)% ± ([\d.]+)%$", block, re.M)}
    lines = block.splitlines()
    means = [float(v) for v in re.findall(r"([\d.]+)%", next(ln for ln in lines
                                                            if ln.startswith("99.92%")))]
    stds = [float(v) for v in re.findall(r"± ([\d.]+)%", next(ln for ln in lines
                                                             if ln.startswith("± 0.01%")))]
    tests = [_pairs(ln) for ln in lines if ln.startswith(("98.03%", "97.81%"))]
    assert len(sb_train) == len(means) == len(stds) == 6 and [len(t) for t in tests] == [6, 6]
    for i, net in enumerate(NETS):
        got = [report.PAPER_TABLE2[net][c] for c in report.TABLE2_COLUMNS]
        assert got == [sb_train[net], (means[i], stds[i]), tests[0][i], tests[1][i]], net


@pytest.mark.parametrize("constants,start,end", [
    (report.PAPER_TABLE3, "Table 3: Sharpness", "Table 4:"),
    (report.PAPER_TABLE4, "Table 4: Sharpness", "We conclude")], ids=["3", "4"])
def test_sharpness_constants_are_the_papers(paper, constants, start, end):
    """24 (mean, std) pairs in reading order: SB at 1e-3, LB at 1e-3, SB at 5e-4, LB at 5e-4,
    each for F1..C4."""
    pairs = _pairs(_block(paper, start, end))
    assert len(pairs) == 24
    columns = [(1e-3, "SB"), (1e-3, "LB"), (5e-4, "SB"), (5e-4, "LB")]
    for j, column in enumerate(columns):
        for i, net in enumerate(NETS):
            assert constants[net][column] == pairs[6 * j + i], (net, column)


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


def test_every_measure_is_counted_on_its_own():
    """Metric 2.1 puts LB above SB in both trials, the average-case measure in neither: each
    measure's count is its own, and the Monte-Carlo measures (no eps) get one row."""
    rows = [{"measure": m, "bn": "moving", "space": "full", "epsilon": e, "trial": t, "regime": r,
             "value": v}
            for m, e, vals in (("sharpness", 1e-3, {"SB": 1.0, "LB": 5.0}),
                               ("average", None, {"SB": 0.3, "LB": 0.1}))
            for t in (0, 1) for r, v in vals.items()]
    out = report.every_measure_counts(pd.DataFrame(rows)).set_index("measure")
    assert out.lb_sharper.to_dict() == {"sharpness": 2, "average": 0}
    assert out.median_ratio.to_dict() == pytest.approx({"sharpness": 5.0, "average": 1 / 3})
    assert out.epsilon["average"] == "-"


def test_rescale_markdown_gives_the_ratio_and_whether_it_moved():
    def rows(values):
        return pd.DataFrame([{"measure": m, "bn": "batch", "space": "full", "epsilon": e,
                              "trial": t, "regime": "LB", "value": v}
                             for (m, e), vs in values.items() for t, v in enumerate(vs)])
    before = rows({("sharpness", 1e-3): [10.0, 20.0], ("average", None): [1.0, 2.0],
                   ("adaptive", 1e-3): [0.0, 0.0]})
    after = rows({("sharpness", 1e-3): [20.0, 40.0], ("average", None): [1.005, 2.0],
                  ("adaptive", 1e-3): [0.0, 0.0]})
    table = report.rescale_markdown(before, after, factor=2.0)
    cells = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")]
                               for line in table.splitlines() if line.startswith("| "))}
    assert float(cells["sharpness"][4]) == 2.0 and cells["sharpness"][8] == "True"
    assert float(cells["average"][4]) == pytest.approx(1.0025, abs=6e-4) and cells["average"][8] == "False"
    assert cells["adaptive"][7] == "0" and cells["adaptive"][8] == "–"  # 0 before: no ratio
