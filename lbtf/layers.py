"""Ghost Batch Normalization (Hoffer, Hubara and Soudry 2017) as a Keras 3 layer.

Keras 2's `BatchNormalization(virtual_batch_size=...)` also split batches at inference and broke
`load_model`; Keras 3 dropped it. This layer splits only in training.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf


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
    """

    def __init__(self, virtual_batch_size: int = 128, **kwargs):
        if int(virtual_batch_size) < 1:
            raise ValueError(f"virtual_batch_size must be a positive integer, got "
                             f"{virtual_batch_size}")
        if kwargs.get("renorm") or kwargs.get("synchronized"):
            raise ValueError("GhostBatchNormalization supports neither renorm nor synchronized")
        axis = kwargs.get("axis", -1)
        if axis not in (-1, [-1]):
            raise ValueError("GhostBatchNormalization normalises the last (channel) axis only")
        super().__init__(**kwargs)
        self.virtual_batch_size = int(virtual_batch_size)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable):
            return super().call(inputs, training=False, mask=mask)
        x = tf.cast(inputs, "float32")
        # tf.nn.moments and tf.nn.batch_normalization per ghost, the ops Keras' BatchNormalization
        # runs on the whole batch: a ghost batch as large as the batch is standard BN, op for op.
        gamma = tf.cast(self.gamma, x.dtype) if self.scale else None
        beta = tf.cast(self.beta, x.dtype) if self.center else None
        if x.shape[0] is None:  # dynamic batch: per-example ghost indices and segment sums
            out, mean, var = self._normalize_dynamic(x, gamma, beta)
        else:  # static batch (lbtf's loop): whole ghosts as a reshape, plus a smaller last one
            out, mean, var = self._normalize_static(x, gamma, beta)
        self._update_moving(mean, var)
        return tf.cast(out, self.compute_dtype)

    def _normalize_static(self, x, gamma, beta):
        n, v = x.shape[0], self.virtual_batch_size
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
        ghosts = (n + self.virtual_batch_size - 1) // self.virtual_batch_size
        ghost_of = tf.range(n) // self.virtual_batch_size
        spatial = list(range(1, len(x.shape) - 1))
        per_example = tf.reduce_mean(x, axis=spatial) if spatial else x
        count = tf.math.unsorted_segment_sum(tf.ones([n]), ghost_of, ghosts)[:, None]
        mean = tf.math.unsorted_segment_sum(per_example, ghost_of, ghosts) / count
        shape = tf.concat([[-1], tf.ones([len(spatial)], tf.int32), [x.shape[-1]]], 0)
        centered = tf.square(x - tf.reshape(tf.gather(mean, ghost_of), shape))
        per_example = tf.reduce_mean(centered, axis=spatial) if spatial else centered
        var = tf.math.unsorted_segment_sum(per_example, ghost_of, ghosts) / count
        return mean, var, ghost_of

    def _update_moving(self, mean, var) -> None:
        """G momentum updates in ghost order, in closed form:
        s_G = m^G s_0 + (1 - m) sum_k m^(G-k) x_k."""
        m = tf.constant(self.momentum, tf.float32)
        ghosts = tf.shape(mean)[0]
        powers = tf.pow(m, tf.cast(tf.range(ghosts - 1, -1, -1), tf.float32))[:, None]
        decay = tf.pow(m, tf.cast(ghosts, tf.float32))
        for stat, batch in ((self.moving_mean, mean), (self.moving_variance, var)):
            stat.assign(decay * tf.cast(stat, tf.float32)
                        + (1.0 - m) * tf.reduce_sum(powers * batch, axis=0))

    def get_config(self):
        return {**super().get_config(), "virtual_batch_size": self.virtual_batch_size}


def norm_layer(kind: str, *, virtual_batch_size: int = 128, momentum: float = 0.99):
    """A factory for models.build_model(norm=...): 'standard' (Keras BN, per replica), 'ghost'
    (GhostBatchNormalization) or 'sync' (BN statistics all-reduced over replicas). `momentum` is
    Keras' (moving = momentum x moving + (1 - momentum) x batch): PyTorch's 0.1 is Keras' 0.9."""
    if kind == "standard":
        return functools.partial(keras.layers.BatchNormalization, momentum=momentum)
    if kind == "ghost":
        return functools.partial(GhostBatchNormalization, virtual_batch_size=virtual_batch_size,
                                 momentum=momentum)
    if kind == "sync":
        return functools.partial(keras.layers.BatchNormalization, synchronized=True,
                                 momentum=momentum)
    raise ValueError(f"unknown normalisation {kind!r}; choose standard, ghost or sync")
