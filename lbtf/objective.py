"""The training objective f(w) = mean loss over a dataset, as a function of the flat vector w of a
model's trainable weights: value, gradient and Hessian-vector products in one pass over the data.

Measurement code (sharpness, Hessian, landscape) builds on this and knows nothing of how the model
was trained. The model runs in inference mode: BN uses (and never updates) its moving statistics,
dropout is off; to measure with batch statistics instead (Keras 1's BN mode 2), pass the twin that
`lbtf.bn.measurement_model` builds. Calls leave the model's weights as they found them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from lbtf.distribute import on_each_replica

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def default_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Sparse categorical cross-entropy of softmax outputs (Keras uses the cached logits)."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


def clipped_cross_entropy(clip: float) -> LossFn:
    """Keras 1's cross-entropy: -log of the true class's probability clipped to [clip, 1 - clip].

    Keras 1 (Theano and TensorFlow backends) clipped probabilities with its fuzz factor 1e-7 before
    the logarithm, so one example's loss is at most -log(clip) (16.12 at 1e-7) and its gradient is
    zero wherever the clip is active.
    """
    if not 0 < clip < 0.5:
        raise ValueError(f"loss clip must lie in (0, 0.5), got {clip}; Keras 1 used 1e-7")

    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        p = tf.gather(y_pred, tf.cast(y_true, tf.int32), axis=-1, batch_dims=1)
        return -tf.math.log(tf.clip_by_value(p, clip, 1.0 - clip))

    return loss


def measurement_loss(clip: float = 0.0, *, from_logits: bool = False) -> LossFn:
    """The per-example loss of measurements: exact cross-entropy (clip 0) or Keras 1's clipped one,
    of a model's probabilities or (from_logits) of the softmax of its logits."""
    if not from_logits:
        return clipped_cross_entropy(clip) if clip else default_loss
    if clip:
        clipped = clipped_cross_entropy(clip)
        return lambda y_true, logits: clipped(y_true, tf.nn.softmax(logits))
    return lambda y_true, logits: keras.losses.sparse_categorical_crossentropy(
        y_true, logits, from_logits=True)


def flat_weights(model: keras.Model) -> np.ndarray:
    """The trainable weights in `model.trainable_variables` order, flattened, float64."""
    return np.concatenate([v.numpy().ravel() for v in model.trainable_variables]).astype(np.float64)


def set_flat_weights(model: keras.Model, w: np.ndarray) -> None:
    start = 0
    for v in model.trainable_variables:
        size = int(np.prod(v.shape))
        v.assign(np.asarray(w[start:start + size], np.float32).reshape(v.shape))
        start += size


@contextlib.contextmanager
def weights_restored(model: keras.Model):
    """Puts every variable of `model` (weights and BN statistics) back as it was on exit."""
    saved = [v.numpy() for v in model.variables]
    try:
        yield
    finally:
        for v, value in zip(model.variables, saved, strict=True):
            v.assign(value)


def subsample(x, y, num_examples: int | None, seed: int):
    """A seeded random subset of `num_examples` examples, or everything when None."""
    if num_examples is None or num_examples >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(x), num_examples, replace=False))
    return x[idx], y[idx]


class EvalSet:
    """A split cut into evaluation batches, as stacks of (x, y, mask) the evaluator loops over.

    pad=True: one stack, the last batch padded with masked zeros, so XLA sees one static shape.
    pad=False: whole batches, then the remainder as a smaller batch of its own: for networks whose
    output depends on the batch (BN with batch statistics), where padding would change it.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, pad: bool = True):
        n = len(x)
        b = max(1, min(batch_size, n))
        self.n = n
        self.batch_size = b
        if pad:
            nb = math.ceil(n / b)
            extra = nb * b - n
            x = np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(extra, y.dtype)])
            self.parts = [_stack(x, y, (np.arange(nb * b) < n).astype(np.float32), b)]
        else:
            full = n // b * b
            self.parts = [_stack(x[s], y[s], np.ones(len(y[s]), np.float32), size)
                          for s, size in ((slice(0, full), b), (slice(full, n), n - full)) if size]


def _stack(x: np.ndarray, y: np.ndarray, mask: np.ndarray, b: int) -> tuple[tf.Tensor, ...]:
    nb = len(x) // b
    return (tf.constant(x.reshape(nb, b, *x.shape[1:])), tf.constant(y.reshape(nb, b)),
            tf.constant(mask.reshape(nb, b)))


def _has_convolutions(layer) -> bool:
    conv = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D")
    return (type(layer).__name__ in conv
            or any(_has_convolutions(inner) for inner in getattr(layer, "layers", [])))


def use_xla(model, *, requested: bool = True, replicas: int = 1) -> bool:
    """Whether to compile `model`'s loops with XLA, decided per device type: when requested, on one
    replica, and not for a network with convolutions on a machine without a GPU. XLA's CPU
    convolutions measured 6x (C1) to 22x (ResNet-44) slower than TensorFlow's own kernels per
    training step at batch 1024 on 8x8 images (`bench/bench_train.py` prints the ratio); dense
    networks gain from XLA. On several replicas the step holds cross-replica collectives (the
    gradient sum, synchronized BN, ghost BN's ordered update) that lbtf does not compile; a study
    laid out as one single-replica process per GPU (--shard) keeps XLA."""
    if not requested or replicas != 1:
        return False
    return not (_has_convolutions(model) and not tf.config.list_logical_devices("GPU"))


def make_evaluator(model: keras.Model, jit_compile: bool, loss: LossFn | None = None, *,
                   strategy: tf.distribute.Strategy | None = None
                   ) -> Callable[[EvalSet], tuple[float, float]]:
    """Mean loss (`loss`, default cross-entropy) and accuracy of `model` in inference mode over an
    EvalSet; under a strategy of several replicas (the model built in its scope) replica r
    evaluates batches r, r + R, ... and the sums are all-reduced."""
    loss_fn = loss or default_loss
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        return _spread_evaluator(model, loss_fn, strategy)

    @tf.function(jit_compile=use_xla(model, requested=jit_compile))
    def sums(x, y, mask):
        return _batch_sums(model, loss_fn, x, y, mask)

    def evaluate(split: EvalSet) -> tuple[float, float]:
        parts = [sums(*part) for part in split.parts]
        return (sum(float(s) for s, _ in parts) / split.n,
                sum(float(c) for _, c in parts) / split.n)

    return evaluate


def _batch_sums(model: keras.Model, loss_fn: LossFn, x, y, mask) -> tuple[tf.Tensor, tf.Tensor]:
    """Summed loss and correct predictions over a stack of batches [k, b, ...]."""
    loss, correct = tf.constant(0.0), tf.constant(0.0)
    for i in tf.range(tf.shape(x)[0]):
        probs = model(x[i], training=False)
        loss += tf.reduce_sum(loss_fn(y[i], probs) * mask[i])
        hit = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32),
                               tf.cast(y[i], tf.int32)), tf.float32)
        correct += tf.reduce_sum(hit * mask[i])
    return loss, correct


def _spread_evaluator(model, loss_fn, strategy) -> Callable[[EvalSet], tuple[float, float]]:
    """make_evaluator on several replicas (no XLA: it is off there, see `use_xla`)."""
    replicas = strategy.num_replicas_in_sync

    @tf.function
    def sums(x, y, mask):
        per = strategy.run(lambda *a: _batch_sums(model, loss_fn, *a), args=(x, y, mask))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per]

    def spread(split: EvalSet) -> list:
        """The split's stacks dealt out over the replicas, made once per EvalSet and strategy."""
        cache = split.__dict__.setdefault("_spread", {})
        if id(strategy) not in cache:
            cache[id(strategy)] = (strategy, [tuple(
                on_each_replica(strategy, lambda ctx, t=t: t[ctx.replica_id_in_sync_group::replicas])
                for t in part) for part in split.parts])
        return cache[id(strategy)][1]

    def evaluate(split: EvalSet) -> tuple[float, float]:
        parts = [sums(*part) for part in spread(split)]
        return (sum(float(s) for s, _ in parts) / split.n,
                sum(float(c) for _, c in parts) / split.n)

    return evaluate


class Objective:
    """f(w), grad f(w) and H(w) v over (x, y), with w the flat trainable weights of `model`.

    The data is cut into `batch_size` chunks (the last one smaller) and every chunk's mean loss is
    weighted by its size, so any loss returning per-example or mean values gives the exact mean.
    Under a strategy with several replicas (the model built in its scope), chunk i goes to replica
    i mod R and the per-replica sums are added with an all-reduce; XLA is used on one replica only.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, *,
                 loss: LossFn | None = None, batch_size: int | None = None,
                 jit_compile: bool = True, strategy: tf.distribute.Strategy | None = None):
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        jit_compile = use_xla(model, requested=jit_compile,
                              replicas=self.strategy.num_replicas_in_sync)
        self.n = len(x)
        self.size = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        loss = loss or default_loss
        self._loss = lambda yt, yp: tf.reduce_mean(loss(yt, yp))
        b = min(batch_size or 4096, self.n)
        self.batch_size = b
        nb = self.n // b
        self._chunks = []
        if nb:
            self._chunks.append((x[:nb * b].reshape(nb, b, *x.shape[1:]),
                                 y[:nb * b].reshape(nb, b, *y.shape[1:])))
        if self.n > nb * b:
            self._chunks.append((x[nb * b:][None], y[nb * b:][None]))
        self._chunks = [(self._spread(xs), self._spread(ys)) for xs, ys in self._chunks]
        self._value_grad = tf.function(self._value_grad_sums, jit_compile=jit_compile)
        self._value = tf.function(self._value_sums, jit_compile=jit_compile)
        self._hvp = tf.function(self._hvp_sums, jit_compile=jit_compile)

    def _spread(self, stack: np.ndarray):
        """A stack of chunks as a tensor, or per replica: replica r gets chunks r, r + R, ..."""
        t = tf.constant(stack)
        replicas = self.strategy.num_replicas_in_sync
        if replicas == 1:
            return t
        return on_each_replica(self.strategy, lambda ctx: t[ctx.replica_id_in_sync_group::replicas])

    def _sum_over_replicas(self, value):
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    def _assign(self, w: tf.Tensor) -> None:
        start = 0
        for v in self.model.trainable_variables:
            size = int(np.prod(v.shape))
            v.assign(tf.reshape(w[start:start + size], v.shape))
            start += size

    def _flat(self, grads) -> tf.Tensor:
        return tf.concat([tf.reshape(g, [-1]) for g in grads], 0)

    def _chunk_loss(self, xb, yb) -> tf.Tensor:
        """Summed (not mean) loss of one chunk, so chunks of different sizes add up exactly."""
        count = tf.cast(tf.shape(xb)[0], tf.float32)
        return self._loss(yb, self.model(xb, training=False)) * count

    def _value_grad_sums(self, w, xs, ys):
        self._assign(w)
        total, grad = self.strategy.run(self._replica_value_grad, args=(xs, ys))
        return self._sum_over_replicas(total), self._sum_over_replicas(grad)

    def _replica_value_grad(self, xs, ys):
        total, grad = tf.constant(0.0), tf.zeros([self.size])
        for i in tf.range(tf.shape(xs)[0]):
            with tf.GradientTape() as tape:
                value = self._chunk_loss(xs[i], ys[i])
            total += value
            grad += self._flat(tape.gradient(value, self.model.trainable_variables))
        return total, grad

    def _value_sums(self, w, xs, ys):
        self._assign(w)
        return self._sum_over_replicas(self.strategy.run(self._replica_value, args=(xs, ys)))

    def _replica_value(self, xs, ys):
        total = tf.constant(0.0)
        for i in tf.range(tf.shape(xs)[0]):
            total += self._chunk_loss(xs[i], ys[i])
        return total

    def _hvp_sums(self, w, v, xs, ys):
        self._assign(w)
        return self._sum_over_replicas(self.strategy.run(self._replica_hvp, args=(v, xs, ys)))

    def _replica_hvp(self, v, xs, ys):
        hv = tf.zeros([self.size])
        for i in tf.range(tf.shape(xs)[0]):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = self._chunk_loss(xs[i], ys[i])
                g = self._flat(inner.gradient(value, self.model.trainable_variables))
                gv = tf.reduce_sum(g * v)  # double backprop: d(g . v)/dw = H v
            hv += self._flat(outer.gradient(gv, self.model.trainable_variables))
        return hv

    def value_and_gradient(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss and its gradient at flat weights w (float64 out)."""
        wt = tf.constant(w, tf.float32)
        with weights_restored(self.model):
            parts = [self._value_grad(wt, xs, ys) for xs, ys in self._chunks]
        total = sum(float(t) for t, _ in parts)
        grad = sum(g.numpy().astype(np.float64) for _, g in parts)
        return total / self.n, grad / self.n

    def value(self, w: np.ndarray) -> float:
        """Mean loss at flat weights w, by forward passes alone (a third of value_and_gradient's
        work): what the sampled measures need."""
        wt = tf.constant(w, tf.float32)
        with weights_restored(self.model):
            return sum(float(self._value(wt, xs, ys)) for xs, ys in self._chunks) / self.n

    def hessian_vector_product(self, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        """H(w) v of the mean loss (float64 out)."""
        wt, vt = tf.constant(w, tf.float32), tf.constant(v, tf.float32)
        with weights_restored(self.model):
            parts = [self._hvp(wt, vt, xs, ys) for xs, ys in self._chunks]
        return sum(p.numpy().astype(np.float64) for p in parts) / self.n
