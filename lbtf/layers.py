"""Normalisation and dropout layers whose training step does not depend on the replica count.

- `GhostBatchNormalization` (Hoffer, Hubara and Soudry 2017): Keras 2's
  `BatchNormalization(virtual_batch_size=...)` also split batches at inference and broke
  `load_model`; Keras 3 dropped it. This layer splits only in training.
- `ReplicaDropout`: Keras' Dropout draws the same mask on every replica (the seed generators move in
  lockstep); this one draws the mask of the whole global batch and keeps the replica's rows.

Under a multi-replica strategy replica r holds rows [r b, (r + 1) b) of the global batch (lbtf's
loop, `distribute.split_columns`), so "the same as on one device" means: statistics over the
global batch, ghosts numbered over the global batch, masks of the global batch's rows.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf


def replica_slot() -> tuple[int, tf.Tensor | int]:
    """(replicas in sync, this replica's index): (1, 0) outside a multi-replica step."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return 1, 0
    return ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group


def sync_moments(x: tf.Tensor, axes: list[int], keepdims: bool = False):
    """Mean and biased variance of `x` over `axes` and over every replica in sync, in two passes:
    the sums and the count in one all-reduce, then the squared deviations from that global mean
    in a second. Keras' synchronized moments take E[x^2] - E[x]^2 in float32 (three all-reduces),
    which cancels catastrophically once a channel's mean is far above its std (variances 11-15%
    off at mean/std 3000); this is as accurate as one device's two-pass `tf.nn.moments`, which
    it is, op for op, outside a multi-replica step."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tf.nn.moments(x, axes, keepdims=keepdims)
    local = tf.reduce_sum(x, axes, keepdims=True)
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                           tf.concat([tf.reshape(local, [-1]), count[None]], 0))
    mean = tf.reshape(total[:-1], tf.shape(local)) / total[-1]
    squares = tf.reduce_sum(tf.square(x - tf.stop_gradient(mean)), axes, keepdims=True)
    # d var / d mean = -2 mean(x - mean) = 0 over the global batch: the mean is held fixed here,
    # which saves the gradient one more all-reduce and changes no gradient.
    var = ctx.all_reduce(tf.distribute.ReduceOp.SUM, squares) / total[-1]
    if not keepdims:
        mean, var = tf.squeeze(mean, axes), tf.squeeze(var, axes)
    return mean, var


@keras.saving.register_keras_serializable(package="lbtf")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization(synchronized=True) with the statistics of `sync_moments`: on R
    replicas the mean and variance one device would compute over the global batch, two-pass.
    Same weights, checkpoints and config as Keras' layer."""

    def __init__(self, **kwargs):
        kwargs["synchronized"] = True
        super().__init__(**kwargs)

    def _moments(self, inputs, mask):
        if mask is not None or self.renorm:
            return super()._moments(inputs, mask)
        x = tf.cast(inputs, tf.float32)
        mean, var = sync_moments(x, list(self._reduction_axes))
        return tf.cast(mean, inputs.dtype), tf.cast(var, inputs.dtype)


@keras.saving.register_keras_serializable(package="lbtf")
class ReplicaDropout(keras.layers.Dropout):
    """Dropout whose masks do not depend on how a batch is split over replicas.

    On one device it is Keras' Dropout, op for op. On R replicas every replica draws the mask of
    the whole global batch (R x its rows) from the same seed, as one device would, and keeps its
    own rows: masks differ between replicas, are reproducible, and equal the one-device masks.
    Drawing R x the mask costs R x a uniform draw of one activation, small beside the layer."""

    def call(self, inputs, training=False):
        replicas, r = replica_slot()
        if not (training and self.rate > 0) or replicas == 1:
            return super().call(inputs, training=training)
        if self.noise_shape is not None:
            raise ValueError("ReplicaDropout supports noise_shape=None only")
        b = tf.shape(inputs)[0]
        shape = tf.concat([[b * replicas], tf.shape(inputs)[1:]], 0)
        keep = keras.random.dropout(tf.ones(shape, inputs.dtype), self.rate,
                                    seed=self.seed_generator)
        return inputs * keep[r * b:(r + 1) * b]


@keras.saving.register_keras_serializable(package="lbtf")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalisation over ghost batches of `virtual_batch_size` examples.

    Training: the batch is cut into consecutive ghost batches of `virtual_batch_size` examples (the
    last one smaller when the batch does not divide); each is normalised with its own mean and
    (biased) variance over every axis but the channel axis. The moving statistics are updated once
    per ghost batch, in order, with the usual momentum rule, as Hoffer et al.'s code does.
    Inference: the moving statistics, for any batch size, exactly like BatchNormalization.
    With `virtual_batch_size` >= the batch it is standard batch normalisation. Same weights, same
    checkpoints and `.keras` files as BatchNormalization, plus `virtual_batch_size` in the config.

    On R replicas the ghosts are those of the global batch: each replica normalises its own whole
    ghosts (the per-replica batch must be a multiple of the ghost size), a ghost as large as the
    global batch is normalised with statistics all-reduced over the replicas, and the moving
    statistics take every ghost of the global batch in order (one all-reduce), so every replica
    holds the moving statistics one device would. `virtual_batch_size=None`: each replica's share
    is one ghost (Keras BN under MirroredStrategy without synchronisation, on purpose).
    """

    def __init__(self, virtual_batch_size: int | None = 128, **kwargs):
        if virtual_batch_size is not None and int(virtual_batch_size) < 1:
            raise ValueError(f"virtual_batch_size must be a positive integer, got "
                             f"{virtual_batch_size}")
        if kwargs.get("renorm") or kwargs.get("synchronized"):
            raise ValueError("GhostBatchNormalization supports neither renorm nor synchronized")
        axis = kwargs.get("axis", -1)
        if axis not in (-1, [-1]):
            raise ValueError("GhostBatchNormalization normalises the last (channel) axis only")
        super().__init__(**kwargs)
        self.virtual_batch_size = None if virtual_batch_size is None else int(virtual_batch_size)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=False, mask=mask)
        x = tf.cast(inputs, "float32")
        # tf.nn.moments and tf.nn.batch_normalization per ghost, the ops Keras' BatchNormalization
        # runs on the whole batch: a ghost batch as large as the batch is standard BN, op for op.
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else None
        beta = tf.cast(self.beta, x.dtype) if self.center else None
        replicas, _ = replica_slot()
        v = self.virtual_batch_size
        if replicas > 1 and x.shape[0] is not None and v is not None:
            if v >= x.shape[0] * replicas:  # one ghost: the global batch
                return self._normalize_synchronized(x, gamma, beta)
            if x.shape[0] % v:
                raise ValueError(
                    f"ghost batches of {v} do not tile the per-replica batch of {x.shape[0]} on "
                    f"{replicas} replicas; use a per-replica batch that is a multiple of {v}")
        if x.shape[0] is None:  # dynamic batch: per-example ghost indices and segment sums
            out, mean, var = self._normalize_dynamic(x, gamma, beta)
        else:  # static batch (lbtf's loop): whole ghosts as a reshape, plus a smaller last one
            out, mean, var = self._normalize_static(x, gamma, beta)
        self._update_moving(mean, var, ordered_over_replicas=True)
        return tf.cast(out, self.compute_dtype)

    def _normalize_synchronized(self, x, gamma, beta):
        """One ghost spanning every replica: statistics all-reduced, as synchronized BN."""
        axes = list(range(len(x.shape) - 1))
        mean, var = sync_moments(x, axes, keepdims=True)
        out = tf.nn.batch_normalization(x, mean, var, beta, gamma, self.epsilon)
        # Every replica holds the same statistics: each updates its copy alone.
        self._update_moving(tf.reshape(mean, [1, -1]), tf.reshape(var, [1, -1]),
                            ordered_over_replicas=False)
        return tf.cast(out, self.compute_dtype)

    def _normalize_static(self, x, gamma, beta):
        n = x.shape[0]
        v = self.virtual_batch_size or n
        full = n // v * v
        pieces, means, variances = [], [], []
        for start, size, count in ((0, v, full // v), (full, n - full, 1 if n > full else 0)):
            if not count:
                continue
            g = tf.reshape(x[start:start + size * count], [count, size, *x.shape[1:]])
            axes = list(range(1, len(g.shape) - 1))
            mean, var = tf.nn.moments(g, axes, keepdims=True)
            out = tf.nn.batch_normalization(g, mean, var, beta, gamma, self.epsilon)
            pieces.append(tf.reshape(out, [size * count, *x.shape[1:]]))
            means.append(tf.reshape(mean, [count, -1]))
            variances.append(tf.reshape(var, [count, -1]))
        out = pieces[0] if len(pieces) == 1 else tf.concat(pieces, 0)
        return out, tf.concat(means, 0), tf.concat(variances, 0)

    def _normalize_dynamic(self, x, gamma, beta):
        mean, var, ghost_of = self._ghost_moments(x)
        shape = tf.concat([[-1], tf.ones([len(x.shape) - 2], tf.int32), [x.shape[-1]]], 0)
        m = tf.reshape(tf.gather(mean, ghost_of), shape)
        v = tf.reshape(tf.gather(var, ghost_of), shape)
        return tf.nn.batch_normalization(x, m, v, beta, gamma, self.epsilon), mean, var

    def _ghost_moments(self, x):
        """Per-ghost mean and biased variance [G, C], and each example's ghost index [n]."""
        n = tf.shape(x)[0]
        v = self.virtual_batch_size or n
        ghosts = (n + v - 1) // v
        ghost_of = tf.range(n) // v
        spatial = list(range(1, len(x.shape) - 1))
        per_example = tf.reduce_mean(x, axis=spatial) if spatial else x
        count = tf.math.unsorted_segment_sum(tf.ones([n]), ghost_of, ghosts)[:, None]
        mean = tf.math.unsorted_segment_sum(per_example, ghost_of, ghosts) / count
        shape = tf.concat([[-1], tf.ones([len(spatial)], tf.int32), [x.shape[-1]]], 0)
        centered = tf.square(x - tf.reshape(tf.gather(mean, ghost_of), shape))
        per_example = tf.reduce_mean(centered, axis=spatial) if spatial else centered
        var = tf.math.unsorted_segment_sum(per_example, ghost_of, ghosts) / count
        return mean, var, ghost_of

    def _update_moving(self, mean, var, *, ordered_over_replicas: bool) -> None:
        """G momentum updates in ghost order, in closed form:
        s_G = m^G s_0 + (1 - m) sum_k m^(G-1-k) x_k, k = 0..G-1.
        On R replicas of g ghosts each (ordered_over_replicas), replica r's ghost j is ghost
        k = r g + j of the global batch: each replica sums its own terms and one all-reduce adds
        them, so every replica applies the one-device update."""
        m = tf.constant(self.momentum, tf.float32)
        g = tf.shape(mean)[0]
        replicas, r = replica_slot() if ordered_over_replicas else (1, 0)
        total = g * replicas
        powers = tf.pow(m, tf.cast(total - 1 - (r * g + tf.range(g)), tf.float32))[:, None]
        decay = tf.pow(m, tf.cast(total, tf.float32))
        for stat, batch in ((self.moving_mean, mean), (self.moving_variance, var)):
            terms = tf.reduce_sum(powers * batch, axis=0)
            if replicas > 1:
                terms = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, terms)
            stat.assign(decay * tf.cast(stat, tf.float32) + (1.0 - m) * terms)

    def get_config(self):
        return {**super().get_config(), "virtual_batch_size": self.virtual_batch_size}


def _global_batch_norm(*, momentum: float) -> keras.layers.BatchNormalization:
    """Keras BN over the global batch: synchronized when built under a multi-replica strategy
    (on one device plain BN, whose two-pass variance is kept bit for bit)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        return SyncBatchNormalization(momentum=momentum)
    return keras.layers.BatchNormalization(momentum=momentum)


def norm_layer(kind: str, *, virtual_batch_size: int = 128, momentum: float = 0.99):
    """A factory for models.build_model(norm=...), whatever the replica count:
    'standard' (statistics over the global batch: Keras BN, synchronized on several replicas),
    'ghost' (GhostBatchNormalization over ghosts of the global batch), 'sync' (Keras BN always
    synchronized), 'per_replica' (each replica's share normalised alone: ghost BN of B / R, the
    old MirroredStrategy default, chosen on purpose; moving statistics still the same on every
    replica) or 'none' (an identity: no normalisation, the control whose sharpness has no BN
    ambiguity). `momentum` is Keras' (moving = momentum x moving + (1 - momentum) x batch):
    PyTorch's 0.1 is Keras' 0.9. Build the model under the strategy it trains with."""
    if kind == "standard":
        return functools.partial(_global_batch_norm, momentum=momentum)
    if kind == "ghost":
        return functools.partial(GhostBatchNormalization, virtual_batch_size=virtual_batch_size,
                                 momentum=momentum)
    if kind == "per_replica":
        return functools.partial(GhostBatchNormalization, virtual_batch_size=None,
                                 momentum=momentum)
    if kind == "sync":
        return functools.partial(SyncBatchNormalization, momentum=momentum)
    if kind == "none":  # the control without BN: every other layer, bias and initialiser kept
        return keras.layers.Identity
    raise ValueError(f"unknown normalisation {kind!r}; choose standard, ghost, sync, per_replica "
                     "or none")
