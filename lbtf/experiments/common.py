"""Turning flags into library calls, shared by the experiment modules."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

import lbtf
from lbtf import data as data_lib
from lbtf import runs
from lbtf.distribute import make_strategy, per_replica_batch
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


def start_run(flags, experiment: str) -> Path:
    """Creates the run folder and saves the resolved flags in it (usable as a --flagfile)."""
    run_dir = runs.new_run_dir(flags.output_dir, experiment)
    text = "".join(f.serialize() + "\n" for f in module_flags() if f.value is not None)
    runs.atomic_write_text(run_dir / "flags.txt", text)
    return run_dir


def environment(strategy: tf.distribute.Strategy) -> dict:
    return {"lbtf": lbtf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "replicas": strategy.num_replicas_in_sync,
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def initial_variables(build, seed: int) -> list:
    """The model variables (weights, BN statistics, RNG state) that seed `seed` starts from."""
    keras.utils.set_random_seed(seed)
    return [v.numpy() for v in build().variables]


def train_regimes(flags, *, data, strategy, batches: dict[str, int], run_dir: Path,
                  log=print) -> pd.DataFrame:
    """Every trial of every regime (e.g. SB and LB); returns one row per run, writes history.csv.

    Trial t starts every regime from the same seeded initial weights (seed + t), so the distance
    from the starting point is comparable between SB and LB. One Trainer per regime is compiled
    once and reset for each trial.
    """
    from tensorboard.plugins.hparams import api as hp

    build = functools.partial(build_model, flags.network, input_shape=data.input_shape,
                              num_classes=data.num_classes, variant=flags.arch_variant)
    trainers = {regime: Trainer(build, data, TrainConfig(
        batch_size=batch, learning_rate=flags.learning_rate, max_epochs=flags.max_epochs,
        patience=flags.patience, min_delta=flags.min_delta, steps_per_loop=flags.steps_per_loop,
        eval_batch_size=flags.eval_batch_size, jit_compile=flags.jit_compile,
        checkpoint_every=flags.checkpoint_every), strategy=strategy)
        for regime, batch in batches.items()}
    finals, histories = [], []
    for trial in range(flags.trials):
        seed = flags.seed + trial
        start = initial_variables(build, seed)
        for regime, trainer in trainers.items():
            batch = batches[regime]
            name = f"trial{trial}_{regime}"
            writer = tf.summary.create_file_writer(str(run_dir / "tb" / name))
            with writer.as_default():
                hp.hparams({"network": flags.network, "dataset": data.name, "regime": regime,
                            "batch_size": batch, "learning_rate": flags.learning_rate,
                            "seed": seed}, trial_id=name)
            trainer.reset(start)
            result = fit(trainer, seed=seed, checkpoint_dir=run_dir / "checkpoints" / name,
                         writer=writer, log=log,
                         label=f"[trial {trial + 1}/{flags.trials} {regime} B={batch}]")
            finals.append({"trial": trial, "regime": regime, "batch_size": batch, "seed": seed,
                           "epochs": len(result.history), "stop_reason": result.stop_reason,
                           **{k: v for k, v in result.final.items() if k not in ("epoch", "steps")},
                           "seconds": result.seconds, "checkpoint_dir": result.checkpoint_dir})
            histories.append(pd.DataFrame(result.history).assign(trial=trial, regime=regime))
    history = pd.concat(histories, ignore_index=True)
    runs.atomic_write_text(run_dir / "history.csv", history.to_csv(index=False))
    return pd.DataFrame(finals)


def write_results(run_dir: Path, results: dict, report: str) -> None:
    """results.json last: its presence marks a finished run."""
    runs.atomic_write_text(run_dir / "report.md", report)
    runs.atomic_write_json(run_dir / "results.json", results)
