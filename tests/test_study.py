"""lbtf.study: Kendall's tau and the largest-against-smallest batch count, by hand."""

import math

import pandas as pd
import pytest

from lbtf.study import correlations, joined, kendall, largest_vs_smallest


def test_kendall_counts_concordant_and_discordant_pairs():
    # Pairs of (1,1), (2,3), (3,2), (4,4): 5 concordant, 1 discordant: tau = (5 - 1) / 6.
    tau, p = kendall([1, 2, 3, 4], [1, 3, 2, 4])
    assert tau == pytest.approx(4 / 6) and 0 < p < 1
    assert kendall([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)
    assert math.isnan(kendall([1, 2], [1, 2])[0]) and math.isnan(kendall([1, 1, 1], [1, 2, 3])[0])


def _study():
    """Three batch sizes x 2 trials. Measure 'up' rises with the batch and the gap; 'down' falls."""
    runs, found = [], []
    for trial in (0, 1):
        for b, gap in ((32, 0.01), (256, 0.03), (1024, 0.05 + 0.01 * trial)):
            regime = f"B{b}"
            runs.append({"trial": trial, "regime": regime, "batch_size": b, "train_acc": 1.0,
                         "test_acc": 1.0 - gap, "train_loss": 0.01, "test_loss": 0.01 + 2 * gap})
            for measure, value in (("up", b + trial), ("down", -b)):
                found.append({"trial": trial, "regime": regime, "measure": measure, "bn": "moving",
                              "space": "full", "epsilon": None, "value": value})
    return pd.DataFrame(found), pd.DataFrame(runs)


def test_correlations_per_measure():
    found, runs = _study()
    rows = joined(found, runs)
    assert len(rows) == 12 and rows.gap_acc.max() == pytest.approx(0.06)
    out = correlations(rows).set_index("measure")
    # 'up' against the batch: 15 pairs, 3 tied in the batch size (one per size), the other 12
    # concordant: tau-b = 12 / sqrt(15 x 12). 'down' is tied within each size too: -12 / 12.
    assert out.tau_batch["up"] == pytest.approx(12 / 180**0.5)
    assert out.tau_batch["down"] == pytest.approx(-1.0)
    assert out.tau_gap_acc["up"] > 0.8 and out.tau_gap_acc["down"] < -0.8
    assert (out.largest_sharper["up"], out.trials["up"]) == (2, 2)
    assert out.largest_sharper["down"] == 0 and out.epsilon["up"] == "-"


def test_largest_against_smallest_pairs_trials():
    g = pd.DataFrame({"trial": [0, 0, 1, 1, 2], "batch_size": [32, 1024, 32, 1024, 32],
                      "value": [1.0, 5.0, 3.0, 2.0, 9.0]})
    assert largest_vs_smallest(g) == (1, 2)  # trial 2 has no large batch


def test_loss_gap_correlation_of_a_constructed_study():
    """The loss gap is test minus training loss, ranked against the measure by hand: gaps 0.1,
    0.3, 0.2, 0.4 against values 1..4 give 5 concordant pairs and 1 discordant, tau = 4/6. The
    training losses differ, so the test loss alone (1 concordant, 4 discordant, a tie) or the
    flipped gap (-4/6) give other values; the accuracy gap falls as the measure rises (tau -1)."""
    train_loss, loss_gap = [0.5, 0.1, 0.3, 0.0], [0.1, 0.3, 0.2, 0.4]
    runs = pd.DataFrame({"trial": [0] * 4, "regime": ["B1", "B2", "B3", "B4"],
                         "batch_size": [1, 2, 3, 4], "train_acc": [1.0] * 4,
                         "test_acc": [0.6, 0.7, 0.8, 0.9], "train_loss": train_loss,
                         "test_loss": [a + g for a, g in zip(train_loss, loss_gap, strict=True)]})
    found = pd.DataFrame({"trial": [0] * 4, "regime": ["B1", "B2", "B3", "B4"],
                          "measure": ["m"] * 4, "bn": ["moving"] * 4, "space": ["full"] * 4,
                          "epsilon": [None] * 4, "value": [1.0, 2.0, 3.0, 4.0]})
    row = correlations(joined(found, runs)).iloc[0]
    assert row.tau_gap_loss == pytest.approx(4 / 6)
    assert row.tau_gap_acc == pytest.approx(-1.0)
    assert row.tau_batch == pytest.approx(1.0)
