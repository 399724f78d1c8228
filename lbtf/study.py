"""Which sharpness measure tracks the generalisation gap: the statistics of a batch-size study.

Every measurement (a row of `measure_minimizers`: measure, BN mode, space, eps) is joined to its
run's batch size and gap, and each measure gets Kendall's rank correlation tau with the
accuracy gap (training minus test accuracy), the loss gap (test minus training loss) and the batch
size, and how often the largest batch is sharper than the smallest batch of the same trial.
Nothing here knows how the runs were trained or measured.
"""

from __future__ import annotations

import pandas as pd
import scipy.stats

KEY = ["measure", "bn", "space", "epsilon"]


def joined(found: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per measurement with its run's batch size and gaps (runs: trial, regime,
    batch_size, train/test accuracy and loss at the measured point)."""
    gaps = runs.assign(gap_acc=runs.train_acc - runs.test_acc,
                       gap_loss=runs.test_loss - runs.train_loss)
    cols = ["trial", "regime", "batch_size", "gap_acc", "gap_loss"]
    rows = found.drop(columns=[c for c in ("batch_size",) if c in found])
    rows = rows.assign(epsilon=rows["epsilon"].fillna("-") if "epsilon" in rows else "-")
    return rows.merge(gaps[cols], on=["trial", "regime"])


def kendall(x, y) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p-value (NaN for fewer than 3 points or constant data)."""
    if len(x) < 3 or pd.Series(x).nunique() < 2 or pd.Series(y).nunique() < 2:
        return float("nan"), float("nan")
    res = scipy.stats.kendalltau(x, y)
    return float(res.statistic), float(res.pvalue)


def largest_vs_smallest(group: pd.DataFrame) -> tuple[int, int]:
    """(trials in which the largest batch's value exceeds the smallest batch's, trials with both)."""
    small, large = group.batch_size.min(), group.batch_size.max()
    wide = group[group.batch_size.isin([small, large])].pivot_table(
        index="trial", columns="batch_size", values="value").dropna()
    if small == large or wide.empty:
        return 0, 0
    return int((wide[large] > wide[small]).sum()), len(wide)


def correlations(rows: pd.DataFrame) -> pd.DataFrame:
    """Per measure (measure, BN mode, space, eps): Kendall's tau with the accuracy gap, the loss gap
    and the batch size (p-values beside), and how often the largest batch is the sharper."""
    out = []
    for key, g in rows.groupby(KEY, sort=False):
        tau_acc, p_acc = kendall(g.value, g.gap_acc)
        tau_loss, p_loss = kendall(g.value, g.gap_loss)
        tau_batch, p_batch = kendall(g.value, g.batch_size)
        sharper, trials = largest_vs_smallest(g)
        out.append({**dict(zip(KEY, key, strict=True)), "n": len(g),
                    "tau_gap_acc": tau_acc, "p_gap_acc": p_acc,
                    "tau_gap_loss": tau_loss, "p_gap_loss": p_loss,
                    "tau_batch": tau_batch, "p_batch": p_batch,
                    "largest_sharper": sharper, "trials": trials})
    return pd.DataFrame(out)
