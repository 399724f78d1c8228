"""Training runs from a Config: a regime's Trainer, one run with its TensorBoard log and
checkpoints, every trial of every regime with finished runs skipped, and the point each run is
measured at."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import keras
import pandas as pd

from lbtf import data as data_lib
from lbtf import runs
from lbtf.checkpoints import checkpoint_at, damage, remove_resume
from lbtf.distribute import describe, memory_statement
from lbtf.errors import UsageError
from lbtf.experiments import sharding
from lbtf.experiments.config import Config, field_group
from lbtf.experiments.rundir import cached, summary_writer
from lbtf.layers import norm_layer
from lbtf.models import build_model
from lbtf.remedies import adapted_epochs, adapted_milestones, scaled_learning_rate
from lbtf.train import TrainConfig, Trainer, best_epoch, fit

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def initial_variables(build, seed: int) -> list:
    """The model variables (weights, BN statistics, RNG state) that seed `seed` starts from."""
    keras.utils.set_random_seed(seed)
    return [v.numpy() for v in build().variables]


def model_builder(cfg: Config, data: data_lib.Dataset) -> Callable[[], keras.Model]:
    """Builds cfg.model's network for `data`, with its BN layer."""
    norm = norm_layer(cfg.model.bn_layer, virtual_batch_size=cfg.model.ghost_batch_size,
                      momentum=cfg.model.bn_momentum)
    return functools.partial(build_model, cfg.model.network, input_shape=data.input_shape,
                             num_classes=data.num_classes, variant=cfg.model.arch_variant,
                             norm=norm)


# The TrainConfig fields a regime derives (training_config); every other field is copied by name.
DERIVED = {"batch_size", "max_epochs", "patience", "measure_every", "lr_milestones",
           "learning_rate", "lr_values", "remedies"}


def training_config(cfg: Config, batch: int, **fields) -> TrainConfig:
    """The TrainConfig of a run at global batch `batch`: every TrainConfig field taken by name
    from the Config group that holds it (no hand-kept list), except those a regime derives here:
    the batch, and cfg.remedies' learning-rate scaling and regime adaptation applied to the rate,
    the budget and the schedule. `fields` set TrainConfig fields."""
    t, r = cfg.training, cfg.remedies
    epochs, patience, milestones = t.max_epochs, t.patience, list(t.lr_milestones)
    every = t.measure_every
    if r.regime_adaptation:  # the regime stretched by B / B_ref, measured at the same points
        ref = r.lr_reference_batch
        epochs, patience = adapted_epochs(epochs, batch, ref), adapted_epochs(patience, batch, ref)
        milestones = adapted_milestones(milestones, batch, ref)
        every = adapted_epochs(every, batch, ref)

    def scaled(lr: float) -> float:
        return scaled_learning_rate(lr, batch, reference=r.lr_reference_batch, rule=r.lr_scaling)

    derived = dict(batch_size=batch, max_epochs=epochs, patience=patience, measure_every=every,
                   lr_milestones=tuple(milestones), learning_rate=scaled(t.learning_rate),
                   lr_values=tuple(scaled(v) for v in t.lr_values), remedies=r)
    assert set(derived) == DERIVED
    copied = {f.name: getattr(getattr(cfg, field_group(f.name)), f.name)
              for f in dataclasses.fields(TrainConfig) if f.name not in DERIVED}
    return TrainConfig(**{**copied, **derived, **fields})


def make_trainer(cfg: Config, data, strategy, batch: int, **fields) -> Trainer:
    """A Trainer at global batch `batch` with cfg's settings (see training_config)."""
    return Trainer(model_builder(cfg, data), data, training_config(cfg, batch, **fields),
                   strategy=strategy)


def train_from(trainer: Trainer, start, **kwargs) -> dict:
    """`train_once` after resetting the trainer to the model variables `start` (or what a
    callable `start` returns); the augmentation takes the trial's own stream (seed - --seed), so a
    trial trains alike whether or not the trials before it ran in this process."""
    trainer.reset(start() if callable(start) else start,
                  stream=kwargs["seed"] - trainer.config.seed)
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
    return {"epochs": result.history[-1]["epoch"], "stop_reason": result.stop_reason, **final,
            "seconds": result.seconds, "checkpoint_dir": result.checkpoint_dir,
            "learning_rate": trainer.config.learning_rate, "xla": trainer.xla,
            "bn_eval_source": trainer.bn_eval_source, "bn_layers": trainer.bn_description,
            "history": result.history,
            "diffusion": result.diffusion}


def at_point(record: dict, point: str, at_loss: float = 0.0) -> dict:
    """A run's metrics and weights checkpoint at the point measurements take: the epoch with the
    lowest training loss ("best") or the last epoch ("last"; a diverged run's best); with
    `at_loss` > 0, the first epoch whose training loss is at most `at_loss` (`reached_loss` says
    whether the run got there; if not, its best). Table 2, sharpness, distances and parametric
    plots all read this one point."""
    history = record["history"]
    last = history[-1]["epoch"] if record["stop_reason"] != "diverged" else None
    epoch = last if point == "last" and last is not None else best_epoch(history)
    reached = {}
    if at_loss:
        first = next((h["epoch"] for h in history if h["train_loss"] <= at_loss), None)
        epoch, reached = (first if first is not None else epoch), {"reached_loss": first is not None}
    # A run that diverged in its first epoch has no finite epoch: its point is the start
    # (weights-0), its metrics those of its last row.
    row = next((h for h in history if h["epoch"] == epoch), history[-1])
    return {"measured_epoch": epoch, **{k: row[k] for k in METRICS}, **reached,
            "checkpoint": checkpoint_at(record["checkpoint_dir"], epoch)}


def train_regimes(cfg: Config, *, data, strategy, batches: dict[str, int], run_dir: Path,
                  log=print, regimes: dict[str, Config] | None = None,
                  **fields) -> pd.DataFrame:
    """Every trial of every regime (e.g. SB and LB); returns one row per run, writes history.csv.

    Trial t starts every regime from the same seeded initial weights (seed + t), so the distance
    from the starting point is comparable between SB and LB. One Trainer per regime is compiled
    once and reset for each trial. Runs finished by an earlier start of the same run are skipped.
    `regimes[name]` is that regime's own Config (e.g. with a remedy on; default `cfg`); `fields`
    set TrainConfig fields of every regime. Each row's metrics and `checkpoint` are those of its
    measured point (--measure_point, see `at_point`). With --shard only this shard's runs are
    trained and returned, and history.csv is left to the command without --shard.
    """
    build = model_builder(cfg, data)
    configs = {regime: (regimes or {}).get(regime, cfg) for regime in batches}
    for line in describe(strategy, batches, bn={r: c.model.bn_layer for r, c in configs.items()},
                         ghost_batch_size=cfg.model.ghost_batch_size)[1:]:
        log(line)
    trainers = {regime: make_trainer(configs[regime], data, strategy, batch, **fields)
                for regime, batch in batches.items()}
    first = next(iter(trainers.values()))
    log(memory_statement(
        train_bytes=data.x_train.nbytes + data.y_train.nbytes,
        eval_bytes=2 * (data.x_train.nbytes + data.x_test.nbytes),
        parameters=first.model.count_params(),
        slots={"adam": 2, "sgd": 1 if first.config.momentum else 0}.get(first.config.optimizer, 2)))
    finals, histories = [], []
    for trial in range(cfg.training.trials):
        seed = cfg.training.seed + trial
        starts: list = []  # drawn only when a run of this trial is computed (once per trial)

        def start_of(seed=seed, starts=starts):
            if not starts:
                starts.append(initial_variables(build, seed))
            return starts[0]
        for position, (regime, trainer) in enumerate(trainers.items()):
            if not sharding.owns(cfg.run.shard, trial * len(trainers) + position):
                continue  # another shard's run
            batch, name = batches[regime], f"trial{trial}_{regime}"
            path = run_dir / "runs" / f"{name}.json"
            # The start is drawn when the run is computed: also for a damaged record, which
            # `cached` discards and computes again.
            record, point = _with_whole_weights(cfg, path, functools.partial(
                train_from, trainer, start_of, name=name, run_dir=run_dir, seed=seed, log=log,
                hparams={"network": cfg.model.network, "dataset": data.name, "regime": regime,
                         "batch_size": batch, "seed": seed,
                         "learning_rate": trainer.config.learning_rate},
                label=f"[trial {trial + 1}/{cfg.training.trials} {regime} B={batch}]"), log=log)
            history = record.pop("history")
            finals.append({"trial": trial, "regime": regime, "batch_size": batch, "seed": seed,
                           **record, **point})
            histories.append(pd.DataFrame(history).assign(trial=trial, regime=regime))
    if cfg.run.shard is None:
        history = pd.concat(histories, ignore_index=True)
        runs.atomic_write_text(run_dir / "history.csv", history.to_csv(index=False))
    return pd.DataFrame(finals)


def _with_whole_weights(cfg: Config, path: Path, train, log=print) -> tuple[dict, dict]:
    """(record, measured point) of one run: its record (`cached`), trained again when a weights
    checkpoint the experiment reads back (the start or the measured point) is damaged, so that a
    failing disk or a crash costs that run, never the results."""
    for _ in range(2):
        record = cached(path, train, log=log)
        remove_resume(record["checkpoint_dir"])  # the record now holds what it was for
        point = at_point(record, cfg.measure.measure_point, cfg.measure.measure_at_loss)
        read_back = dict.fromkeys([checkpoint_at(record["checkpoint_dir"], 0), point["checkpoint"]])
        bad = next(((c, why) for c in read_back if c and (why := damage(c))), None)
        if bad is None:
            return record, point
        where = Path(bad[0])
        where = where.relative_to(path.parents[1]) if where.is_relative_to(path.parents[1]) else where
        log(f"  {where}: damaged ({bad[1]}); {path.stem} trained again")
        path.unlink()  # the record without its weights: discarded
    raise UsageError(f"the weights of {path.stem} in {path.parents[1]} are damaged again after "
                     "training it again; check the disk (or --output_dir) and start again")


def without_diverged(trained: pd.DataFrame, log=print) -> pd.DataFrame:
    """The runs that did not diverge. A diverged run (non-finite loss) keeps its record, history
    and the weights of its start and lowest-loss epoch, and the rest of the experiment goes on; it is
    left out of the summaries and measurements, and named in the log and in results.json."""
    if trained.empty:  # a shard with no run of its own
        return trained
    bad = trained.stop_reason == "diverged"
    for r in trained[bad].itertuples():
        log(f"  trial {r.trial} {r.regime}: diverged (non-finite loss) in epoch {r.epochs}; "
            "left out of the summaries and measurements")
    return trained[~bad]


def diverged_names(trained: pd.DataFrame) -> list[str]:
    return [f"trial{r.trial}_{r.regime}" for r in trained.itertuples()
            if r.stop_reason == "diverged"]
