"""lbtf.evaluation: whole-split loss and accuracy against NumPy, and bn_eval='recompute' setting
the BN statistics to the training set's own (population) mean and variance before measuring."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from nets import DATA, mlp

from lbtf.distribute import place
from lbtf.evaluation import Evaluator, _subset


def evaluator(model, bn_eval: str) -> Evaluator:
    strategy = tf.distribute.get_strategy()
    return Evaluator(model, DATA, bn_eval=bn_eval, bn_eval_examples=0, eval_batch_size=50, seed=0,
                     strategy=strategy, x=place(strategy, DATA.x_train),
                     y=place(strategy, DATA.y_train), xla=False)


def numpy_metrics(model, x, y) -> tuple[float, float]:
    p = model(x, training=False).numpy().astype(np.float64)
    return float(-np.mean(np.log(p[np.arange(len(y)), y]))), float(np.mean(p.argmax(1) == y))


def test_measure_is_the_mean_over_each_whole_split():
    model = mlp()
    got = evaluator(model, "moving").measure()
    for split, x, y in (("train", DATA.x_train, DATA.y_train), ("test", DATA.x_test, DATA.y_test)):
        loss, acc = numpy_metrics(model, x, y)
        assert got[f"{split}_loss"] == pytest.approx(loss, rel=1e-5)
        assert got[f"{split}_acc"] == pytest.approx(acc)


def test_recompute_sets_bn_to_the_training_set_statistics():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(bn(hidden)))
    ev = evaluator(model, "recompute")
    got = ev.measure()
    pre_bn = keras.Model(inputs, hidden)(DATA.x_train).numpy().astype(np.float64)
    np.testing.assert_allclose(bn.moving_mean.numpy(), pre_bn.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), pre_bn.var(0), rtol=1e-3, atol=1e-5)
    loss, acc = numpy_metrics(model, DATA.x_train, DATA.y_train)
    assert got["train_loss"] == pytest.approx(loss, rel=1e-4) and got["train_acc"] == acc
    assert "population" in ev.source


def test_subset_is_seeded_and_keeps_the_original_order():
    x = np.arange(100)
    a, b = _subset(x, 10, seed=3), _subset(x, 10, seed=3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 10
    assert not np.array_equal(a, _subset(x, 10, seed=4))
    assert len(_subset(x, 0, seed=3)) == 100


def test_an_unknown_bn_eval_is_refused():
    with pytest.raises(ValueError, match="bn_eval must be"):
        evaluator(mlp(), "median")
