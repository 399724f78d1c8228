"""The training engine: SB / LB Adam runs with a custom loop under tf.distribute.

A per-replica `step_fn` does one Adam step on the replica's share of a global batch; a
`@tf.function` loop runs a whole epoch (or `steps_per_loop` steps) of them in-graph, compiled with
XLA on a single replica. The data stays in memory as tensors and batches are gathered in-graph from
a seeded permutation, so no input pipeline sits between steps.
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

from lbtf.data import Dataset
from lbtf.distribute import split_columns
from lbtf.errors import UsageError
from lbtf.objective import EvalSet, make_evaluator
from lbtf.objective import default_loss as per_example_loss


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    batch_size: int
    learning_rate: float = 1e-3
    max_epochs: int = 100
    patience: int = 10
    min_delta: float = 1e-4
    steps_per_loop: int = 0          # 0: a whole epoch per in-graph loop
    eval_batch_size: int = 2048
    jit_compile: bool = True          # XLA, on a single replica only
    checkpoint_every: int = 1         # epochs; the initial and final weights are always kept


@dataclasses.dataclass
class TrainResult:
    history: list[dict]
    stop_reason: str                  # "converged", "max_epochs" or "diverged"
    checkpoint_dir: str | None
    seconds: float

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def parse_batch_size(text: str) -> int | float:
    """'256' -> 256 examples; '0.1' or '10%' -> a fraction of the training set."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"batch size {text!r} is neither an integer nor a fraction "
                         "(e.g. 256, 0.1 or 10%)") from None
    if t.endswith("%") or "." in t or "e" in t.lower():
        if not 0 < value <= 1:
            raise ValueError(f"batch size fraction {text!r} must lie in (0, 1], e.g. 0.1")
        return value
    if value < 1:
        raise ValueError(f"batch size {text!r} must be a positive integer")
    return int(value)


def resolve_batch_size(spec: int | float | str, num_train: int) -> int:
    """A batch size in examples: an integer as given, a fraction of `num_train` rounded."""
    try:
        value = parse_batch_size(spec) if isinstance(spec, str) else spec
    except ValueError as e:
        raise UsageError(str(e)) from None
    batch = max(1, round(value * num_train)) if isinstance(value, float) else int(value)
    if batch > num_train:
        raise UsageError(f"batch size {batch} exceeds the {num_train} training examples; use at "
                         f"most {num_train} or a fraction such as 0.1")
    return batch


def should_stop(losses: Sequence[float], *, patience: int, min_delta: float) -> bool:
    """True when the last `patience` epochs failed to beat the earlier best by more than min_delta."""
    if len(losses) <= patience:
        return False
    return min(losses[-patience:]) > min(losses[:-patience]) - min_delta


def epoch_indices(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
    """A fresh permutation cut into [n // batch_size, batch_size]; the remainder is dropped."""
    steps = n // batch_size
    return rng.permutation(n)[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


class Trainer:
    """Owns a model, its Adam optimizer and the compiled training loop, under one strategy."""

    def __init__(self, build: Callable[[], keras.Model], data: Dataset, config: TrainConfig, *,
                 strategy: tf.distribute.Strategy | None = None):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.config = config
        self.data = data
        single = self.strategy.num_replicas_in_sync == 1
        with self.strategy.scope():
            self.model = build()
            self.optimizer = keras.optimizers.Adam(config.learning_rate)
            # Slots must exist before the first traced step: created lazily inside a graph, they
            # break under MirroredStrategy.
            self.optimizer.build(self.model.trainable_variables)
        self._fresh_optimizer = [v.numpy() for v in self.optimizer.variables]
        self._x = tf.constant(data.x_train)
        self._y = tf.constant(data.y_train)
        self._loop = tf.function(self._run_steps, jit_compile=config.jit_compile and single)
        self.evaluate = make_evaluator(self.model, config.jit_compile and single)
        self.eval_sets = {"train": EvalSet(data.x_train, data.y_train, config.eval_batch_size),
                          "test": EvalSet(data.x_test, data.y_test, config.eval_batch_size)}

    def reset(self, variables: Sequence[np.ndarray]) -> None:
        """Restarts from the given model variables (weights, BN statistics, dropout RNG state, in
        `model.variables` order) with a fresh Adam state, reusing the compiled loop."""
        for v, value in zip(self.model.variables, variables, strict=True):
            v.assign(value)
        for v, value in zip(self.optimizer.variables, self._fresh_optimizer, strict=True):
            v.assign(value)

    def _step_fn(self, idx: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        """One Adam step on this replica's examples idx[i]."""
        ids = idx[i]
        xb, yb = tf.gather(self._x, ids), tf.gather(self._y, ids)
        model = self.model
        with tf.GradientTape() as tape:
            probs = model(xb, training=True)
            # Divide this replica's summed loss by the GLOBAL batch: the optimizer sums gradients
            # over replicas, so the update equals the one-device mean-loss gradient at any count.
            loss = tf.nn.compute_average_loss(per_example_loss(yb, probs),
                                              global_batch_size=self.config.batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def _run_steps(self, idx, steps: int) -> tf.Tensor:
        total = tf.constant(0.0)
        for i in tf.range(steps):
            loss = self.strategy.run(self._step_fn, args=(idx, i))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return total

    def train_epoch(self, rng: np.random.Generator) -> tuple[float, int]:
        """One pass over a fresh permutation; returns the mean minibatch loss and the step count."""
        idx = epoch_indices(rng, self.data.num_train, self.config.batch_size)
        chunk = self.config.steps_per_loop or len(idx)
        total = 0.0
        for s in range(0, len(idx), chunk):
            part = tf.constant(idx[s:s + chunk])
            total += float(self._loop(split_columns(self.strategy, part), int(part.shape[0])))
        return total / max(len(idx), 1), len(idx)

    def measure(self) -> dict:
        """Training and test loss and accuracy over the whole splits, inference mode."""
        out = {}
        for split, es in self.eval_sets.items():
            out[f"{split}_loss"], out[f"{split}_acc"] = self.evaluate(es)
        return out


def _log_scalars(writer, row: dict, epoch: int) -> None:
    if writer is None:
        return
    with writer.as_default(step=epoch):
        for k, v in row.items():
            if k != "epoch" and isinstance(v, float) and math.isfinite(v):
                tf.summary.scalar(k, v)


def fit(trainer: Trainer, *, seed: int = 0, checkpoint_dir: str | Path | None = None,
        writer=None, log: Callable[[str], None] = print, label: str = "") -> TrainResult:
    """Trains until the training loss stops improving (or max_epochs, or a non-finite loss).

    The training loss that drives stopping is measured over the whole training set after each
    epoch, in inference mode, like the accuracies the paper reports. `seed` drives the shuffling.
    The run starts from the trainer's current weights. Weights are checkpointed at
    epoch 0 (the starting point), every `checkpoint_every` epochs and at the end, named by epoch.
    """
    cfg = trainer.config
    rng = np.random.default_rng(seed)
    manager = None
    if checkpoint_dir is not None:
        ckpt = tf.train.Checkpoint(model=trainer.model)
        manager = tf.train.CheckpointManager(ckpt, str(checkpoint_dir), max_to_keep=None,
                                             checkpoint_name="weights")
        manager.save(checkpoint_number=0)
    history: list[dict] = []
    reason = "max_epochs"
    start = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        batch_loss, steps = trainer.train_epoch(rng)
        row = {"epoch": epoch, "steps": steps, "minibatch_loss": batch_loss, **trainer.measure(),
               "seconds": time.perf_counter() - t0}
        history.append(row)
        _log_scalars(writer, row, epoch)
        log(f"{label} epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc "
            f"{100 * row['train_acc']:6.2f}%  test loss {row['test_loss']:.4f} acc "
            f"{100 * row['test_acc']:6.2f}%  ({row['seconds']:.1f}s)")
        losses = [h["train_loss"] for h in history]
        if not math.isfinite(row["train_loss"]):
            reason = "diverged"
        elif should_stop(losses, patience=cfg.patience, min_delta=cfg.min_delta):
            reason = "converged"
        last = reason != "max_epochs" or epoch == cfg.max_epochs
        if manager is not None and (last or (cfg.checkpoint_every and
                                             epoch % cfg.checkpoint_every == 0)):
            manager.save(checkpoint_number=epoch)
        if last:
            break
    if writer is not None:
        writer.flush()
    return TrainResult(history, reason, str(checkpoint_dir) if checkpoint_dir else None,
                       time.perf_counter() - start)


def restore_weights(model: keras.Model, checkpoint: str) -> None:
    """Loads a weights checkpoint written by `fit` into a model of the same architecture."""
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
