"""Sharpness of saved minimisers (Tables 3 and 4 of Keskar et al.) and their top Hessian
eigenvalues. `run` measures one --checkpoint; `measure_minimizers` serves table2.

Paper artifact -> flags/table2_<net>.flags (or --experiment=sharpness) -> this module ->
lbtf.measurement (every measure), lbtf.sharpness, lbtf.hessian.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import tensorflow as tf

from lbtf import report
from lbtf.bn import rescale_into_bn
from lbtf.checkpoints import checkpoint_at, load_weights
from lbtf.errors import UsageError
from lbtf.experiments import prepare, rundir, training
from lbtf.experiments.config import Config
from lbtf.hessian import EIGEN_METHOD
from lbtf.measurement import Measurer, MeasureSettings
from lbtf.sharpness import SUBSPACE_METHOD


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
    s = settings(cfg)
    return s.bn_chunk if mode == "batch" else s.eval_batch_size


# How a measurement is computed beyond the flags: stored with every cached minimiser's rows, so a
# run restarted under another lbtf measures again what an older method measured.
METHODS = {"subspace_generator": SUBSPACE_METHOD, "hessian_solver": EIGEN_METHOD}


POINT_NOTE = {"best": "the epoch with the lowest training loss", "last": "the last epoch"}


def point_note(cfg: Config) -> str:
    """The point every run is measured at (--measure_point, --measure_at_loss), in words."""
    at = cfg.measure.measure_at_loss
    return (f"the first epoch at training loss <= {at:g}" if at
            else POINT_NOTE[cfg.measure.measure_point])


def measurement_record(cfg: Config) -> dict:
    """How a run's measurements were taken, for results.json ("point": best, last, or in words
    when measured at one training loss)."""
    m = cfg.measure
    point = point_note(cfg) if m.measure_at_loss else m.measure_point
    return {"point": point, "bn": list(cfg.measure.bn_measure),
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


def settings(cfg: Config) -> MeasureSettings:
    """The measurement settings of the flags: the one place --epsilons, --measures, ... become
    lbtf.measurement's plain settings (which have the flags' defaults)."""
    m, t = cfg.measure, cfg.training
    return MeasureSettings(
        measures=tuple(m.measures), epsilons=tuple(float(e) for e in m.epsilons),
        subspace_dim=m.subspace_dim, maxiter=m.sharpness_maxiter, starts=m.sharpness_starts,
        bn_modes=tuple(m.bn_measure), bn_chunk=m.bn_measure_chunk, eval_batch_size=t.eval_batch_size,
        loss_clip=m.loss_clip, hessian_k=m.hessian_k, average_sigma=m.average_sigma,
        samples=m.measure_samples, pacbayes_target=m.pacbayes_target, pacbayes_eps=m.pacbayes_eps,
        examples=m.sharpness_examples, subspace_memory_mb=m.subspace_memory_mb, seed=t.seed,
        jit_compile=t.jit_compile)


def measure_minimizers(cfg: Config, data, minimizers: list[dict], *, strategy=None, log=print,
                       cache_dir: Path | None = None,
                       rescaled: list | None = None) -> pd.DataFrame:
    """Every measure of --measures at every minimiser (dicts with a 'checkpoint' and label
    fields), under every --bn_measure mode: one row per measurement, labelled with its BN mode
    ("bn") and loss clip ("loss_clip").

    One network, one objective per BN mode (compiled once) and one random subspace A serve every
    minimiser (lbtf.measurement.Measurer), so their values are comparable and the cost is that of
    the measurements alone. With `cache_dir`, each minimiser's measurements are kept there and
    skipped when the run is started again. The rows after --rescale_check's rescaling are left
    out, and appended to `rescaled` when given.
    """
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        # The trained network's layers (--bn_layer=none has no BN variables to load).
        model = training.model_builder(cfg, data)()
    measurer = Measurer(model, data.x_train, data.y_train, settings(cfg), strategy=strategy)
    rows = []
    for m in minimizers:
        labels = {k: v for k, v in m.items() if k != "checkpoint"}
        measure = functools.partial(_measure_one, cfg, measurer, m["checkpoint"], labels, log)
        if cache_dir is None:
            rows += measure()["rows"]
        else:
            name = "_".join(f"{k}{v}" for k, v in labels.items()) or "minimizer"
            rows += rundir.cached(Path(cache_dir) / f"{name}.json", measure, log=log,
                                 method=METHODS)["rows"]
    if rescaled is not None:
        rescaled += [r for r in rows if r.get("rescale", 1.0) != 1.0]
    return pd.DataFrame([r for r in rows if r.get("rescale", 1.0) == 1.0])


def _measure_one(cfg: Config, measurer: Measurer, checkpoint: str, labels: dict, log) -> dict:
    """Every measure at one checkpoint; with --rescale_check=a, again after rescaling the weights
    that feed BN by a (rows labelled `rescale`: 1 for the checkpoint as trained)."""
    load_weights(measurer.model, checkpoint, cfg.model.network)
    rows = measurer.measure({**labels, "rescale": 1.0}, log)
    a = cfg.measure.rescale_check
    if a:
        rescaled = rescale_into_bn(measurer.model, a)
        log(f"  rescale check: {', '.join(rescaled) or 'no layer feeds BN'} x {a:g}")
        rows += measurer.measure({**labels, "rescale": a}, log)
    return {"rows": rows}


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
