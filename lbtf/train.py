"""The training engine: SB / LB runs with a custom loop under tf.distribute, in three parts.

- the step and its remedies (`lbtf.step.TrainStep`): a per-replica `step_fn` makes one optimizer
  step on the replica's share of a global batch; a `@tf.function` loop runs a whole epoch (or
  `steps_per_loop` steps) of them in-graph, XLA-compiled on a single replica;
- evaluation and its BN statistics (`lbtf.evaluation.Evaluator`);
- here, the `Trainer` that owns the model, optimizer and state, and `fit`, the controller: epochs,
  the stopping rule, checkpoints, resuming and summaries.
The data stays in memory as tensors, one copy on each replica's device shared by every trainer of
the process (`distribute.place`), and batches are gathered in-graph from a seeded permutation, so
no input pipeline sits between steps and no step copies data between devices.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from lbtf.bn import bn_layers
from lbtf.checkpoints import Checkpoints, keep_weights, restore_weights  # noqa: F401
from lbtf.choices import parse_batch_size, resolve_batch_size  # noqa: F401  (re-exported)
from lbtf.data import Dataset
from lbtf.distribute import from_chief, place, split_columns, worker
from lbtf.evaluation import Evaluator
from lbtf.objective import use_xla
from lbtf.optim import learning_rate_schedule, make_optimizer
from lbtf.remedies import Remedies
from lbtf.step import TrainStep


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    batch_size: int
    learning_rate: float = 1e-3
    max_epochs: int = 100
    patience: int = 10
    min_delta: float = 1e-4
    steps_per_loop: int = 0          # 0: a whole epoch per in-graph loop
    eval_batch_size: int = 2048
    jit_compile: bool = True          # XLA, on one replica, not for convolutions on CPU
    checkpoint_every: int = 0         # also keep every N-th epoch's weights (0: only those read
                                      # back: the start, the lowest training loss, the last)
    measure_every: int = 1            # measure (and test for stopping) every N-th epoch and the
                                      # last; patience still counts epochs (see `should_stop`)
    resume_interval: float = 30.0     # seconds between resume checkpoints (0: after every epoch)
    optimizer: str = "adam"           # "adam" (Keskar et al.) or "sgd" (Hoffer et al.)
    momentum: float = 0.0             # SGD's momentum
    weight_decay: float = 0.0         # L2: weight_decay * w added to the clipped gradient
    lr_milestones: tuple[int, ...] = ()  # epochs at which the learning rate changes: to
    lr_values: tuple[float, ...] = ()    # these values (one per milestone), or else times
    lr_decay: float = 0.1                # lr_decay at each
    crop_flip_pad: int = 0            # pad, crop back at random, flip (CIFAR: 4; 0: off)
    # The remedies this trainer applies in its step (lr scaling and regime adaptation are already
    # in learning_rate, max_epochs, patience and lr_milestones); all off by default.
    remedies: Remedies = Remedies()
    # BN statistics for evaluation and checkpoints: "recompute" re-estimates them from training
    # data before each measurement (population statistics, like the paper's Keras-1 BN that used
    # batch statistics at test time); "moving" keeps Keras' moving averages, which lag far behind
    # the weights when an epoch has few steps (0.99^90 = 40% weight on the initial values).
    bn_eval: str = "recompute"
    bn_eval_examples: int = 10000     # seeded subset of the training set for it (0: all)
    seed: int = 0                     # augmentation seed


@dataclasses.dataclass
class TrainResult:
    history: list[dict]
    stop_reason: str                  # "converged", "max_epochs" or "diverged"
    checkpoint_dir: str | None
    seconds: float                    # including earlier, interrupted starts of the run
    diffusion: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    resumed_from: int = 0             # epoch restored from a checkpoint (0: started afresh)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def should_stop(losses: Sequence[float], *, patience: int, min_delta: float,
                every: int = 1) -> bool:
    """True when the last `patience` epochs failed to beat the earlier best by more than min_delta.
    `losses` are measured every `every` epochs: then the last ceil(patience / every) measurements,
    which span at least `patience` epochs, must fail to beat the earlier ones."""
    recent = -(-patience // every)
    if len(losses) <= recent:
        return False
    return min(losses[-recent:]) > min(losses[:-recent]) - min_delta


def best_epoch(history: Sequence[dict]) -> int:
    """The epoch with the lowest (finite) training loss; the first of equals. Measurements take
    this point by default: a run stopped by patience may end on an Adam spike, off its minimum."""
    # A record read back from JSON holds a non-finite loss as None.
    finite = [h for h in history if h["train_loss"] is not None and math.isfinite(h["train_loss"])]
    return min(finite, key=lambda h: h["train_loss"])["epoch"] if finite else 0


def epoch_indices(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
    """A fresh permutation cut into [n // batch_size, batch_size]; the remainder is dropped."""
    steps = n // batch_size
    return rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


class Trainer:
    """A model, its optimizer and its state under one strategy, composed of the training step
    (`lbtf.step.TrainStep`: the step, its remedies and the compiled loop) and the evaluation
    (`lbtf.evaluation.Evaluator`: whole-split metrics and the BN statistics they use); `fit`
    drives it. One compiled trainer per batch size serves every trial (`reset`)."""

    def __init__(self, build: Callable[[], keras.Model], data: Dataset, config: TrainConfig, *,
                 strategy: tf.distribute.Strategy | None = None):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.config, self.data = config, data
        with self.strategy.scope():
            self.model = build()
            self.optimizer = make_optimizer(config.optimizer, self._learning_rate(),
                                            momentum=config.momentum)
            # Slots must exist before the first traced step: created lazily inside a graph, they
            # break under MirroredStrategy.
            self.optimizer.build(self.model.trainable_variables)
        self.xla = xla = use_xla(self.model, requested=config.jit_compile,
                                 replicas=self.strategy.num_replicas_in_sync)
        self.step = TrainStep(self.model, self.optimizer, batch_size=config.batch_size,
                              remedy=config.remedies, weight_decay=config.weight_decay,
                              crop_flip_pad=config.crop_flip_pad, seed=config.seed,
                              strategy=self.strategy, xla=xla)
        # w_0 of ||w_t - w_0||, kept as variables so a resumed run measures from the same start.
        self._w0 = [tf.Variable(v, trainable=False) for v in self.model.trainable_variables]
        self._fresh_optimizer = [v.numpy() for v in self.optimizer.variables]
        self._fresh_augment = [v.numpy() for v in self.step.augment_variables()]
        self.stream = 0
        self._x = place(self.strategy, data.x_train)
        self._y = place(self.strategy, data.y_train)
        self.evaluator = Evaluator(self.model, data, bn_eval=config.bn_eval,
                                   bn_eval_examples=config.bn_eval_examples,
                                   eval_batch_size=config.eval_batch_size, seed=config.seed,
                                   strategy=self.strategy, x=self._x, y=self._y, xla=xla)
        self._start_diffusion()

    def _learning_rate(self):
        """The constant learning rate, or a step schedule over optimizer iterations (conservative
        training makes conservative_steps iterations per batch)."""
        cfg = self.config
        per_batch = cfg.remedies.conservative_steps if cfg.remedies.conservative_lambda else 1
        return learning_rate_schedule(cfg.learning_rate, milestones=cfg.lr_milestones,
                                      values=cfg.lr_values, decay=cfg.lr_decay,
                                      steps_per_epoch=self.data.num_train // cfg.batch_size
                                      * per_batch)

    def _start_diffusion(self) -> None:
        self.diffusion: list[tuple[int, float]] = []
        self._steps_done = 0
        for w0, v in zip(self._w0, self.model.trainable_variables, strict=True):
            w0.assign(v)

    def trackables(self) -> dict:
        """Everything a resumed run needs besides the Python state: weights, BN statistics, Adam's
        slots and step, w_0, and the dropout and augmentation RNG states (Keras' seed generators,
        which `tf.train.Checkpoint(model=...)` does not save)."""
        weights = {id(v) for v in self.model.weights}
        seeds = [v for v in self.model.variables if id(v) not in weights]
        seeds += self.step.augment_variables()
        return {"model": self.model, "optimizer": self.optimizer, "start": self._w0,
                "seeds": seeds}

    def progress(self) -> dict:
        return {"steps_done": self._steps_done, "diffusion": self.diffusion}

    def set_progress(self, *, steps_done: int, diffusion: list) -> None:
        self._steps_done = steps_done
        self.diffusion = [tuple(d) for d in diffusion]

    def reset(self, variables: Sequence[np.ndarray], *, stream: int = 0) -> None:
        """Restarts from the given model variables (weights, BN statistics, dropout RNG state, in
        `model.variables` order) with a fresh optimizer state, reusing the compiled loop. The
        augmentation seeds restart too, on their `stream`-th sequence (a trial's own, whatever
        ran before it in this process)."""
        for v, value in zip(self.model.variables, variables, strict=True):
            v.assign(value)
        for v, value in zip(self.optimizer.variables, self._fresh_optimizer, strict=True):
            v.assign(value)
        for v, value in zip(self.step.augment_variables(), self._fresh_augment, strict=True):
            v.assign(value + np.array([stream, 0], value.dtype))
        self.stream = stream
        self._start_diffusion()

    def train_epoch(self, rng: np.random.Generator) -> tuple[float, int]:
        """One pass over a fresh permutation; returns the mean minibatch loss and the step count."""
        idx = epoch_indices(rng, self.data.num_train, self.config.batch_size)
        every = self.config.remedies.diffusion_every
        chunk = every or self.config.steps_per_loop or len(idx)
        total = 0.0
        for s in range(0, len(idx), chunk):
            part = tf.constant(idx[s:s + chunk])
            total += float(self.step.run_steps(self._x, self._y,
                                               split_columns(self.strategy, part),
                                               int(part.shape[0])))
            self._steps_done += int(part.shape[0])
            if every:
                self.diffusion.append((self._steps_done, self.distance_from_start()))
        return total / max(len(idx), 1), len(idx)

    def last_learning_rate(self) -> float:
        """The learning rate of the last optimizer step taken (the schedule's, if any)."""
        lr = self.optimizer._learning_rate  # the schedule itself, not its current value
        if callable(lr):
            return float(lr(max(int(self.optimizer.iterations.numpy()) - 1, 0)))
        return float(self.optimizer.learning_rate.numpy())

    @property
    def bn_description(self) -> str:
        """The normalisation the model trains with, from its layers: e.g. 'BatchNormalization',
        'BatchNormalization(synchronized)', 'GhostBatchNormalization(50)', or 'none'."""
        kinds = set()
        for lay in bn_layers(self.model):
            ghost = getattr(lay, "virtual_batch_size", "absent")
            name = type(lay).__name__.removeprefix("Sync")  # lbtf's two-pass synchronized BN
            kinds.add(name + (f"({ghost if ghost is not None else 'per replica'})"
                                             if ghost != "absent" else
                                             "(synchronized)" if lay.synchronized else ""))
        return ", ".join(sorted(kinds)) or "none"

    def distance_from_start(self) -> float:
        """||w - w_0|| over the trainable weights, w_0 those at the last reset."""
        return float(np.sqrt(sum(np.sum((v.numpy().astype(np.float64) - w0.numpy()) ** 2)
                                 for v, w0 in zip(self.model.trainable_variables, self._w0,
                                                  strict=True))))

    @property
    def bn_eval_source(self) -> str:
        return self.evaluator.source

    def measure(self) -> dict:
        """The evaluator's whole-split metrics (BN statistics re-estimated first, and kept)."""
        return self.evaluator.measure()


def _log_scalars(writer, row: dict, epoch: int) -> None:
    if writer is None:
        return
    with writer.as_default(step=epoch):
        for k, v in row.items():
            if k != "epoch" and isinstance(v, float) and math.isfinite(v):
                tf.summary.scalar(k, v)


def _epochs(trainer: Trainer, rng: np.random.Generator, done: int) -> dict:
    """Trains from epoch done + 1 to the next measured one (every `measure_every`-th, the last, or
    the first with a non-finite minibatch loss) and returns its row; `steps` and `seconds` cover
    every epoch since the last row, `minibatch_loss` the last epoch's mean."""
    cfg, t0, steps = trainer.config, time.perf_counter(), 0
    for epoch in range(done + 1, cfg.max_epochs + 1):
        batch_loss, n = trainer.train_epoch(rng)
        steps += n
        if (epoch % cfg.measure_every == 0 or epoch == cfg.max_epochs
                or not math.isfinite(batch_loss)):
            break
    measured = {"minibatch_loss": batch_loss, **trainer.measure()}
    # Every worker takes the chief's numbers, so all decide alike when to stop and what to keep.
    measured = dict(zip(measured, from_chief(trainer.strategy, list(measured.values())), strict=True))
    return {"epoch": epoch, "steps": steps, **measured, "learning_rate": trainer.last_learning_rate(),
            "seconds": time.perf_counter() - t0}


def _stop_reason(history: list[dict], cfg: TrainConfig) -> str | None:
    row = history[-1]
    if not all(math.isfinite(row[k]) for k in ("minibatch_loss", "train_loss")):
        return "diverged"
    if should_stop([h["train_loss"] for h in history], patience=cfg.patience,
                   min_delta=cfg.min_delta, every=cfg.measure_every):
        return "converged"
    return "max_epochs" if row["epoch"] >= cfg.max_epochs else None


def fit(trainer: Trainer, *, seed: int = 0, checkpoint_dir: str | Path | None = None,
        save_dir: str | Path | None = None, writer=None, log: Callable[[str], None] = print,
        label: str = "") -> TrainResult:
    """Trains until the training loss stops improving (or max_epochs, or a non-finite loss).

    The training loss that drives stopping is measured over the whole training set after each
    epoch (or every `measure_every`-th and the last), in inference mode, like the accuracies the
    paper reports. `seed` drives the shuffling.
    The run starts from the trainer's current weights. Weights are kept for epoch 0 (the starting
    point), the epoch of lowest training loss so far (the point measurements take by default, see
    `best_epoch`; a superseded one is deleted), the last epoch and, on request, every
    `checkpoint_every`-th. A resume checkpoint is written every `resume_interval` seconds and at
    the end; when `checkpoint_dir` holds one, the run continues from it: with deterministic ops it
    ends exactly as an uninterrupted run. A diverged run (non-finite loss) stops without saving
    its non-finite weights.
    """
    cfg = trainer.config
    rng = np.random.default_rng(seed)
    ckpts = (Checkpoints(trainer.trackables(), checkpoint_dir, save_dir=save_dir, log=log)
             if checkpoint_dir else None)
    history, reason, elapsed, resumed = [], None, 0.0, 0
    start_variables = [v.numpy() for v in trainer.model.variables] if ckpts else None
    restored = ckpts.restore(log=log) if ckpts else None
    if ckpts and restored is None and ckpts.discarded:
        # A damaged checkpoint may have set some variables: back to this run's start.
        trainer.reset(start_variables, stream=trainer.stream)
        log(f"{label} no resume checkpoint restored; the run starts afresh")
    if restored:
        path, state = restored
        history, reason, elapsed = state["history"], state["stop_reason"], state["seconds"]
        rng.bit_generator.state = state["rng"]
        trainer.set_progress(steps_done=state["steps_done"], diffusion=state["diffusion"])
        resumed = history[-1]["epoch"] if history else 0
        ckpts.delete_weights_after(resumed)  # written after the resume checkpoint; redone now
        log(f"{label} resumed after epoch {resumed} from {path}")
    elif ckpts:
        ckpts.delete_weights_after(0)  # left by an earlier start killed before any resume point
        ckpts.save_weights(0)
    # Workers must agree on when to save: a multi-worker job saves after every epoch.
    interval = cfg.resume_interval if worker(trainer.strategy)[1] == 1 else 0.0
    start = time.perf_counter() - elapsed
    saved_at, kept_best = time.perf_counter(), best_epoch(history)
    while reason is None:
        history.append(_epochs(trainer, rng, history[-1]["epoch"] if history else 0))
        row, reason = history[-1], _stop_reason(history, cfg)
        _log_scalars(writer, row, row["epoch"])
        log(f"{label} epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc "
            f"{100 * row['train_acc']:6.2f}%  test loss {row['test_loss']:.4f} acc "
            f"{100 * row['test_acc']:6.2f}%  ({row['seconds']:.1f}s)"
            + ("  DIVERGED: non-finite loss" if reason == "diverged" else ""))
        if ckpts is None:
            continue
        kept_best = keep_weights(ckpts, epoch=row["epoch"], best=best_epoch(history),
                                 reason=reason, every=cfg.checkpoint_every, kept_best=kept_best)
        if reason is not None or time.perf_counter() - saved_at >= interval:
            ckpts.save_state(row["epoch"], {
                "history": history, "stop_reason": reason, "rng": rng.bit_generator.state,
                "seconds": time.perf_counter() - start, **trainer.progress()})
            saved_at = time.perf_counter()
    if writer is not None:
        writer.flush()
    return TrainResult(history, reason, str(checkpoint_dir) if checkpoint_dir else None,
                       time.perf_counter() - start, list(trainer.diffusion), resumed)
