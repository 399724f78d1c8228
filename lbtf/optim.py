"""Optimizers as the two papers run them: Adam (Keskar et al.) and momentum SGD with L2 weight
decay and step schedules (Hoffer et al.), with gradient clipping on the global batch's gradient."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from lbtf.choices import OPTIMIZERS


def learning_rate_schedule(learning_rate: float, *, milestones: Sequence[int],
                           values: Sequence[float] = (), decay: float = 0.1,
                           steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The constant `learning_rate`, or a step schedule over optimizer iterations: after
    milestones[i] epochs, from the first step of the next epoch on, values[i] (when given, one per
    milestone) or learning_rate * decay^(i+1), as PyTorch's MultiStepLR stepped once an epoch
    (Hoffer et al.'s code) does. Keras evaluates a schedule at the count of steps already taken
    and PiecewiseConstantDecay keeps its old value at a boundary step: boundaries one step early
    put the change on the epoch's first step, not its second."""
    if not milestones:
        return learning_rate
    if values and len(values) != len(milestones):
        raise ValueError(f"{len(values)} learning rates for {len(milestones)} milestones; give "
                         "one per milestone")
    after = list(values) or [learning_rate * decay ** (i + 1) for i in range(len(milestones))]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [m * steps_per_epoch - 1 for m in milestones], [learning_rate, *after])


class TorchSGD(keras.optimizers.SGD):
    """SGD with momentum as torch.optim.SGD (Hoffer et al.'s runs): the buffer holds gradients,
    b <- mu b + g, w <- w - lr b. Keras' SGD keeps the velocity in learning-rate units
    (v <- mu v - lr g, w <- w + v): the two agree at a constant learning rate, but after a
    milestone Keras' velocity still carries the old rate for about 1 / (1 - mu) steps."""

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, ops.cast(self.momentum, variable.dtype)),
                                    gradient))
        self.assign_sub(variable, ops.multiply(buffer, learning_rate))


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.0) -> keras.optimizers.Optimizer:
    """Keras' Adam (its defaults) or SGD with PyTorch's heavy-ball momentum (`TorchSGD`)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return TorchSGD(learning_rate, momentum=momentum)
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
