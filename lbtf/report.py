"""Tables for report.md: the paper's published numbers and lbtf's measurements side by side."""

from __future__ import annotations

import pandas as pd

from lbtf.choices import KESKAR_NETWORKS

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
    """One line per training run: trial, regime, batch, epochs, stop reason, and the metrics at
    its measured point."""
    cols = [c for c in ("trial", "regime", "batch_size", "epochs", "stop_reason", "measured_epoch",
                        "train_loss", "train_acc", "test_loss", "test_acc", "seconds") if c in runs]
    shown = runs[cols].copy()
    for c in ("train_acc", "test_acc"):
        shown[c] = (100 * shown[c]).round(2)
    return shown.to_markdown(index=False, floatfmt=".4g")

PAPER_DATASET_NOTE = {"F1": "MNIST", "F2": "TIMIT", "C1": "CIFAR-10", "C2": "CIFAR-10",
                      "C3": "CIFAR-100", "C4": "CIFAR-100"}


def _paper_sharpness(rows: dict[str, list[tuple[float, float]]]) -> dict:
    """{network: {(eps, regime): (mean, std)}} from per-column lists in F1..C4 order."""
    out: dict = {n: {} for n in KESKAR_NETWORKS}
    for column, cells in rows.items():
        eps, regime = column.split()
        for net, cell in zip(KESKAR_NETWORKS, cells, strict=True):
            out[net][(float(eps), regime)] = cell
    return out


# Keskar et al. (2017), Table 3 (full space) and Table 4 (random subspace, p = 100).
PAPER_TABLE3 = _paper_sharpness({
    "1e-3 SB": [(1.23, 0.83), (1.39, 0.02), (28.58, 3.13), (8.68, 1.32), (29.85, 5.98),
                (12.83, 3.84)],
    "1e-3 LB": [(205.14, 69.52), (310.64, 38.46), (707.23, 43.04), (925.32, 38.29),
                (258.75, 8.96), (421.84, 36.97)],
    "5e-4 SB": [(0.61, 0.27), (0.90, 0.05), (7.08, 0.88), (2.07, 0.86), (8.56, 0.99),
                (4.07, 0.87)],
    "5e-4 LB": [(42.90, 17.14), (93.15, 6.81), (227.31, 23.23), (175.31, 18.28),
                (105.11, 13.22), (109.35, 16.57)]})
PAPER_TABLE4 = _paper_sharpness({
    "1e-3 SB": [(0.11, 0.00), (0.29, 0.02), (2.18, 0.23), (0.95, 0.34), (17.02, 2.20),
                (6.05, 1.13)],
    "1e-3 LB": [(9.22, 0.56), (23.63, 0.54), (137.25, 21.60), (25.09, 2.61), (236.03, 31.26),
                (72.99, 10.96)],
    "5e-4 SB": [(0.05, 0.00), (0.05, 0.00), (0.71, 0.15), (0.31, 0.08), (4.03, 1.45),
                (1.89, 0.33)],
    "5e-4 LB": [(9.17, 0.14), (6.28, 0.19), (29.50, 7.48), (5.82, 0.52), (86.96, 27.39),
                (19.85, 4.12)]})


def num(value: float) -> str:
    """Two decimals from 1 up (as the paper prints), three significant digits below."""
    return f"{value:.2f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def spread_cell(values: pd.Series, stopped: int = 0) -> str:
    """mean ± std, then median and min–max over trials; "†k": k of them stopped before their first
    L-BFGS-B iteration."""
    v = values.astype(float)
    m, s = mean_std(v)
    cell = f"{num(m)} ± {num(s)} (median {num(v.median())}; {num(v.min())}–{num(v.max())})"
    return cell + (f" †{stopped}" if stopped else "")


STOPPED_NOTE = ("†k: k of the measurements stopped before their first L-BFGS-B iteration (the "
                "projected gradient at the minimiser was below pgtol): their φ = 0 means the "
                "optimiser never moved, not that f cannot rise in the box.")
BN_LABEL = {"moving": "moving BN", "batch": "batch-statistics BN"}


def sharpness_markdown(table: pd.DataFrame, *, space: str, network: str, dataset: str) -> str:
    """Table 3 (space='full') or Table 4 ('subspace') analogue: the sharpness of the SB and LB
    minimisers at each eps over trials, one row per BN measurement mode, beside the paper's row."""
    rows = table[(table.measure == "sharpness") & (table.space == space)]
    if "bn" not in rows:
        rows = rows.assign(bn="moving")
    paper = (PAPER_TABLE3 if space == "full" else PAPER_TABLE4).get(network, {})
    columns = [(eps, regime) for eps in sorted(rows.epsilon.unique(), reverse=True)
               for regime in ("SB", "LB")]
    out, stopped_any = [], False
    for mode, by_mode in rows.groupby("bn", sort=False):
        ours = {"": f"lbtf, {network} on {dataset}, {BN_LABEL.get(mode, mode)}"}
        for eps, regime in columns:
            cell = by_mode[(by_mode.epsilon == eps) & (by_mode.regime == regime)]
            stopped = int(cell["stopped_at_start"].sum()) if "stopped_at_start" in cell else 0
            stopped_any |= stopped > 0
            ours[f"ε = {eps:g} {regime}"] = spread_cell(cell.value, stopped) if len(cell) else "–"
        out.append(ours)
    if paper:
        out.append({"": f"paper, {network}", **{
            f"ε = {eps:g} {regime}": fmt(*paper[(eps, regime)]) if (eps, regime) in paper else "–"
            for eps, regime in columns}})
    text = pd.DataFrame(out).to_markdown(index=False)
    return text + ("\n\n" + STOPPED_NOTE if stopped_any else "")


def sharper_counts(table: pd.DataFrame, measure: str = "sharpness") -> pd.DataFrame:
    """Per (BN mode, space, eps) of `measure`: in how many trials the LB minimiser is sharper
    (a larger value) than the SB one of the same trial, and the median LB / SB ratio."""
    rows = table[table.measure == measure]
    if "bn" not in rows:
        rows = rows.assign(bn="moving")
    if "epsilon" not in rows or rows.epsilon.isna().all():
        rows = rows.assign(epsilon="-")  # the Monte-Carlo measures have no box
    wide = rows.pivot_table(index=["bn", "space", "epsilon", "trial"], columns="regime",
                            values="value").dropna()
    out = []
    if not {"SB", "LB"} <= set(wide.columns):
        return pd.DataFrame(out)
    for (mode, space, eps), g in wide.groupby(level=[0, 1, 2], sort=False):
        ratio = g.LB / g.SB.where(g.SB > 0)
        out.append({"measure": measure, "bn": mode, "space": space, "epsilon": eps,
                    "trials": len(g), "lb_sharper": int((g.LB > g.SB).sum()),
                    "median_ratio": float(ratio.median())})
    return pd.DataFrame(out)


# The measures of --measures as their rows name them, in report order.
MEASURE_ROWS = ("sharpness", "adaptive", "average", "pacbayes", "hessian", "trace")


def every_measure_counts(table: pd.DataFrame) -> pd.DataFrame:
    """sharper_counts of every measure present: which ones put LB above SB, trial by trial."""
    parts = [sharper_counts(table, m) for m in MEASURE_ROWS
             if "measure" in table and (table.measure == m).any()]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def eigenvalue_markdown(table: pd.DataFrame) -> str:
    """Largest Hessian eigenvalue per regime, mean ± std over trials."""
    rows = table[table.measure == "hessian"]
    cells = {r: fmt(*mean_std(g.value), digits=4) for r, g in rows.groupby("regime", sort=False)}
    return pd.DataFrame([{"": "largest Hessian eigenvalue", **cells}]).to_markdown(index=False)


def measurements_markdown(table: pd.DataFrame) -> str:
    """Every measurement on one line, with the optimiser's status."""
    cols = [c for c in ("trial", "regime", "measure", "bn", "space", "epsilon", "value", "f_x",
                        "f_max", "nit", "nfev", "best_start", "message") if c in table]
    shown = table[cols].copy()
    if "stopped_at_start" in table:
        shown["message"] = [m if not s else f"STOPPED BEFORE ITS FIRST ITERATION: {m}"
                            for m, s in zip(table.message, table.stopped_at_start.fillna(False),
                                            strict=True)]
    return shown.to_markdown(index=False, floatfmt=".4g")


def distance_markdown(table: pd.DataFrame) -> str:
    """||x_s - x_0|| and ||x_l - x_0|| per trial and their ratio (paper: 3 to 10)."""
    if not len(table):
        return "No trial has both an SB and an LB run."
    m, s = mean_std(table.ratio)
    shown = table.rename(columns={"sb_distance": "‖x_s − x_0‖", "lb_distance": "‖x_l − x_0‖",
                                  "ratio": "ratio"})
    return (shown.to_markdown(index=False, floatfmt=".4g") +
            f"\n\nRatio ‖x_s − x_0‖ / ‖x_l − x_0‖: {fmt(m, s)} over trials (the paper reports 3 "
            "to 10). Both regimes of a trial start from the same x_0.")


def sharpness_columns(sharpness: pd.DataFrame, index: str) -> pd.DataFrame:
    """Mean sharpness per `index` value, one column per (space, eps), for joining to a table."""
    wide = sharpness.pivot_table(index=index, columns=["space", "epsilon"], values="value",
                                 aggfunc="mean")
    wide.columns = [f"sharpness {s} ε={e:g}" for s, e in wide.columns]
    return wide


# Hoffer et al. (2017), Table 1: top-1 test accuracy (%), LB 4096 with ghost batches of 128; the
# columns are cumulative (+LR: sqrt lr scaling; +GBN: and ghost BN; +RA: and regime adaptation).
# From the authors' NeurIPS 2017 poster. "VGG" is run as C2 (not in the authors' public code).
HOFFER_COLUMNS = ("SB", "LB", "+LR", "+GBN", "+RA")
PAPER_HOFFER_TABLE1 = {
    "F1": ("MNIST", (98.27, 97.05, 97.55, 97.60, 98.53)),
    "C1": ("CIFAR-10", (87.80, 83.95, 86.15, 86.4, 88.20)),
    "resnet44": ("CIFAR-10", (92.83, 86.10, 89.30, 90.50, 93.07)),
    "C2": ("CIFAR-10", (92.30, 84.1, 88.6, 91.50, 93.03)),
    "C3": ("CIFAR-100", (61.25, 51.50, 57.38, 57.5, 63.20)),
    "wrn16_4": ("CIFAR-100", (73.70, 68.15, 69.05, 71.20, 73.57)),
}


def hoffer_table_markdown(trained: pd.DataFrame, *, network: str, dataset: str) -> str:
    """Table 1 analogue: test accuracy per column, mean ± std over trials (runs that diverged
    left out), beside the paper's row for the network."""
    cells = {}
    for column, g in trained.groupby("regime", sort=False):
        cells[column] = fmt(*mean_std(100 * g.test_acc)) if len(g) else "–"
    rows = [{"": f"lbtf, {network} on {dataset}", **{c: cells.get(c, "–") for c in HOFFER_COLUMNS}}]
    if network in PAPER_HOFFER_TABLE1:
        data, values = PAPER_HOFFER_TABLE1[network]
        rows.append({"": f"paper, {network} on {data}",
                     **{c: f"{v:.2f}" for c, v in zip(HOFFER_COLUMNS, values, strict=True)}})
    return pd.DataFrame(rows).to_markdown(index=False)


def rescale_markdown(found: pd.DataFrame, rescaled: pd.DataFrame, *, factor: float) -> str:
    """Each measure's value after rescaling the weights that feed BN by `factor`, against the
    value as trained: the median ratio over minimisers per (measure, BN mode, space, eps), and
    whether it moved (by more than 1%)."""
    keys = ["measure", "bn", "space", "epsilon", "trial", "regime"]
    both = found.assign(epsilon=found.get("epsilon")).merge(
        rescaled.assign(epsilon=rescaled.get("epsilon")), on=keys, suffixes=("", "_rescaled"))
    both = both.assign(epsilon=both.epsilon.fillna("-"),
                       ratio=both.value_rescaled / both.value.where(both.value != 0))
    out = (both.groupby(["measure", "bn", "space", "epsilon"], sort=False).ratio
           .agg(["median", "min", "max", "count"]).reset_index())
    # A measure that was 0 at every minimiser has no ratio: neither moved nor kept.
    out["moved"] = (~out["median"].between(0.99, 1.01)).where(out["count"] > 0, "–")
    note = (f"Every minimiser measured again after multiplying the weights that feed each BN layer "
            f"by {factor:g} (moving statistics scaled to match: the same function up to BN's "
            "epsilon). Ratio: value after / value as trained; – where the value was 0 before.")
    return note + "\n\n" + out.to_markdown(index=False, floatfmt=".4g")

