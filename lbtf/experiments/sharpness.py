"""Sharpness of saved minimisers (Tables 3 and 4 of Keskar et al.) and their top Hessian
eigenvalues. `run` measures one --checkpoint; `measure_minimizers` serves table2.

Paper artifact -> flags/table2_<net>.flags (or --experiment=sharpness) -> this module ->
lbtf.measurement (every measure), lbtf.sharpness, lbtf.hessian.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import tensorflow as tf

from lbtf import classifier, report
from lbtf.bn import rescale_into_bn
from lbtf.checkpoints import Located, load_weights, locate
from lbtf.errors import UsageError
from lbtf.experiments import prepare, rundir, training
from lbtf.experiments.config import Config, convert, field_group, override
from lbtf.experiments.flags import read_saved
from lbtf.hessian import EIGEN_METHOD
from lbtf.measurement import Measurer, MeasureSettings
from lbtf.sharpness import SUBSPACE_METHOD

# What a checkpoint's run decides about measuring it again: its network, data and loss.
INHERITED = ("network", "arch_variant", "dataset", "data_dir", "mnist1d_samples", "timit_path",
             "synthetic_shape", "synthetic_classes", "synthetic_train", "synthetic_test",
             "normalize", "bn_layer", "ghost_batch_size", "loss_clip", "bn_measure_chunk", "seed")


def resolve_checkpoint(path: str | None) -> str:
    """A checkpoint prefix or file from what --checkpoint names (lbtf.checkpoints.locate)."""
    return locate(path).path


def as_trained(cfg: Config, found: Located, log=print) -> Config:
    """`cfg` with the INHERITED settings of the run that wrote the checkpoint (its flags.txt),
    except those set on this command line; says which it took."""
    if found.run_dir is None:
        return cfg
    saved = read_saved(found.run_dir / "flags.txt")
    taken = {n: convert(n, saved[n]) for n in INHERITED
             if n in saved and n not in cfg.run.explicit}
    changed = {n: v for n, v in taken.items() if v != getattr(getattr(cfg, field_group(n)), n)}
    if changed:
        log(f"measuring as the run trained (from {found.run_dir / 'flags.txt'}; a flag given here "
            f"overrides): " + " ".join(f"--{n}={v}" for n, v in changed.items()))
    return override(cfg, taken)


def recorded_loss(found: Located) -> float | None:
    """The training loss the run recorded at the checkpoint's epoch (its runs/ record)."""
    if found.run_dir is None or not found.epoch:
        return None
    try:
        record = json.loads((found.run_dir / "runs" / f"{found.run}.json").read_text())
        return next(float(h["train_loss"]) for h in record["history"] if h["epoch"] == found.epoch)
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


def loss_check(found: Located, f_x: float) -> str | None:
    """A warning when f(x) at the checkpoint is not the training loss its run recorded there:
    the data, the network or the BN statistics are not the run's."""
    recorded = recorded_loss(found)
    if recorded is None or abs(f_x - recorded) <= 1e-3 * max(1.0, abs(recorded)):
        return None
    return (f"warning: f(x) = {f_x:.6g} at {found.path}, but its run recorded a training loss of "
            f"{recorded:.6g} at epoch {found.epoch}: this is not measured on the data and network "
            "it trained on (a flag given here that differs from the run's flags.txt?)")


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
                       cache_dir: Path | None = None, rescaled: list | None = None,
                       model=None) -> pd.DataFrame:
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
    logits = False
    if model is None:
        with strategy.scope():
            # The trained network's layers (--bn_layer=none has no BN variables to load).
            model = training.model_builder(cfg, data)()
    else:  # a user's own model: it may end in logits
        logits, _ = classifier.output_is_logits(model, data.x_train, None)
    measurer = Measurer(model, data.x_train, data.y_train, settings(cfg), strategy=strategy,
                        from_logits=logits)
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
    if checkpoint is not None:  # None: the model as given
        load_weights(measurer.model, checkpoint, cfg.model.network)
    rows = measurer.measure({**labels, "rescale": 1.0}, log)
    a = cfg.measure.rescale_check
    if a:
        rescaled = rescale_into_bn(measurer.model, a)
        log(f"  rescale check: {', '.join(rescaled) or 'no layer feeds BN'} x {a:g}")
        rows += measurer.measure({**labels, "rescale": a}, log)
    return {"rows": rows}


def _keras_model(found: Located, data, strategy):
    """A user's .keras model, loaded as data (Keras' safe mode: no code from the file)."""
    import keras

    with strategy.scope():
        try:
            model = keras.models.load_model(found.path, compile=False, safe_mode=True)
        except Exception as e:  # a crafted or foreign file: refused, never run
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UsageError(f"cannot load Keras model {found.path} ({first}); pass a .keras file "
                             "saved by model.save, without Lambda layers") from None
    shape = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    if shape is not None and shape != tuple(data.input_shape):
        raise UsageError(f"{found.path} takes inputs of shape {shape} but --dataset="
                         f"{data.name} has {tuple(data.input_shape)}; pass its own --dataset")
    return model


def run(cfg: Config, log=print):
    if not cfg.measure.checkpoint:
        raise UsageError("--experiment=sharpness needs --checkpoint=PATH (a weights checkpoint "
                         "prefix such as outputs/<run>/checkpoints/trial0_LB/weights-40, its "
                         "folder, a run folder, a .weights.h5 or a .keras file)")
    found = locate(cfg.measure.checkpoint)
    cfg = as_trained(cfg, found, log)
    data, strategy, _ = prepare.prepare(cfg, {})
    model = _keras_model(found, data, strategy) if found.kind == "keras" else None
    target = None if model is not None else found.path
    table = measure_minimizers(cfg, data, [{"checkpoint": target}], strategy=strategy, log=log,
                               model=model)
    moving = table[table.bn == table.bn.iloc[0]] if "bn" in table and len(table) else table
    warning = loss_check(found, float(moving.f_x.iloc[0])) if "f_x" in moving and len(moving) \
        else None
    if warning:
        log(warning)
    run_dir = rundir.start_run(cfg, "sharpness", strategy)
    text = "\n\n".join([f"# Sharpness of {found.path}",
                        f"{cfg.model.network if model is None else model.name} on {data.name}, "
                        f"{len(table)} measurements.", *([warning] if warning else []),
                        report.measurements_markdown(table)])
    results = {"experiment": "sharpness", "checkpoint": found.path, "network": cfg.model.network
               if model is None else model.name, "dataset": data.name,
               "environment": rundir.environment(strategy),
               "measurement": measurement_record(cfg), "loss_check": warning,
               "measurements": table.to_dict(orient="records")}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{report.measurements_markdown(table)}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
