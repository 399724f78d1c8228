"""Turning flags into library calls, shared by the experiment modules."""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

import lbtf
from lbtf import data as data_lib
from lbtf import runs
from lbtf.distribute import make_strategy, per_replica_batch
from lbtf.errors import UsageError
from lbtf.experiments.flags import module_flags
from lbtf.models import build_model, check_compatible
from lbtf.train import TrainConfig, Trainer, fit, resolve_batch_size


def load_data(flags) -> data_lib.Dataset:
    name = flags.dataset
    if name == "mnist1d":
        return data_lib.load_mnist1d(num_samples=flags.mnist1d_samples, data_dir=flags.data_dir)
    if name == "timit":
        return data_lib.load_timit(flags.timit_path)
    if name == "synthetic":
        return data_lib.load_synthetic(
            shape=tuple(int(d) for d in flags.synthetic_shape), num_classes=flags.synthetic_classes,
            num_train=flags.synthetic_train, num_test=flags.synthetic_test, seed=flags.seed)
    if name == "digits":
        return data_lib.load_digits()
    return data_lib.load_dataset(name, data_dir=flags.data_dir, download=flags.tfds_download)


def prepare(flags, batch_specs: dict[str, str]):
    """Loads data, checks the network fits it and the batch sizes fit the data and the replicas.

    Everything that can be wrong with the input is found here, before a run folder exists.
    """
    runs.check_writable(flags.output_dir)
    data = load_data(flags)
    check_compatible(flags.network, data.input_shape)
    strategy = make_strategy(flags.strategy)
    batches = {}
    for regime, spec in batch_specs.items():
        batches[regime] = resolve_batch_size(spec, data.num_train)
        per_replica_batch(strategy, batches[regime])
    return data, strategy, batches


def _flags_text() -> str:
    return "".join(f.serialize() + "\n" for f in module_flags() if f.value is not None)


def _differing(saved: str, current: str) -> list[str]:
    parse = lambda text: dict(ln.partition("=")[::2] for ln in text.splitlines() if ln)  # noqa: E731
    a, b = parse(saved), parse(current)
    return sorted(k.lstrip("-") for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def start_run(flags, experiment: str) -> Path:
    """Creates the run folder and saves the resolved flags in it (usable as a --flagfile).

    With --run_name the folder is <output_dir>/<run_name>; when it already holds a run started
    with the same flags, that run is resumed (finished parts are skipped by the caller)."""
    text = _flags_text()
    if not flags.run_name:
        run_dir = runs.new_run_dir(flags.output_dir, experiment)
    else:
        run_dir = Path(flags.output_dir) / flags.run_name
        saved = run_dir / "flags.txt"
        if saved.is_file():
            changed = _differing(saved.read_text(), text)
            if changed:
                raise UsageError(f"run folder {run_dir} was started with other values of "
                                 f"{', '.join('--' + c for c in changed)}; start it again with its "
                                 f"own flags (--flagfile={saved}) or choose another --run_name")
            return run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
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


def environment(strategy: tf.distribute.Strategy) -> dict:
    return {"lbtf": lbtf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "replicas": strategy.num_replicas_in_sync,
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def initial_variables(build, seed: int) -> list:
    """The model variables (weights, BN statistics, RNG state) that seed `seed` starts from."""
    keras.utils.set_random_seed(seed)
    return [v.numpy() for v in build().variables]


def model_builder(flags, data: data_lib.Dataset) -> Callable[[], keras.Model]:
    return functools.partial(build_model, flags.network, input_shape=data.input_shape,
                             num_classes=data.num_classes, variant=flags.arch_variant)


def make_trainer(flags, data, strategy, batch: int, **overrides) -> Trainer:
    """A Trainer with the flags' settings at global batch `batch` (overrides: TrainConfig fields)."""
    config = dict(batch_size=batch, learning_rate=flags.learning_rate,
                  max_epochs=flags.max_epochs, patience=flags.patience,
                  min_delta=flags.min_delta, steps_per_loop=flags.steps_per_loop,
                  eval_batch_size=flags.eval_batch_size, jit_compile=flags.jit_compile,
                  checkpoint_every=flags.checkpoint_every)
    return Trainer(model_builder(flags, data), data, TrainConfig(**{**config, **overrides}),
                   strategy=strategy)


def train_from(trainer: Trainer, start: list, **kwargs) -> dict:
    """`train_once` after resetting the trainer to the model variables `start`."""
    trainer.reset(start)
    return train_once(trainer, **kwargs)


def train_once(trainer: Trainer, *, name: str, run_dir: Path, seed: int, hparams: dict,
               label: str, log=print) -> dict:
    """One training run from the trainer's current weights, with its TensorBoard log and
    checkpoints under run_dir; returns the final row, the history and the checkpoint folder."""
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(str(run_dir / "tb" / name))
    with writer.as_default():
        hp.hparams(hparams, trial_id=name)
    result = fit(trainer, seed=seed, checkpoint_dir=run_dir / "checkpoints" / name,
                 writer=writer, log=log, label=label)
    final = {k: v for k, v in result.final.items() if k not in ("epoch", "steps")}
    return {"epochs": len(result.history), "stop_reason": result.stop_reason, **final,
            "seconds": result.seconds, "checkpoint_dir": result.checkpoint_dir,
            "history": result.history}


def train_regimes(flags, *, data, strategy, batches: dict[str, int], run_dir: Path,
                  log=print) -> pd.DataFrame:
    """Every trial of every regime (e.g. SB and LB); returns one row per run, writes history.csv.

    Trial t starts every regime from the same seeded initial weights (seed + t), so the distance
    from the starting point is comparable between SB and LB. One Trainer per regime is compiled
    once and reset for each trial. Runs finished by an earlier start of the same run are skipped.
    """
    build = model_builder(flags, data)
    trainers = {regime: make_trainer(flags, data, strategy, batch)
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
                         "batch_size": batch, "learning_rate": flags.learning_rate, "seed": seed},
                label=f"[trial {trial + 1}/{flags.trials} {regime} B={batch}]"), log=log)
            history = record.pop("history")
            finals.append({"trial": trial, "regime": regime, "batch_size": batch, "seed": seed,
                           **record})
            histories.append(pd.DataFrame(history).assign(trial=trial, regime=regime))
    history = pd.concat(histories, ignore_index=True)
    runs.atomic_write_text(run_dir / "history.csv", history.to_csv(index=False))
    return pd.DataFrame(finals)


def write_results(run_dir: Path, results: dict, report: str) -> None:
    """results.json last: its presence marks a finished run."""
    runs.atomic_write_text(run_dir / "report.md", report)
    runs.atomic_write_json(run_dir / "results.json", results)
