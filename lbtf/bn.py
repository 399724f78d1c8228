"""Batch normalisation outside training: which statistics a measurement normalises with.

- `BatchNormEstimator` re-estimates the moving statistics from training data (population
  statistics), for evaluation during training and at the points of a loss-landscape path.
- `measurement_model(model, "batch")` builds a twin of a model whose BN layers always normalise
  with the statistics of the batch they are given, even in inference, and whose dropout is off:
  Keras 1's `BatchNormalization(mode=2)`, which Keskar et al.'s released code used. Measured this
  way, f re-normalises at every evaluation, so shifts and per-channel scalings of a pre-BN layer
  cancel; with the moving statistics ("moving") they do not. The twin has no moving statistics,
  so measuring with it changes none.

Measurement code takes the twin like any model: it holds the same trainable weights in the same
order (`flat_weights` of the original is a point of the twin).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from lbtf.choices import MEASURE_BN
from lbtf.objective import use_xla


def bn_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer with moving statistics (Keras BatchNormalization and lbtf's ghost BN)."""
    found = []
    for lay in model.layers:
        if hasattr(lay, "moving_mean") and hasattr(lay, "moving_variance"):
            found.append(lay)
        elif isinstance(lay, keras.Model):
            found += bn_layers(lay)
    return found


@keras.saving.register_keras_serializable(package="lbtf")
class BatchStatisticsNormalization(keras.layers.Layer):
    """BN that normalises every call with the mean and (biased) variance of its own input over all
    axes but `axis`, training or not (Keras 1's mode 2). Holds gamma and beta, created in Keras
    BatchNormalization's order, and no moving statistics."""

    def __init__(self, axis: int | list[int] = -1, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.axis = list(axis) if isinstance(axis, list | tuple) else [axis]
        self.epsilon, self.center, self.scale = float(epsilon), center, scale

    def build(self, input_shape):
        rank = len(input_shape)
        self._channels = sorted(a % rank for a in self.axis)
        self._reduce = [a for a in range(rank) if a not in self._channels]
        shape = [input_shape[a] for a in self._channels]
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma") \
            if self.scale else None
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta") \
            if self.center else None

    def _broadcast(self, v, rank: int):
        return ops.reshape(v, [v.shape[self._channels.index(a)] if a in self._channels else 1
                               for a in range(rank)])

    def call(self, inputs, training=None, mask=None):  # same statistics in training and inference
        x = ops.cast(inputs, "float32")
        mean, var = ops.moments(x, axes=self._reduce, keepdims=True)
        out = (x - mean) * ops.rsqrt(var + self.epsilon)
        rank = len(x.shape)
        if self.scale:
            out = out * self._broadcast(ops.cast(self.gamma, "float32"), rank)
        if self.center:
            out = out + self._broadcast(ops.cast(self.beta, "float32"), rank)
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


def _batch_statistics_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer of the batch-statistics twin standing for `layer`."""
    if isinstance(layer, keras.layers.BatchNormalization):  # also lbtf's ghost BN
        return BatchStatisticsNormalization(axis=layer.axis, epsilon=layer.epsilon,
                                            center=layer.center, scale=layer.scale,
                                            name=layer.name)
    if isinstance(layer, keras.layers.Dropout):
        return keras.layers.Identity(name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def measurement_model(model: keras.Model, bn: str) -> keras.Model:
    """The model to measure with: `model` itself ("moving": inference mode, BN moving statistics)
    or its batch-statistics twin ("batch", see the module doc). Build it in the strategy scope the
    measurement runs under."""
    if bn == "moving":
        return model
    if bn != "batch":
        raise ValueError(f"unknown BN measurement mode {bn!r}; choose one of {', '.join(MEASURE_BN)}")
    try:
        twin = keras.models.clone_model(model, clone_function=_batch_statistics_layer)
    except ValueError as e:  # subclassed models cannot be cloned layer by layer
        raise ValueError(f"measuring with batch statistics needs a functional or Sequential "
                         f"model ({str(e).splitlines()[0][:120]}); measure this one with moving "
                         "statistics only: MeasureSettings(bn_modes=('moving',)), or "
                         "--bn_measure=moving") from None
    ours = [tuple(v.shape) for v in model.trainable_variables]
    theirs = [tuple(v.shape) for v in twin.trainable_variables]
    if ours != theirs:
        raise ValueError("the batch-statistics twin does not hold the model's trainable weights "
                         "in the same order; measure this model with bn='moving'")
    for t, v in zip(twin.trainable_variables, model.trainable_variables, strict=True):
        t.assign(v)
    return twin


def _as_list(outputs) -> list:
    """A functional model with one output returns a tensor, not a list."""
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]


class BatchNormEstimator:
    """Re-estimates every BN layer's moving statistics of `model` from data `x` (see module doc).

    The data is cut into batches of `batch_size` (the last one smaller); each batch's statistics
    are weighted by its size. The BN layers' inputs come from a probe of the model's
    batch-statistics twin (`measurement_model(model, "batch")`: dropout off, each BN layer
    normalising the chunk with its own statistics), as `PopulationPass` does for the whole set, so
    both paths estimate the same statistics. A model that cannot be cloned (subclassed) is probed
    itself in training mode, where dropout is on.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, *, batch_size: int = 2048,
                 jit_compile: bool = True):
        self.layers = bn_layers(model)
        self.n = len(x)
        b = max(1, min(batch_size, self.n))
        self._batches = [tf.constant(x[i:i + b]) for i in range(0, self.n, b)]
        if self.layers:
            probe, training, self._pairs = self._probe(model)
            axes = [[a for a in range(len(lay.input.shape)) if a not in self._channel_axes(lay)]
                    for lay in self.layers]
            self._moments = tf.function(
                lambda xb: [tf.nn.moments(h, axes=ax) for h, ax in
                            zip(_as_list(probe(xb, training=training)), axes, strict=True)],
                jit_compile=use_xla(model, requested=jit_compile))

    def _probe(self, model: keras.Model) -> tuple[keras.Model, bool, list]:
        """(probe, its training flag, (twin weight, model weight) pairs to copy before a pass)."""
        try:
            twin = measurement_model(model, "batch")
            twin_bn = {lay.name: lay for lay in twin.layers
                       if isinstance(lay, BatchStatisticsNormalization)}
            inputs = [twin_bn[lay.name].input for lay in self.layers]
        except (ValueError, KeyError, AttributeError, TypeError):  # nested or subclassed models
            return keras.Model(model.inputs, [lay.input for lay in self.layers]), True, []
        pairs = list(zip(twin.trainable_variables, model.trainable_variables, strict=True))
        return keras.Model(twin.inputs, inputs), False, pairs

    @staticmethod
    def _channel_axes(layer) -> set[int]:
        rank = len(layer.input.shape)
        axis = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
        return {a % rank for a in axis}

    def __call__(self) -> None:
        if not self.layers:
            return
        for t, v in self._pairs:  # the twin holds a copy of the weights: bring it up to date
            t.assign(v)
        means = [0.0] * len(self.layers)
        variances = [0.0] * len(self.layers)
        for xb in self._batches:
            w = int(xb.shape[0]) / self.n
            for i, (m, v) in enumerate(self._moments(xb)):
                means[i] = means[i] + w * m.numpy().astype(np.float64)
                variances[i] = variances[i] + w * v.numpy().astype(np.float64)
        assign_statistics(self.layers, means, variances)


def estimate_by_calls(model: keras.Model, x: np.ndarray, *, batch_size: int) -> None:
    """BatchNormEstimator's statistics for a model that cannot be cloned or probed (subclassed):
    for one eager inference pass over chunks of `x`, each BN layer's call is replaced by one that
    normalises with, and records, the mean and variance of its own input; the chunks' statistics,
    weighted by size, become the moving statistics."""
    layers = bn_layers(model)
    n, b = len(x), max(1, min(batch_size, len(x)))
    sums = {id(lay): [0.0, 0.0] for lay in layers}

    def batch_call(lay):
        def call(inputs, training=None, mask=None):
            h = tf.cast(inputs, tf.float32)
            axis = {a % h.shape.rank for a in (lay.axis if isinstance(lay.axis, list | tuple)
                                               else [lay.axis])}
            mean, var = tf.nn.moments(h, [a for a in range(h.shape.rank) if a not in axis],
                                      keepdims=True)
            w = int(h.shape[0]) / n
            sums[id(lay)][0] += w * mean.numpy().astype(np.float64)
            sums[id(lay)][1] += w * var.numpy().astype(np.float64)
            shape = mean.shape
            gamma = tf.reshape(lay.gamma, shape) if lay.gamma is not None else None
            beta = tf.reshape(lay.beta, shape) if lay.beta is not None else None
            out = tf.nn.batch_normalization(h, mean, var, beta, gamma, lay.epsilon)
            return tf.cast(out, inputs.dtype)
        return call

    originals = {id(lay): lay.call for lay in layers}
    try:
        for lay in layers:
            lay.call = batch_call(lay)
        for i in range(0, n, b):
            model(tf.constant(x[i:i + b]), training=False)
    finally:
        for lay in layers:
            lay.call = originals[id(lay)]
    assign_statistics(layers, *zip(*(sums[id(lay)] for lay in layers), strict=True))


def assign_statistics(layers: list, means: list, variances: list) -> None:
    """Sets each BN layer's moving mean and variance (any shape holding the channel values)."""
    for lay, m, v in zip(layers, means, variances, strict=True):
        lay.moving_mean.assign(np.reshape(m, lay.moving_mean.shape))
        lay.moving_variance.assign(np.reshape(v, lay.moving_variance.shape))


def estimation_subset(x: np.ndarray, examples: int, seed: int) -> np.ndarray:
    """The seeded rows BN statistics are re-estimated from when the whole set does not fit one
    pass: `examples` of them in their original order (all when 0 or at least len(x)). The
    trainer (--bn_eval_examples) and `lbtf.measurement.reestimate` draw the same rows."""
    if examples and examples < len(x):
        keep = np.random.default_rng(seed).permutation(len(x))[:examples]
        return x[np.sort(keep)]
    return x


# Above this estimate of activation memory, `population_pass` declines and the trainer falls back
# to `BatchNormEstimator` over chunks plus a separate evaluation pass.
POPULATION_PASS_BYTES = 4 * 2**30


class PopulationPass:
    """Population BN statistics and inference-mode training metrics from one forward pass.

    The whole of (x, y) goes through the model's batch-statistics twin as a single batch, so every
    BN layer normalises with the mean and variance of the entire set, its inputs computed with
    the layers below normalised the same way: exactly the population statistics inference uses.
    Assigned to the model's moving statistics, they make the twin's outputs the model's
    inference outputs, so the same pass gives the training loss and accuracy that would otherwise
    need a second pass (a per-epoch saving of one forward pass over the training set).
    """

    def __init__(self, model: keras.Model, x, y, *, loss, jit_compile: bool):
        self.layers = bn_layers(model)
        twin = measurement_model(model, "batch")
        twin_bn = {lay.name: lay for lay in twin.layers if isinstance(lay, BatchStatisticsNormalization)}
        if sorted(twin_bn) != sorted(lay.name for lay in self.layers):
            raise ValueError("the model's BN layers are not all at its top level")
        inputs = [twin_bn[lay.name] for lay in self.layers]
        probe = keras.Model(twin.inputs, [lay.input for lay in inputs] + [twin.output])
        axes = [lay._reduce for lay in inputs]
        pairs = list(zip(twin.trainable_variables, model.trainable_variables, strict=True))
        xs, ys = tf.convert_to_tensor(x), tf.convert_to_tensor(y)  # a caller's tensors: no copy

        def run():
            for t, v in pairs:  # the twin holds a copy of the weights: bring it up to date
                t.assign(v)
            *hidden, probs = probe(xs, training=False)
            moments = [tf.nn.moments(h, axes=ax) for h, ax in zip(hidden, axes, strict=True)]
            hit = tf.equal(tf.argmax(probs, -1, output_type=tf.int32), tf.cast(ys, tf.int32))
            return moments, tf.reduce_mean(loss(ys, probs)), tf.reduce_mean(tf.cast(hit, tf.float32))

        self._run = tf.function(run, jit_compile=use_xla(model, requested=jit_compile))

    def __call__(self) -> tuple[float, float]:
        """Assigns the population statistics; returns the set's mean loss and accuracy."""
        moments, loss, acc = self._run()
        assign_statistics(self.layers, *zip(*moments, strict=True))
        return float(loss), float(acc)


def activation_bytes(model: keras.Model, num_examples: int) -> int:
    """A rough bound on the float32 activations of `model` over `num_examples` as one batch."""
    per_example = sum(int(np.prod([d or 1 for d in lay.output.shape[1:]])) for lay in model.layers
                      if not isinstance(lay, keras.layers.InputLayer))
    return 4 * per_example * num_examples * 2


def population_pass(model: keras.Model, x, y, *, loss,
                    jit_compile: bool) -> PopulationPass | None:
    """A PopulationPass over (x, y) (arrays or tensors), or None when the model has no BN layer,
    its BN layers are nested or not cloneable, or the activations of x as one batch would exceed
    POPULATION_PASS_BYTES."""
    try:
        if not bn_layers(model) or activation_bytes(model, len(x)) > POPULATION_PASS_BYTES:
            return None
        return PopulationPass(model, x, y, loss=loss, jit_compile=jit_compile)
    except (ValueError, AttributeError, TypeError):  # e.g. nested or multi-output layers
        return None


def rescale_into_bn(model: keras.Model, a: float) -> list[str]:
    """Multiplies the kernel and bias of every layer whose output feeds a BN layer by `a` > 0 and
    that BN layer's moving mean by a and moving variance by a^2; returns the rescaled layers.

    Under batch statistics BN the network's function is unchanged (up to BN's epsilon, which the
    variance now meets a^2 times larger or smaller): the symmetry that makes sharpness measured in
    a fixed box partly a measure of weight norms (Dinh et al. 2017). Under moving statistics the
    scaled statistics keep it too, up to the same epsilon. For lbtf's networks, where every such
    layer feeds its BN layer alone."""
    if a <= 0:
        raise ValueError(f"the rescaling factor must be positive, not {a}")
    done = []
    for bn in bn_layers(model):
        producer = bn.input._keras_history.operation
        if not hasattr(producer, "kernel"):
            continue
        for w in (producer.kernel, getattr(producer, "bias", None)):
            if w is not None:
                w.assign(w * a)
        bn.moving_mean.assign(bn.moving_mean * a)
        bn.moving_variance.assign(bn.moving_variance * a**2)
        done.append(producer.name)
    return done

