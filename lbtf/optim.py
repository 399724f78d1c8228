"""Optimizers as the two papers run them: Adam (Keskar et al.) and momentum SGD with L2 weight
decay and step schedules (Hoffer et al.), with gradient clipping on the global batch's gradient."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from lbtf.choices import OPTIMIZERS


def learning_rate_schedule(learning_rate: float, *, milestones: Sequence[int],
                           values: Sequence[float] = (), decay: float = 0.1,
                           steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The constant `learning_rate`, or a step schedule over optimizer iterations: from epoch
    milestones[i] on, values[i] (when given, one per milestone) or learning_rate * decay^(i+1)."""
    if not milestones:
        return learning_rate
    if values and len(values) != len(milestones):
        raise ValueError(f"{len(values)} learning rates for {len(milestones)} milestones; give "
                         "one per milestone")
    after = list(values) or [learning_rate * decay ** (i + 1) for i in range(len(milestones))]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [m * steps_per_epoch for m in milestones], [learning_rate, *after])


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.0) -> keras.optimizers.Optimizer:
    """Keras' Adam (its defaults) or SGD with (heavy-ball, PyTorch-style) momentum."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def global_gradients(grads: list[tf.Tensor], variables: Sequence[tf.Variable], *,
                     clip_norm: float = 0.0, weight_decay: float = 0.0) -> list[tf.Tensor]:
    """In a replica context: this replica's share of the global batch's gradient, clipped to
    global norm `clip_norm` and with L2 weight decay `weight_decay * w` added after clipping
    (PyTorch's SGD, as Hoffer et al. ran it); unchanged when both are off.

    Keras clips inside apply_gradients, per replica, before the cross-replica sum, so R replicas
    would clip at up to R times the norm. Here the replicas' gradients are summed first, clipped
    and decayed, then divided by R: apply_gradients sums the R equal shares back to the result.
    """
    if not clip_norm and not weight_decay:
        return grads
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync
    if replicas > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    if clip_norm:
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
    if weight_decay:
        grads = [g + weight_decay * v for g, v in zip(grads, variables, strict=True)]
    return [g / replicas for g in grads] if replicas > 1 else grads
