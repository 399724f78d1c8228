"""Sharpness of saved minimisers (Tables 3 and 4 of Keskar et al.) and their top Hessian
eigenvalues. `run` measures one --checkpoint; `measure_minimizers` serves table2.

Paper artifact -> flags/table2_<net>.flags (or --experiment=sharpness) -> this module ->
lbtf.sharpness.sharpness_at, lbtf.hessian.top_eigenvalues_at.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pandas as pd
import tensorflow as tf

from lbtf import report
from lbtf.bn import bn_layers, measurement_model, rescale_into_bn
from lbtf.checkpoints import checkpoint_at, load_weights
from lbtf.errors import UsageError
from lbtf.experiments import prepare, rundir, training
from lbtf.experiments.config import Config
from lbtf.hessian import EIGEN_METHOD, top_eigenvalues_at
from lbtf.measures import average_sharpness, hutchinson_trace, pacbayes_flatness
from lbtf.objective import Objective, flat_weights, measurement_loss, subsample
from lbtf.sharpness import SUBSPACE_METHOD, Subspace, sharpness_at


def resolve_checkpoint(path: str | None) -> str:
    """A checkpoint prefix from a prefix or a folder (its last kept epoch, or its latest
    checkpoint when it is not an lbtf run's folder)."""
    if not path:
        raise UsageError("--experiment=sharpness needs --checkpoint=PATH (a weights checkpoint "
                         "prefix such as outputs/<run>/checkpoints/trial0_LB/weights-40, or a folder)")
    if Path(path).is_dir():
        latest = checkpoint_at(path) or tf.train.latest_checkpoint(path)
        if latest is None:
            raise UsageError(f"no checkpoint in folder {path}; pass a folder written by lbtf")
        return latest
    if not Path(path + ".index").is_file():
        raise UsageError(f"checkpoint {path} not found (no {path}.index); pass an existing "
                         "weights checkpoint prefix or its folder")
    return path


def measurement_chunk(cfg: Config, mode: str) -> int:
    """Examples per evaluation chunk of a --bn_measure mode: with batch statistics the chunk is
    what BN normalises over (--bn_measure_chunk); with moving statistics only a memory bound."""
    return cfg.measure.bn_measure_chunk if mode == "batch" else cfg.training.eval_batch_size


# How a measurement is computed beyond the flags: stored with every cached minimiser's rows, so a
# run restarted under another lbtf measures again what an older method measured.
METHODS = {"subspace_generator": SUBSPACE_METHOD, "hessian_solver": EIGEN_METHOD}


def measurement_record(cfg: Config) -> dict:
    """How a run's measurements were taken, for results.json."""
    m = cfg.measure
    return {"point": cfg.measure.measure_point, "bn": list(cfg.measure.bn_measure),
            "measures": list(m.measures), "average_sigma": m.average_sigma,
            "measure_samples": m.measure_samples, "pacbayes_target": m.pacbayes_target,
            "pacbayes_eps": m.pacbayes_eps,
            "bn_chunk": cfg.measure.bn_measure_chunk, "loss_clip": cfg.measure.loss_clip,
            "sharpness_starts": cfg.measure.sharpness_starts,
            "sharpness_maxiter": cfg.measure.sharpness_maxiter,
            "bn_stats": cfg.landscape.bn_path, "bn_eval": cfg.training.bn_eval,
            **METHODS}


def primary_sharpness(found: pd.DataFrame, bn_measure: tuple[str, ...]) -> pd.DataFrame:
    """The sharpness rows of the first --bn_measure mode: what the figures and summary tables of
    the multi-run experiments show (results.json keeps every mode's rows)."""
    if "measure" not in found or found.empty:
        return found
    sharp = found[found.measure == "sharpness"]
    return sharp[sharp.bn == bn_measure[0]] if "bn" in sharp else sharp


def measure_minimizers(cfg: Config, data, minimizers: list[dict], *, strategy=None, log=print,
                       cache_dir: Path | None = None,
                       rescaled: list | None = None) -> pd.DataFrame:
    """Full-space and subspace sharpness at every eps, and the top Hessian eigenvalues, of every
    minimiser (dicts with a 'checkpoint' and label fields), under every --measure_bn mode. One row
    per measurement, labelled with its BN mode ("bn") and loss clip ("loss_clip").

    One network, one objective per BN mode (compiled once) and one random subspace A serve every
    minimiser, so their values are comparable and the cost is that of the measurements alone.
    With `cache_dir`, each minimiser's measurements are kept there and skipped when the run is
    started again. The rows after --rescale_check's rescaling are left out, and appended to
    `rescaled` when given.
    """
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        # The trained network's layers (--bn_layer=none has no BN variables to load).
        model = training.model_builder(cfg, data)()
        # Without a BN layer every --bn_measure mode is the same function: measure it once.
        modes = cfg.measure.bn_measure if bn_layers(model) else cfg.measure.bn_measure[:1]
        nets = {mode: measurement_model(model, mode) for mode in modes}
    x, y = subsample(data.x_train, data.y_train, cfg.measure.sharpness_examples or None, cfg.training.seed)
    objectives = {mode: Objective(net, x, y, loss=measurement_loss(cfg.measure.loss_clip),
                                  batch_size=measurement_chunk(cfg, mode),
                                  jit_compile=cfg.training.jit_compile,
                                  strategy=strategy)
                  for mode, net in nets.items()}
    size = next(iter(objectives.values())).size
    m = cfg.measure
    subspace = (Subspace(size, m.subspace_dim, seed=cfg.training.seed,
                         memory_budget_mb=m.subspace_memory_mb) if m.subspace_dim else None)
    rows = []
    for m in minimizers:
        labels = {k: v for k, v in m.items() if k != "checkpoint"}
        measure = functools.partial(_measure_one, cfg, model, objectives, subspace,
                                    m["checkpoint"], labels, log)
        if cache_dir is None:
            rows += measure()["rows"]
        else:
            name = "_".join(f"{k}{v}" for k, v in labels.items()) or "minimizer"
            rows += rundir.cached(Path(cache_dir) / f"{name}.json", measure, log=log,
                                 method=METHODS)["rows"]
    if rescaled is not None:
        rescaled += [r for r in rows if r.get("rescale", 1.0) != 1.0]
    return pd.DataFrame([r for r in rows if r.get("rescale", 1.0) == 1.0])


def _measure_one(cfg: Config, model, objectives: dict, subspace, checkpoint: str, labels: dict,
                 log) -> dict:
    """Every measure at one checkpoint; with --rescale_check=a, again after rescaling the weights
    that feed BN by a (rows labelled `rescale`: 1 for the checkpoint as trained)."""
    load_weights(model, checkpoint, cfg.model.network)
    rows = _measure_at(cfg, objectives, subspace, flat_weights(model), {**labels, "rescale": 1.0},
                       log)
    a = cfg.measure.rescale_check
    if a:
        rescaled = rescale_into_bn(model, a)
        log(f"  rescale check: {', '.join(rescaled) or 'no layer feeds BN'} x {a:g}")
        rows += _measure_at(cfg, objectives, subspace, flat_weights(model),
                            {**labels, "rescale": a}, log)
    return {"rows": rows}


def _measure_at(cfg: Config, objectives: dict, subspace, minimizer, labels: dict, log) -> list:
    spaces = [("full", None, None)]
    if subspace is not None:
        spaces.append(("subspace", subspace, subspace.pinv_apply(minimizer)))
    rows = []
    boxes = {"keskar": ("sharpness", 1.0), "adaptive": ("adaptive", 0.0)}
    for mode, objective in objectives.items():
        how = {"bn": mode, "loss_clip": cfg.measure.loss_clip,
               "bn_chunk": objective.batch_size if mode == "batch" else None}
        for name, (measure, eta) in boxes.items():
            if name not in cfg.measure.measures:
                continue
            for eps in (float(e) for e in cfg.measure.epsilons):
                for space, sub, center in spaces:
                    r = sharpness_at(objective, minimizer, epsilon=eps, subspace=sub, center=center,
                                     maxiter=cfg.measure.sharpness_maxiter,
                                     starts=cfg.measure.sharpness_starts, seed=cfg.training.seed,
                                     eta=eta)
                    rows.append({**labels, "measure": measure, "space": space, **how,
                                 **dataclasses.asdict(r)})
                    log(f"  {measure:9s} {labels} {mode:6s} BN {space:8s} eps={eps:g}: "
                        f"{r.value:10.4f}  (f {r.f_x:.3g} -> {r.f_max:.3g}, {r.nit} it, "
                        f"{r.nfev} evals, {r.seconds:.1f}s; {r.message}"
                        + ("; STOPPED BEFORE ITS FIRST ITERATION" if r.stopped_at_start else "")
                        + ")")
        rows += _monte_carlo_rows(cfg, objective, minimizer, {**labels, **how}, log)
        k = max(cfg.measure.hessian_k, int("hessian" in cfg.measure.measures))
        if k:
            e = top_eigenvalues_at(objective, minimizer, k=k, seed=cfg.training.seed)
            rows.append({**labels, "measure": "hessian", "space": "full", **how,
                         "value": e.eigenvalues[0], "eigenvalues": e.eigenvalues,
                         "nfev": e.num_hvp, "num_examples": e.num_examples})
            log(f"  hessian   {labels} {mode:6s} BN top eigenvalues "
                f"{[round(v, 4) for v in e.eigenvalues]}")
    return rows


def _monte_carlo_rows(cfg: Config, objective, minimizer, labels: dict, log) -> list[dict]:
    """The seeded Monte-Carlo measures of --measures (average, pacbayes, trace) at one minimiser."""
    m, seed, rows = cfg.measure, cfg.training.seed, []
    if "average" in m.measures:
        e = average_sharpness(objective, minimizer, sigma=m.average_sigma,
                              samples=m.measure_samples, seed=seed)
        rows.append({**labels, "measure": "average", "space": "full", "sigma": m.average_sigma,
                     **dataclasses.asdict(e)})
    if "pacbayes" in m.measures:
        p = pacbayes_flatness(objective, minimizer, target=m.pacbayes_target,
                              eps_floor=m.pacbayes_eps, samples=m.measure_samples, seed=seed)
        rows.append({**labels, "measure": "pacbayes", "space": "full", **dataclasses.asdict(p)})
    if "trace" in m.measures:
        t = hutchinson_trace(objective, minimizer, samples=m.measure_samples, seed=seed)
        rows.append({**labels, "measure": "trace", "space": "full", **dataclasses.asdict(t)})
    for r in rows:
        log(f"  {r['measure']:9s} {labels.get('trial', '')} {labels.get('regime', '')} "
            f"{labels['bn']:6s} BN: {r['value']:.6g}"
            + (f" ± {r['stderr']:.2g}" if "stderr" in r else f" (sigma' {r['sigma']:.4g})"))
    return rows


def run(cfg: Config, log=print):
    checkpoint = resolve_checkpoint(cfg.measure.checkpoint)
    data, strategy, _ = prepare.prepare(cfg, {})
    table = measure_minimizers(cfg, data, [{"checkpoint": checkpoint}], strategy=strategy,
                               log=log)
    run_dir = rundir.start_run(cfg, "sharpness", strategy)
    text = "\n\n".join([f"# Sharpness of {checkpoint}",
                        f"{cfg.model.network} ({cfg.model.arch_variant}) on {data.name}, "
                        f"{len(table)} measurements.", report.measurements_markdown(table)])
    results = {"experiment": "sharpness", "checkpoint": checkpoint, "network": cfg.model.network,
               "dataset": data.name, "environment": rundir.environment(strategy),
               "measurement": measurement_record(cfg),
               "measurements": table.to_dict(orient="records")}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{report.measurements_markdown(table)}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
