"""The paper's figures from lbtf's tables: matplotlib figures saved as PNG and PDF (atomically),
logged to TensorBoard as images, and embedded in report.md.

Each plotting function takes a pandas table and returns a Figure; none computes anything.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbtf import runs  # noqa: E402

REGIME_COLORS = {"SB": "tab:blue", "LB": "tab:red"}
EPS_STYLES = ("-", "--", ":", "-.")


def save(fig: plt.Figure, run_dir: Path, name: str, *, caption: str, writer=None) -> str:
    """Writes <name>.png and <name>.pdf into run_dir, logs the PNG to TensorBoard under `name`,
    closes the figure, and returns the Markdown that embeds it in report.md."""
    blobs = {}
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120, bbox_inches="tight")
        blobs[fmt] = buf.getvalue()
        runs.atomic_write_bytes(Path(run_dir) / f"{name}.{fmt}", blobs[fmt])
    plt.close(fig)
    if writer is not None:
        with writer.as_default():
            tf.summary.image(name, tf.io.decode_png(blobs["png"], channels=4)[None], step=0,
                             description=caption)
        writer.flush()
    return f"![{caption}]({name}.png)\n\n*{caption}* ([PDF]({name}.pdf))"


def _color(regime: str) -> str:
    return REGIME_COLORS.get(regime, "tab:green")


def training_curves(history: pd.DataFrame, *, title: str) -> plt.Figure:
    """Figure 2: training and test accuracy per epoch, one run per regime."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for regime, g in history.groupby("regime", sort=False):
        ax.plot(g.epoch, 100 * g.train_acc, "-", color=_color(regime), label=f"{regime} – Training")
        ax.plot(g.epoch, 100 * g.test_acc, "--", color=_color(regime), label=f"{regime} – Testing")
    ax.set(xlabel="Epoch", ylabel="Accuracy (%)", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def parametric(table: pd.DataFrame, *, title: str, xlabel: str) -> plt.Figure:
    """Figures 3 and 7: cross-entropy (left axis) and accuracy (right axis) along a path, training
    data solid and test data dashed; alpha = 0 is the SB minimiser and alpha = 1 the LB one."""
    fig, loss_ax = plt.subplots(figsize=(5.5, 4))
    acc_ax = loss_ax.twinx()
    for split, style in (("train", "-"), ("test", "--")):
        loss_ax.plot(table.alpha, table[f"{split}_loss"], style, color="tab:blue",
                     label=f"cross-entropy, {split}")
        acc_ax.plot(table.alpha, 100 * table[f"{split}_acc"], style, color="tab:red",
                    label=f"accuracy, {split}")
    loss_ax.set(xlabel=xlabel, ylabel="Cross-entropy", title=title)
    loss_ax.set_ylabel("Cross-entropy", color="tab:blue")
    acc_ax.set_ylabel("Accuracy (%)", color="tab:red")
    acc_ax.set_ylim(0, 100)
    for a in (0.0, 1.0):
        loss_ax.axvline(a, color="grey", lw=0.6, alpha=0.5)
    lines = loss_ax.get_lines()[:2] + acc_ax.get_lines()
    loss_ax.legend(lines, [ln.get_label() for ln in lines], loc="upper center", fontsize=8)
    return fig


def _sharpness_axis(ax, table: pd.DataFrame, x: str, *, color: str, label: str = "") -> None:
    """One line per (space, eps) of a sharpness table with columns x, space, epsilon, value."""
    for i, ((space, eps), g) in enumerate(table.groupby(["space", "epsilon"], sort=True)):
        g = g.groupby(x, sort=True).value.mean()
        ax.plot(g.index, g.values, EPS_STYLES[i % len(EPS_STYLES)], marker=".", color=color,
                label=f"{label}{space} ε={eps:g}".strip())


def batch_sweep(accuracy: pd.DataFrame, sharpness: pd.DataFrame, *, title: str) -> plt.Figure:
    """Figure 4: test accuracy (left axis) and sharpness (right axis) of the final iterate against
    the batch size. accuracy: batch_size, test_acc; sharpness: batch_size, space, epsilon, value."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    acc = accuracy.groupby("batch_size", sort=True).test_acc.mean()
    ax.plot(acc.index, 100 * acc.values, "o-", color="tab:blue", label="test accuracy")
    ax.set(xlabel="Batch size", title=title, xscale="log")
    ax.set_ylabel("Testing accuracy (%)", color="tab:blue")
    lines = ax.get_lines()
    if len(sharpness):
        right = ax.twinx()
        _sharpness_axis(right, sharpness, "batch_size", color="tab:red", label="sharpness ")
        right.set_ylabel("Sharpness", color="tab:red")
        lines = lines + right.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    return fig


def warm_start(accuracy: pd.DataFrame, sharpness: pd.DataFrame, *, title: str) -> plt.Figure:
    """Figure 5: above, test accuracy of the SB iterates and of the LB runs warm-started from them;
    below, the LB solutions' sharpness; both against the epoch of SB training.
    accuracy: sb_epoch, sb_test_acc, lb_test_acc; sharpness: sb_epoch, space, epsilon, value."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True)
    acc = accuracy.sort_values("sb_epoch")
    top.plot(acc.sb_epoch, 100 * acc.sb_test_acc, "o-", color="tab:blue", label="SB")
    top.plot(acc.sb_epoch, 100 * acc.lb_test_acc, "s-", color="tab:red", label="Piggyback LB")
    top.set(ylabel="Testing accuracy (%)", title=title)
    top.legend(loc="lower right")
    if len(sharpness):
        _sharpness_axis(bottom, sharpness, "sb_epoch", color="tab:red")
        bottom.set_yscale("log")
        bottom.legend(loc="best", fontsize=8)
    bottom.set(xlabel="Epoch of SB training", ylabel="Sharpness")
    for a in (top, bottom):
        a.grid(alpha=0.3)
    return fig


def sharpness_vs_loss(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Figure 6: sharpness of training iterates against their training cross-entropy, per regime
    and eps; the loss axis runs from large (near the start) to small, as in the paper.
    table: regime, train_loss, space, epsilon, value."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for regime, g in table.groupby("regime", sort=False):
        for i, ((space, eps), h) in enumerate(g.groupby(["space", "epsilon"], sort=True)):
            h = h.sort_values("train_loss")
            ax.plot(h.train_loss, h.value, EPS_STYLES[i % len(EPS_STYLES)], marker=".",
                    color=_color(regime), label=f"{regime} – {space} ε={eps:g}")
    ax.set(xscale="log", yscale="log", xlabel="Cross-entropy (training)", ylabel="Sharpness",
           title=title)
    ax.invert_xaxis()
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def remedies(trained: pd.DataFrame, sharpness: pd.DataFrame, *, title: str) -> plt.Figure:
    """Test accuracy and full-space sharpness per regime (bars: mean, whiskers: std)."""
    order = list(dict.fromkeys(trained.regime))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    acc = trained.groupby("regime").test_acc.agg(["mean", "std"]).reindex(order).fillna(0)
    top.bar(order, 100 * acc["mean"], yerr=100 * acc["std"], color="tab:blue", capsize=3)
    top.set(ylabel="Testing accuracy (%)", title=title)
    top.set_ylim(max(0, 100 * acc["mean"].min() - 10), min(100, 100 * acc["mean"].max() + 5))
    full = sharpness[sharpness.space == "full"] if len(sharpness) else sharpness
    if len(full):
        width = 0.8 / full.epsilon.nunique()
        for i, (eps, g) in enumerate(full.groupby("epsilon")):
            s = g.groupby("regime").value.agg(["mean", "std"]).reindex(order)
            pos = [j + (i - 0.5 * (full.epsilon.nunique() - 1)) * width for j in range(len(order))]
            bottom.bar(pos, s["mean"], width, yerr=s["std"], capsize=3, label=f"ε={eps:g}")
        bottom.set_yscale("log")
        bottom.legend(fontsize=8)
    bottom.set(ylabel="Sharpness (full space)")
    bottom.set_xticks(range(len(order)), order, rotation=20)
    return fig


def diffusion(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Hoffer et al.'s ultra-slow diffusion: ||w_t - w_0|| against log t, one line per regime.
    table: regime, diffusion (a list of (step, distance))."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(table.itertuples()):  # one colour and line style per curve
        if len(r.diffusion):
            steps, dist = zip(*r.diffusion, strict=True)
            ax.plot(steps, dist, label=r.regime, color=colors[i % len(colors)],
                    linestyle=EPS_STYLES[i // len(colors) % len(EPS_STYLES)])
    ax.set(xscale="log", xlabel="Training steps t", ylabel="‖w_t − w_0‖", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def convergence(rows: pd.DataFrame, *, title: str) -> plt.Figure:
    """Metric 2.1 after each L-BFGS-B iteration of the run from y = 0, one line per minimiser
    (SB and LB in their colours), one panel per eps: whether the maximisation had converged.
    rows: regime, epsilon, trace (phi after each iteration)."""
    epsilons = sorted(rows.epsilon.unique(), reverse=True)
    fig, axes = plt.subplots(1, len(epsilons), figsize=(5 * len(epsilons), 4), squeeze=False)
    for ax, eps in zip(axes[0], epsilons, strict=True):
        for r in rows[rows.epsilon == eps].itertuples():
            ax.plot(range(1, len(r.trace) + 1), r.trace, color=_color(r.regime), alpha=0.8,
                    marker=".", label=r.regime)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
        ax.set(xlabel="L-BFGS-B iteration", ylabel="sharpness so far (%)", title=f"ε = {eps:g}")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def measures_vs_gap(rows: pd.DataFrame, *, title: str, keys: list[tuple]) -> plt.Figure:
    """One panel per measure (keys: (measure, bn, space, epsilon)): its value at every minimiser
    against the accuracy gap, coloured by the batch size (log scale)."""
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False,
                             layout="constrained")  # titles and labels clear of the next panel
    norm = matplotlib.colors.LogNorm(rows.batch_size.min(), max(rows.batch_size.max(), 2))
    for ax, key in zip(axes.ravel(), keys, strict=False):
        g = rows[(rows.measure == key[0]) & (rows.bn == key[1]) & (rows.space == key[2])
                 & (rows.epsilon == key[3])]
        points = ax.scatter(100 * g.gap_acc, g.value, c=g.batch_size, norm=norm, cmap="viridis")
        if (g.value > 0).all():
            ax.set_yscale("log")
        eps = "" if key[3] == "-" else f", ε = {key[3]:g}"
        ax.set(xlabel="train − test accuracy (points)", title=f"{key[0]}\n{key[1]} BN, {key[2]}{eps}")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.colorbar(points, ax=axes.ravel().tolist(), label="batch size")
    fig.suptitle(title)
    return fig
