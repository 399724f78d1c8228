"""measure_model on classifiers written here, not by lbtf: Sequential, functional and subclassed;
softmax or logits; BN, LayerNorm, GroupNorm or no normalisation; class ids, one-hot labels or a
tf.data.Dataset. Each f(x) is checked against a cross-entropy computed in NumPy from the model's
own predictions, and each bad input against one clear ValueError."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from lbtf.measurement import MeasureSettings, measure_model

QUICK = MeasureSettings(epsilons=(1e-3,), subspace_dim=0, maxiter=1, jit_compile=False,
                        bn_modes=("moving",))
CLIP = 1e-7  # MeasureSettings' default loss clip (Keras 1's)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (d.images[:300] / 16.0).astype("float32")[..., None]
    return x, d.target[:300].astype("int64")


def numpy_cross_entropy(outputs: np.ndarray, y: np.ndarray, *, logits: bool) -> float:
    if logits:
        z = outputs - outputs.max(1, keepdims=True)
        outputs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    p = np.clip(outputs[np.arange(len(y)), y], CLIP, 1 - CLIP)
    return float(-np.log(p).mean())


def sequential_softmax(norm):
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(32), norm(), keras.layers.ReLU(),
                             keras.layers.Dense(10, activation="softmax")])


def functional_logits(norm):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = keras.layers.ReLU()(norm()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


class Subclassed(keras.Model):
    def __init__(self, logits: bool = True):
        super().__init__()
        self.flat, self.hidden = keras.layers.Flatten(), keras.layers.Dense(24)
        self.bn = keras.layers.BatchNormalization()
        self.out = keras.layers.Dense(10, activation=None if logits else "softmax")

    def call(self, x, training=False):
        return self.out(keras.activations.relu(self.bn(self.hidden(self.flat(x)),
                                                       training=training)))


NORMS = {"batchnorm": keras.layers.BatchNormalization, "layernorm": keras.layers.LayerNormalization,
         "groupnorm": lambda: keras.layers.GroupNormalization(groups=4),
         "none": lambda: keras.layers.Identity()}


def trained(model, x, y, epochs=3):
    """A few epochs of Keras' own fit, so that BN statistics and weights are not at their start."""
    keras.utils.set_random_seed(1)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=model.output_is_logits))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


def build(kind: str, norm: str):
    keras.utils.set_random_seed(0)
    if kind == "sequential":
        model, logits = sequential_softmax(NORMS[norm]), False
    elif kind == "functional":
        model, logits = functional_logits(NORMS[norm]), True
    else:
        model, logits = Subclassed(), True
        model(np.zeros((1, 8, 8, 1), "float32"))
    model.output_is_logits = logits
    return model


@pytest.mark.parametrize("kind,norm", [("sequential", n) for n in NORMS]
                         + [("functional", n) for n in NORMS] + [("subclassed", "batchnorm")])
def test_f_is_the_models_own_cross_entropy(kind, norm, digits):
    x, y = digits
    model = trained(build(kind, norm), x, y)
    expected = numpy_cross_entropy(model.predict(x, verbose=0), y, logits=model.output_is_logits)
    table = measure_model(model, x, y, QUICK, reestimate_bn=False, log=None)
    assert list(table.measure) == ["keskar"]  # the name asked for
    assert table.f_x.iloc[0] == pytest.approx(expected, rel=1e-4)
    # One-hot labels and a dataset (batched or not) are the same data.
    onehot = measure_model(model, x, np.eye(10)[y], QUICK, reestimate_bn=False, log=None)
    batched = measure_model(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(64), None,
                            QUICK, reestimate_bn=False, log=None)
    single = measure_model(model, tf.data.Dataset.from_tensor_slices((x, y)), None, QUICK,
                           reestimate_bn=False, log=None)
    for other in (onehot, batched, single):
        assert other.f_x.iloc[0] == pytest.approx(expected, rel=1e-4)


def test_logits_named_or_detected_give_one_value_and_softmax_outputs_are_not_logits(digits):
    x, y = digits
    model = trained(build("functional", "none"), x, y)
    detected = measure_model(model, x, y, QUICK, log=None).f_x.iloc[0]
    named = measure_model(model, x, y, QUICK, from_logits=True, log=None).f_x.iloc[0]
    assert detected == named
    with pytest.raises(ValueError, match="pass from_logits=True"):
        measure_model(model, x, y, QUICK, from_logits=False, log=None)


def test_subclassed_bn_statistics_are_the_population_ones_of_the_same_functional_net(digits):
    """Re-estimation on a subclassed model (no graph to clone) equals lbtf's population pass on a
    functional model holding the same weights: both give f at the population statistics."""
    x, y = digits
    sub = trained(build("subclassed", "batchnorm"), x, y)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(24)(keras.layers.Flatten()(inputs))
    h = keras.activations.relu(keras.layers.BatchNormalization()(h))
    twin = keras.Model(inputs, keras.layers.Dense(10)(h))
    for a, b in zip(twin.weights, [sub.hidden.kernel, sub.hidden.bias, *sub.bn.weights,
                                   sub.out.kernel, sub.out.bias], strict=True):
        a.assign(b)
    ours = measure_model(sub, x, y, QUICK, bn_examples=0, log=None).f_x.iloc[0]
    theirs = measure_model(twin, x, y, QUICK, bn_examples=0, log=None).f_x.iloc[0]
    assert ours == pytest.approx(theirs, rel=1e-4)
    # ... and differs from f at the statistics the model holds, which it keeps afterwards.
    held = numpy_cross_entropy(sub.predict(x, verbose=0), y, logits=True)
    assert abs(ours - held) > 1e-3
    assert numpy_cross_entropy(sub.predict(x, verbose=0), y, logits=True) == held


def test_repeated_calls_compile_nothing_again(digits):
    x, y = digits
    model = trained(build("sequential", "batchnorm"), x, y, epochs=1)
    settings = dataclasses.replace(QUICK, bn_modes=("moving", "batch"))
    first = measure_model(model, x, y, settings, log=None)
    measurer, _ = model._lbtf_measurers[next(iter(model._lbtf_measurers))]
    traces = {m: o._value_grad.experimental_get_tracing_count()
              for m, o in measurer.objectives.items()}
    second = measure_model(model, x, y, settings, log=None)
    assert model._lbtf_measurers[next(iter(model._lbtf_measurers))][0] is measurer
    assert traces == {m: o._value_grad.experimental_get_tracing_count()
                      for m, o in measurer.objectives.items()}
    np.testing.assert_array_equal(first.value, second.value)


def bad_inputs(x, y):
    model = trained(build("sequential", "none"), x, y, epochs=1)
    sigmoid = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10, activation="sigmoid")])
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])
    sub = build("subclassed", "batchnorm")
    infinite = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    return {
        "length": (lambda: measure_model(model, x, y[:-1], QUICK), "299"),
        "unbuilt": (lambda: measure_model(unbuilt, x, y, QUICK), "no weights yet"),
        "sigmoid": (lambda: measure_model(sigmoid, x, y, QUICK), "do not sum to 1"),
        "infinite": (lambda: measure_model(model, infinite, None, QUICK), "infinite"),
        "range": (lambda: measure_model(model, x, y + 5, QUICK), "has 10 outputs"),
        "soft": (lambda: measure_model(model, x, np.full((300, 10), 0.1), QUICK), "soft labels"),
        "no labels": (lambda: measure_model(model, x, None, QUICK), "labels y are missing"),
        "batch mode": (lambda: measure_model(sub, x, y, dataclasses.replace(
            QUICK, bn_modes=("moving", "batch")), log=None), "bn_modes=\\('moving',\\)"),
        "measure": (lambda: MeasureSettings(measures=("foo",)), "keskar, adaptive"),
        "epsilons": (lambda: MeasureSettings(epsilons=1e-3), "takes a tuple"),
        "negative": (lambda: MeasureSettings(epsilons=(-1.0,)), "positive"),
        "bn": (lambda: MeasureSettings(bn_modes=("train",)), "moving, batch"),
    }


def test_each_bad_input_is_one_clear_value_error(digits):
    for name, (call, match) in bad_inputs(*digits).items():
        with pytest.raises(ValueError, match=match) as e:
            call()
        assert "\n" not in str(e.value), name
