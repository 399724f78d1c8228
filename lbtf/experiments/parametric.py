"""Figures 2, 3 and 7 and the distance from the starting point, from the runs of a table2 run.

Paper artifact -> flags/figure{2,3,7}_<net>.flags (experiment table2) -> this module ->
lbtf.landscape.evaluate_path, lbtf.figures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from lbtf import figures, landscape
from lbtf.bn import BatchNormEstimator, measurement_model
from lbtf.checkpoints import checkpoint_at, load_weights
from lbtf.experiments import sharpness, training
from lbtf.experiments.config import Config
from lbtf.objective import EvalSet, make_evaluator, measurement_loss

PATH_FIGURES = {"linear": ("figure3_parametric_linear", "Figure 3",
                           "α  (point αx_l + (1 − α)x_s)"),
                "curvilinear": ("figure7_parametric_curvilinear", "Figure 7",
                                "α  (point sin(απ/2)x_l + cos(απ/2)x_s)")}


def snapshots(cfg: Config, data, checkpoints: dict[str, str]):
    """One model and a landscape.Snapshot per named checkpoint."""
    model = training.model_builder(cfg, data)()
    out = {}
    for name, ckpt in checkpoints.items():
        load_weights(model, ckpt, cfg.model.network)
        out[name] = landscape.snapshot(model)
    return model, out


def distances(cfg: Config, data, trained: pd.DataFrame) -> pd.DataFrame:
    """Per trial: ||x_s - x_0||, ||x_l - x_0|| over the trainable weights at the measured points,
    and their ratio (the paper reports 3 to 10). Both regimes of a trial start from the same x_0
    (weights-0)."""
    rows = []
    for trial, g in trained.groupby("trial"):
        at = g.set_index("regime")
        if not {"SB", "LB"} <= set(at.index):
            continue
        _, snaps = snapshots(cfg, data, {"x0": checkpoint_at(at.checkpoint_dir["SB"], 0),
                                           "SB": at.checkpoint["SB"], "LB": at.checkpoint["LB"]})
        d_s = landscape.distance(snaps["SB"].weights, snaps["x0"].weights)
        d_l = landscape.distance(snaps["LB"].weights, snaps["x0"].weights)
        rows.append({"trial": trial, "sb_distance": d_s, "lb_distance": d_l,
                     "ratio": d_s / d_l if d_l > 0 else float("nan")})
    return pd.DataFrame(rows)


def _path_setup(cfg: Config, data, model, snaps: dict, mode: str):
    """(model, snapshots, splits, evaluate, BN treatment, estimator) of one --bn_measure mode.
    "moving": the network in inference mode, BN statistics as --bn_path says at each point.
    "batch": the batch-statistics twin (lbtf.bn), every evaluation chunk of --bn_measure_chunk
    examples normalised by itself, nothing to recompute or interpolate."""
    loss, jit = measurement_loss(cfg.measure.loss_clip), cfg.training.jit_compile
    chunk, batch = sharpness.measurement_chunk(cfg, mode), mode == "batch"
    # Batch statistics: an unpadded last chunk, normalised by itself like the others.
    splits = {"train": EvalSet(data.x_train, data.y_train, chunk, pad=not batch),
              "test": EvalSet(data.x_test, data.y_test, chunk, pad=not batch)}
    if batch:
        twin = measurement_model(model, "batch")
        bare = {k: dataclasses.replace(v, means=[], variances=[]) for k, v in snaps.items()}
        return (twin, bare, splits, make_evaluator(twin, jit, loss), "recompute", None)
    estimator = (BatchNormEstimator(model, data.x_train, batch_size=cfg.training.eval_batch_size,
                                    jit_compile=jit)
                 if cfg.landscape.bn_path == "recompute" else None)
    return model, snaps, splits, make_evaluator(model, jit, loss), cfg.landscape.bn_path, estimator


def parametric_tables(cfg: Config, data, trained: pd.DataFrame, log=print) -> dict[str, pd.DataFrame]:
    """For each path in --parametric and each --bn_measure mode ("<path>/<mode>"): loss and
    accuracy along the path between the SB and LB measured points of trial --parametric_trial."""
    if not cfg.landscape.parametric:
        return {}
    g = trained[trained.trial == cfg.landscape.parametric_trial].set_index("regime")
    if not {"SB", "LB"} <= set(g.index):
        log(f"no parametric plot: a run of trial {cfg.landscape.parametric_trial} diverged")
        return {}
    model, snaps = snapshots(cfg, data, {r: g.checkpoint[r] for r in ("SB", "LB")})
    path_cfg = cfg.landscape
    alphas = landscape.default_alphas(path_cfg.parametric_points, path_cfg.alpha_min,
                                      path_cfg.alpha_max)
    tables = {}
    for mode in cfg.measure.bn_measure:
        net, points, splits, evaluate, bn, estimator = _path_setup(cfg, data, model, snaps, mode)
        for path in cfg.landscape.parametric:
            log(f"parametric plot, {path} path, {len(alphas)} points (BN: "
                f"{'batch statistics' if mode == 'batch' else 'moving, ' + cfg.landscape.bn_path})")
            tables[f"{path}/{mode}"] = landscape.evaluate_path(
                net, points["SB"], points["LB"], alphas, path=path, splits=splits, bn=bn,
                estimator=estimator, evaluate=evaluate, log=log)
    return tables


def parametric_figures(tables: dict[str, pd.DataFrame], *, cfg: Config, dataset: str, run_dir: Path,
                       writer) -> list[str]:
    """Figures 3 and 7 saved and embedded, with their tables."""
    out = []
    for key, table in tables.items():
        path, mode = key.split("/")
        name, artifact, xlabel = PATH_FIGURES[path]
        bn = ("BN with each evaluation chunk's own statistics (Keras 1 mode 2)" if mode == "batch"
              else f"BN moving statistics {cfg.landscape.bn_path}d at each point")
        title = f"{artifact}: {cfg.model.network} on {dataset}, {path} path, {mode} BN"
        caption = (f"{artifact} ({path} path), trial {cfg.landscape.parametric_trial}: cross-entropy "
                   "(left) and accuracy (right), training solid and test dashed; α = 0 is the SB "
                   f"minimiser, α = 1 the LB one; {bn}; {loss_note(cfg.measure.loss_clip)}.")
        fig = figures.parametric(table, title=title, xlabel=xlabel)
        out += [f"## {artifact}: parametric plot, {path} path, {mode} BN",
                figures.save(fig, run_dir, f"{name}_{mode}bn", caption=caption, writer=writer),
                table.to_markdown(index=False, floatfmt=".4g")]
    return out


def loss_note(clip: float) -> str:
    """How the measured loss was computed, for captions and report headers."""
    return (f"cross-entropy with probabilities clipped to [{clip:g}, 1 − {clip:g}] as Keras 1 did"
            if clip else "exact cross-entropy (no clipping)")


def training_curves_figure(history: pd.DataFrame, *, cfg: Config, dataset: str, run_dir: Path,
                           writer, trial: int = 0) -> list[str]:
    """Figure 2 from history.csv: training and test accuracy per epoch of trial `trial`."""
    h = history[history.trial == trial]
    fig = figures.training_curves(h, title=f"Figure 2: {cfg.model.network} on {dataset}")
    caption = (f"Figure 2: training (solid) and test (dashed) accuracy per epoch, SB and LB, "
               f"trial {trial}.")
    return ["## Figure 2: training curves",
            figures.save(fig, run_dir, "figure2_training_curves", caption=caption, writer=writer)]
