"""Turning flags into library calls, shared by the experiment modules."""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

import lbtf
from lbtf import data as data_lib
from lbtf import lbfgsb, runs
from lbtf.checkpoints import checkpoint_at, remove_resume
from lbtf.distribute import describe, is_chief, make_strategy, per_replica_batch, worker
from lbtf.errors import UsageError
from lbtf.experiments.flags import module_flags
from lbtf.layers import norm_layer
from lbtf.models import build_model, check_compatible
from lbtf.remedies import adapted_epochs, adapted_milestones, scaled_learning_rate
from lbtf.train import TrainConfig, Trainer, best_epoch, fit, resolve_batch_size

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def loader_options(flags) -> dict:
    """The keyword arguments of --dataset's loader (lbtf.data.LOADERS) from the flags."""
    return {
        "mnist1d": lambda: {"num_samples": flags.mnist1d_samples, "data_dir": flags.data_dir},
        "cluttered_digits": lambda: {"data_dir": flags.data_dir},
        "digits": dict,
        "timit": lambda: {"path": flags.timit_path},
        "synthetic": lambda: {"shape": tuple(int(d) for d in flags.synthetic_shape),
                              "num_classes": flags.synthetic_classes,
                              "num_train": flags.synthetic_train,
                              "num_test": flags.synthetic_test, "seed": flags.seed},
    }.get(flags.dataset, lambda: {"data_dir": flags.data_dir,  # the tfds datasets
                                  "download": flags.tfds_download})()


def load_data(flags) -> data_lib.Dataset:
    """--dataset, loaded through lbtf.data's one registry."""
    return data_lib.load_dataset(flags.dataset, **loader_options(flags))


def prepare(flags, batch_specs: dict[str, str], log=print):
    """Creates the strategy, loads data, checks the network fits it and the batch sizes fit the
    data and the replicas; logs how each batch is split over the replicas.

    Everything that can be wrong with the input is found here, before a run folder exists.
    """
    runs.check_writable(flags.output_dir)
    if flags.strategy in ("multi_worker", "slurm") and not flags.run_name:
        raise UsageError(f"--strategy={flags.strategy} needs --run_name: every worker must write "
                         "to and resume from the same run folder")
    if flags.deterministic:
        tf.config.experimental.enable_op_determinism()
    # First: a multi-worker strategy must exist before any other TensorFlow op runs.
    strategy = make_strategy(flags.strategy, slurm_port_base=flags.slurm_port_base)
    data = load_data(flags)
    check_compatible(flags.network, data.input_shape)
    if flags.augment and len(data.input_shape) != 3:
        raise UsageError(f"--augment needs image data, but {data.name}'s inputs have shape "
                         f"{tuple(data.input_shape)}; use an image dataset or drop --augment")
    batches = {}
    for regime, spec in batch_specs.items():
        batches[regime] = resolve_batch_size(spec, data.num_train)
        per_replica_batch(strategy, batches[regime])
    for line in describe(strategy, batches, bn=flags.bn, ghost_batch_size=flags.ghost_batch_size):
        log(line)
    return data, strategy, batches


def _flags_text() -> str:
    return "".join(f.serialize() + "\n" for f in module_flags() if f.value is not None)


def _differing(saved: str, current: str) -> list[str]:
    parse = lambda text: dict(ln.partition("=")[::2] for ln in text.splitlines() if ln)  # noqa: E731
    a, b = parse(saved), parse(current)
    return sorted(k.lstrip("-") for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def start_run(flags, experiment: str, strategy: tf.distribute.Strategy | None = None) -> Path:
    """Creates the run folder and saves the resolved flags in it (usable as a --flagfile).

    With --run_name the folder is <output_dir>/<run_name>; when it already holds a run started
    with the same flags, that run is resumed (finished parts are skipped by the caller). In a
    multi-worker job only the chief writes it; the other workers write to a scratch folder."""
    text = _flags_text()
    if not flags.run_name:
        run_dir = runs.new_run_dir(flags.output_dir, experiment)
    else:
        run_dir = Path(flags.output_dir) / flags.run_name
        if strategy is not None and not is_chief(strategy):
            scratch = tempfile.mkdtemp(prefix=f"lbtf-worker{worker(strategy)[0]}-")
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
            runs.redirect_writes(run_dir, scratch)
        saved = run_dir / "flags.txt"
        if saved.is_file():
            changed = _differing(saved.read_text(), text)
            if changed:
                raise UsageError(f"run folder {run_dir} was started with other values of "
                                 f"{', '.join('--' + c for c in changed)}; start it again with its "
                                 f"own flags (--flagfile={saved}) or choose another --run_name")
            return run_dir
        runs.write_path(run_dir).mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(run_dir / "flags.txt", text)
    return run_dir


def cached(path: Path, compute: Callable[[], dict], log=print) -> dict:
    """The JSON record at `path` if an earlier (interrupted) start of this run finished it, else
    compute() written atomically to `path`: how multi-run experiments skip finished work."""
    if path.is_file():
        log(f"  {path.relative_to(path.parents[1])}: finished earlier, skipped")
        return json.loads(path.read_text())
    record = runs.jsonable(compute())
    runs.atomic_write_json(path, record)
    return record


# Packages whose versions can change the numbers a run prints.
VERSIONED = ("tensorflow", "keras", "numpy", "scipy", "pandas", "mnist1d", "scikit-learn",
             "tensorflow-datasets")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(strategy: tf.distribute.Strategy) -> dict:
    """What produced a run's numbers: versions, the L-BFGS-B path, strategy and devices."""
    return {"lbtf": lbtf.__version__, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(),
            **{p: _version(p) for p in VERSIONED},
            "lbfgsb": lbfgsb.FAST if lbfgsb.fast_path_available() else lbfgsb.PUBLIC,
            "strategy": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync, "workers": worker(strategy)[1],
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def measurement_chunk(flags, mode: str) -> int:
    """Examples per evaluation chunk of a --measure_bn mode: with batch statistics the chunk is
    what BN normalises over (--measure_bn_chunk); with moving statistics only a memory bound."""
    return flags.measure_bn_chunk if mode == "batch" else flags.eval_batch_size


def measurement_record(flags) -> dict:
    """How a run's measurements were taken, for results.json."""
    return {"point": flags.measure_point, "bn": list(flags.measure_bn),
            "bn_chunk": flags.measure_bn_chunk, "loss_clip": flags.loss_clip,
            "sharpness_starts": flags.sharpness_starts, "sharpness_maxiter": flags.sharpness_maxiter,
            "bn_stats": flags.bn_stats, "bn_eval": flags.bn_eval}


def initial_variables(build, seed: int) -> list:
    """The model variables (weights, BN statistics, RNG state) that seed `seed` starts from."""
    keras.utils.set_random_seed(seed)
    return [v.numpy() for v in build().variables]


def option(flags, name: str, overrides: dict | None = None):
    """Flag `name`, unless the experiment overrides it for this regime."""
    return (overrides or {}).get(name, getattr(flags, name))


def model_builder(flags, data: data_lib.Dataset,
                  overrides: dict | None = None) -> Callable[[], keras.Model]:
    norm = norm_layer(option(flags, "bn", overrides),
                      virtual_batch_size=option(flags, "ghost_batch_size", overrides))
    return functools.partial(build_model, flags.network, input_shape=data.input_shape,
                             num_classes=data.num_classes, variant=flags.arch_variant, norm=norm)


def training_config(flags, batch: int, overrides: dict | None = None, **fields) -> TrainConfig:
    """The TrainConfig of a run at global batch `batch`: the flags (or the regime's overrides of
    them) with learning-rate scaling and regime adaptation applied; `fields` set config fields."""
    opt = functools.partial(option, flags, overrides=overrides)
    ref = opt("lr_reference_batch")
    epochs, patience = opt("max_epochs"), opt("patience")
    milestones = [int(m) for m in opt("lr_milestones")]
    if opt("regime_adaptation"):
        epochs, patience = adapted_epochs(epochs, batch, ref), adapted_epochs(patience, batch, ref)
        milestones = adapted_milestones(milestones, batch, ref)
    config = dict(
        batch_size=batch, max_epochs=epochs, patience=patience, lr_milestones=tuple(milestones),
        learning_rate=scaled_learning_rate(opt("learning_rate"), batch, reference=ref,
                                           rule=opt("lr_scaling")),
        min_delta=flags.min_delta, steps_per_loop=flags.steps_per_loop,
        eval_batch_size=flags.eval_batch_size, jit_compile=flags.jit_compile,
        checkpoint_every=flags.checkpoint_every, resume_interval=flags.resume_interval,
        seed=flags.seed, bn_eval=flags.bn_eval,
        bn_eval_examples=flags.bn_eval_examples,
        **{k: opt(k) for k in ("lr_decay", "clip_norm", "sam_rho", "fgsm_epsilon",
                               "conservative_lambda", "conservative_steps", "augment",
                               "diffusion_every")})
    return TrainConfig(**{**config, **fields})


def make_trainer(flags, data, strategy, batch: int, overrides: dict | None = None,
                 **fields) -> Trainer:
    """A Trainer at global batch `batch` with the flags' settings (see training_config)."""
    return Trainer(model_builder(flags, data, overrides), data,
                   training_config(flags, batch, overrides, **fields), strategy=strategy)


def summary_writer(run_dir: Path, name: str):
    """The TensorBoard writer of <run_dir>/tb/<name> (a worker's scratch copy off the chief)."""
    return tf.summary.create_file_writer(str(runs.write_path(run_dir / "tb" / name)))


def train_from(trainer: Trainer, start: list, **kwargs) -> dict:
    """`train_once` after resetting the trainer to the model variables `start`."""
    trainer.reset(start)
    return train_once(trainer, **kwargs)


def train_once(trainer: Trainer, *, name: str, run_dir: Path, seed: int, hparams: dict,
               label: str, log=print) -> dict:
    """One training run from the trainer's current weights, with its TensorBoard log and
    checkpoints under run_dir; returns the final row, the history and the checkpoint folder."""
    from tensorboard.plugins.hparams import api as hp

    writer = summary_writer(run_dir, name)
    with writer.as_default():
        hp.hparams(hparams, trial_id=name)
    checkpoints = run_dir / "checkpoints" / name
    result = fit(trainer, seed=seed, checkpoint_dir=checkpoints,
                 save_dir=runs.write_path(checkpoints), writer=writer, log=log, label=label)
    final = {k: v for k, v in result.final.items() if k not in ("epoch", "steps")}
    return {"epochs": len(result.history), "stop_reason": result.stop_reason, **final,
            "seconds": result.seconds, "checkpoint_dir": result.checkpoint_dir,
            "learning_rate": trainer.config.learning_rate, "history": result.history,
            "diffusion": result.diffusion}


def at_point(record: dict, point: str) -> dict:
    """A run's metrics and weights checkpoint at the point measurements take: the epoch with the
    lowest training loss ("best") or the last epoch ("last"; a diverged run's best). Table 2,
    sharpness, distances and parametric plots all read this one point."""
    history = record["history"]
    last = history[-1]["epoch"] if record["stop_reason"] != "diverged" else None
    epoch = last if point == "last" and last is not None else best_epoch(history)
    # A run that diverged in its first epoch has no finite epoch: its point is the start
    # (weights-0), its metrics those of its last row.
    row = next((h for h in history if h["epoch"] == epoch), history[-1])
    return {"measured_epoch": epoch, **{k: row[k] for k in METRICS},
            "checkpoint": checkpoint_at(record["checkpoint_dir"], epoch)}


def train_regimes(flags, *, data, strategy, batches: dict[str, int], run_dir: Path,
                  log=print, overrides: dict[str, dict] | None = None, **fields) -> pd.DataFrame:
    """Every trial of every regime (e.g. SB and LB); returns one row per run, writes history.csv.

    Trial t starts every regime from the same seeded initial weights (seed + t), so the distance
    from the starting point is comparable between SB and LB. One Trainer per regime is compiled
    once and reset for each trial. Runs finished by an earlier start of the same run are skipped.
    `overrides[regime]` replaces flag values for that regime (e.g. a remedy); `fields` set
    TrainConfig fields of every regime. Each row's metrics
    and `checkpoint` are those of its measured point (--measure_point, see `at_point`).
    """
    build = model_builder(flags, data)
    trainers = {regime: make_trainer(flags, data, strategy, batch, (overrides or {}).get(regime),
                                     **fields)
                for regime, batch in batches.items()}
    finals, histories = [], []
    for trial in range(flags.trials):
        seed = flags.seed + trial
        start = None  # drawn only when a run of this trial is still to do
        for regime, trainer in trainers.items():
            batch, name = batches[regime], f"trial{trial}_{regime}"
            path = run_dir / "runs" / f"{name}.json"
            if start is None and not path.is_file():
                start = initial_variables(build, seed)
            record = cached(path, functools.partial(
                train_from, trainer, start, name=name, run_dir=run_dir, seed=seed, log=log,
                hparams={"network": flags.network, "dataset": data.name, "regime": regime,
                         "batch_size": batch, "seed": seed,
                         "learning_rate": trainer.config.learning_rate},
                label=f"[trial {trial + 1}/{flags.trials} {regime} B={batch}]"), log=log)
            remove_resume(record["checkpoint_dir"])  # the record now holds what it was for
            point = at_point(record, flags.measure_point)
            history = record.pop("history")
            finals.append({"trial": trial, "regime": regime, "batch_size": batch, "seed": seed,
                           **record, **point})
            histories.append(pd.DataFrame(history).assign(trial=trial, regime=regime))
    history = pd.concat(histories, ignore_index=True)
    runs.atomic_write_text(run_dir / "history.csv", history.to_csv(index=False))
    return pd.DataFrame(finals)


def without_diverged(trained: pd.DataFrame, log=print) -> pd.DataFrame:
    """The runs that did not diverge. A diverged run (non-finite loss) keeps its record, history
    and the weights of its start and lowest-loss epoch, and the rest of the experiment goes on; it is
    left out of the summaries and measurements, and named in the log and in results.json."""
    bad = trained.stop_reason == "diverged"
    for r in trained[bad].itertuples():
        log(f"  trial {r.trial} {r.regime}: diverged (non-finite loss) in epoch {r.epochs}; "
            "left out of the summaries and measurements")
    return trained[~bad]


def primary_sharpness(found: pd.DataFrame, measure_bn: list[str]) -> pd.DataFrame:
    """The sharpness rows of the first --measure_bn mode: what the figures and summary tables of
    the multi-run experiments show (results.json keeps every mode's rows)."""
    if "measure" not in found or found.empty:
        return found
    sharp = found[found.measure == "sharpness"]
    return sharp[sharp.bn == measure_bn[0]] if "bn" in sharp else sharp


def diverged_names(trained: pd.DataFrame) -> list[str]:
    return [f"trial{r.trial}_{r.regime}" for r in trained.itertuples()
            if r.stop_reason == "diverged"]


def write_results(run_dir: Path, results: dict, report: str, log=print) -> None:
    """results.json last: its presence marks a finished run. Logs the run folder's size."""
    runs.atomic_write_text(run_dir / "report.md", report)
    runs.atomic_write_json(run_dir / "results.json", results)
    files = [f for f in runs.read_path(run_dir).rglob("*") if f.is_file()]
    log(f"run folder {run_dir}: {sum(f.stat().st_size for f in files) / 2**20:.1f} MB in "
        f"{len(files)} files")
