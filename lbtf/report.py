"""Tables for report.md: the paper's published numbers and lbtf's measurements side by side."""

from __future__ import annotations

import pandas as pd

# Keskar et al. (2017), Table 2: accuracy in percent, (mean, std) over 5 trials.
PAPER_TABLE2 = {
    "F1": {"SB train": (99.66, 0.05), "LB train": (99.92, 0.01),
           "SB test": (98.03, 0.07), "LB test": (97.81, 0.07)},
    "F2": {"SB train": (99.99, 0.03), "LB train": (98.35, 2.08),
           "SB test": (64.02, 0.2), "LB test": (59.45, 1.05)},
    "C1": {"SB train": (99.89, 0.02), "LB train": (99.66, 0.2),
           "SB test": (80.04, 0.12), "LB test": (77.26, 0.42)},
    "C2": {"SB train": (99.99, 0.04), "LB train": (99.99, 0.01),
           "SB test": (89.24, 0.12), "LB test": (87.26, 0.07)},
    "C3": {"SB train": (99.56, 0.44), "LB train": (99.88, 0.30),
           "SB test": (49.58, 0.39), "LB test": (46.45, 0.43)},
    "C4": {"SB train": (99.10, 1.23), "LB train": (99.57, 1.84),
           "SB test": (63.08, 0.5), "LB test": (57.81, 0.17)},
}
TABLE2_COLUMNS = ("SB train", "LB train", "SB test", "LB test")


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = values.astype(float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(mean: float, std: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of final train/test accuracy (percent) per regime, from one row per run."""
    rows = []
    for regime, g in runs.groupby("regime", sort=False):
        for split in ("train", "test"):
            m, s = mean_std(100 * g[f"{split}_acc"])
            rows.append({"regime": regime, "split": split, "mean": m, "std": s, "n": len(g)})
    return pd.DataFrame(rows)


def table2_markdown(summary: pd.DataFrame, *, network: str, dataset: str) -> str:
    """Table 2 analogue: lbtf's row beside the paper's row for the same network."""
    cell = {f"{r.regime} {r.split}": fmt(r.mean, r.std) for r in summary.itertuples()}
    ours = {"": f"lbtf, {network} on {dataset}", **{c: cell.get(c, "–") for c in TABLE2_COLUMNS}}
    table = [ours]
    if network in PAPER_TABLE2:
        paper = PAPER_TABLE2[network]
        table.append({"": f"paper, {network}", **{c: fmt(*paper[c]) for c in TABLE2_COLUMNS}})
    return pd.DataFrame(table).to_markdown(index=False)


def runs_markdown(runs: pd.DataFrame) -> str:
    """One line per training run: trial, regime, batch, epochs, stop reason, final metrics."""
    cols = ["trial", "regime", "batch_size", "epochs", "stop_reason", "train_loss", "train_acc",
            "test_loss", "test_acc", "seconds"]
    shown = runs[cols].copy()
    for c in ("train_acc", "test_acc"):
        shown[c] = (100 * shown[c]).round(2)
    return shown.to_markdown(index=False, floatfmt=".4g")

PAPER_DATASET_NOTE = {"F1": "MNIST", "F2": "TIMIT", "C1": "CIFAR-10", "C2": "CIFAR-10",
                      "C3": "CIFAR-100", "C4": "CIFAR-100"}
