"""Figures 2, 3 and 7 and the distance from the starting point, from the runs of a table2 run.

Paper artifact -> flags/figure{2,3,7}_<net>.flags (experiment table2) -> this module ->
lbtf.landscape.evaluate_path, lbtf.figures.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import tensorflow as tf

from lbtf import figures, landscape, runs
from lbtf.experiments import common
from lbtf.experiments.sharpness import restore
from lbtf.objective import EvalSet, make_evaluator

PATH_FIGURES = {"linear": ("figure3_parametric_linear", "Figure 3",
                           "α  (point αx_l + (1 − α)x_s)"),
                "curvilinear": ("figure7_parametric_curvilinear", "Figure 7",
                                "α  (point sin(απ/2)x_l + cos(απ/2)x_s)")}


def checkpoint_at(checkpoint_dir: str, epoch: int | None = None) -> str:
    """The checkpoint of `epoch` (None: the last one) in a run's checkpoint folder."""
    folder = runs.read_path(checkpoint_dir)
    return (tf.train.latest_checkpoint(str(folder)) if epoch is None
            else str(folder / f"weights-{epoch}"))


def snapshots(flags, data, checkpoints: dict[str, str]):
    """One model and a landscape.Snapshot per named checkpoint."""
    model = common.model_builder(flags, data)()
    out = {}
    for name, ckpt in checkpoints.items():
        restore(model, ckpt, flags.network)
        out[name] = landscape.snapshot(model)
    return model, out


def distances(flags, data, runs: pd.DataFrame) -> pd.DataFrame:
    """Per trial: ||x_s - x_0||, ||x_l - x_0|| over the trainable weights, and their ratio (the
    paper reports 3 to 10). Both regimes of a trial start from the same x_0 (weights-0)."""
    rows = []
    for trial, g in runs.groupby("trial"):
        dirs = dict(zip(g.regime, g.checkpoint_dir, strict=True))
        if not {"SB", "LB"} <= dirs.keys():
            continue
        _, snaps = snapshots(flags, data, {"x0": checkpoint_at(dirs["SB"], 0),
                                           "SB": checkpoint_at(dirs["SB"]),
                                           "LB": checkpoint_at(dirs["LB"])})
        d_s = landscape.distance(snaps["SB"].weights, snaps["x0"].weights)
        d_l = landscape.distance(snaps["LB"].weights, snaps["x0"].weights)
        rows.append({"trial": trial, "sb_distance": d_s, "lb_distance": d_l,
                     "ratio": d_s / d_l if d_l > 0 else float("nan")})
    return pd.DataFrame(rows)


def parametric_tables(flags, data, runs: pd.DataFrame, log=print) -> dict[str, pd.DataFrame]:
    """For each path in --parametric: loss and accuracy along it between the SB and LB minimisers
    of trial --parametric_trial, with BN statistics treated as --bn_stats says."""
    if not flags.parametric:
        return {}
    g = runs[runs.trial == flags.parametric_trial].set_index("regime")
    if not {"SB", "LB"} <= set(g.index):
        log(f"no parametric plot: a run of trial {flags.parametric_trial} diverged")
        return {}
    model, snaps = snapshots(flags, data, {r: checkpoint_at(g.checkpoint_dir[r])
                                           for r in ("SB", "LB")})
    splits = {"train": EvalSet(data.x_train, data.y_train, flags.eval_batch_size),
              "test": EvalSet(data.x_test, data.y_test, flags.eval_batch_size)}
    estimator = (landscape.BatchNormEstimator(model, data.x_train,
                                              batch_size=flags.eval_batch_size,
                                              jit_compile=flags.jit_compile)
                 if flags.bn_stats == "recompute" else None)
    evaluate = make_evaluator(model, flags.jit_compile)
    alphas = landscape.default_alphas(flags.parametric_points, flags.alpha_min, flags.alpha_max)
    tables = {}
    for path in flags.parametric:
        log(f"parametric plot, {path} path, {len(alphas)} points (BN statistics: "
            f"{flags.bn_stats})")
        tables[path] = landscape.evaluate_path(
            model, snaps["SB"], snaps["LB"], alphas, path=path, splits=splits, bn=flags.bn_stats,
            estimator=estimator, evaluate=evaluate, log=log)
    return tables


def parametric_figures(tables: dict[str, pd.DataFrame], *, flags, dataset: str, run_dir: Path,
                       writer) -> list[str]:
    """Figures 3 and 7 saved and embedded, with their tables."""
    out = []
    for path, table in tables.items():
        name, artifact, xlabel = PATH_FIGURES[path]
        title = f"{artifact}: {flags.network} on {dataset}, {path} path"
        caption = (f"{artifact} ({path} path), trial {flags.parametric_trial}: cross-entropy "
                   "(left) and accuracy (right), training solid and test dashed; α = 0 is the SB "
                   f"minimiser, α = 1 the LB one; BN statistics {flags.bn_stats}d at each point.")
        fig = figures.parametric(table, title=title, xlabel=xlabel)
        out += [f"## {artifact}: parametric plot, {path} path",
                figures.save(fig, run_dir, name, caption=caption, writer=writer),
                table.to_markdown(index=False, floatfmt=".4g")]
    return out


def training_curves_figure(history: pd.DataFrame, *, flags, dataset: str, run_dir: Path,
                           writer, trial: int = 0) -> list[str]:
    """Figure 2 from history.csv: training and test accuracy per epoch of trial `trial`."""
    h = history[history.trial == trial]
    fig = figures.training_curves(h, title=f"Figure 2: {flags.network} on {dataset}")
    caption = (f"Figure 2: training (solid) and test (dashed) accuracy per epoch, SB and LB, "
               f"trial {trial}.")
    return ["## Figure 2: training curves",
            figures.save(fig, run_dir, "figure2_training_curves", caption=caption, writer=writer)]
