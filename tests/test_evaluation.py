"""lbtf.evaluation: whole-split loss and accuracy against NumPy, and bn_eval='recompute' setting
the BN statistics to the training set's own (population) mean and variance before measuring."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from nets import DATA, mlp

from lbtf.distribute import place
from lbtf.evaluation import Evaluator


def evaluator(model, bn_eval: str) -> Evaluator:
    strategy = tf.distribute.get_strategy()
    return Evaluator(model, DATA, bn_eval=bn_eval, bn_eval_examples=0, eval_batch_size=50, seed=0,
                     strategy=strategy, x=place(strategy, DATA.x_train),
                     y=place(strategy, DATA.y_train), xla=False)


def bn_model() -> keras.Model:
    """Dense -> BN -> Dense, functional (the fused BN pass probes layer outputs), seeded."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.BatchNormalization()(hidden))
    return keras.Model(inputs, out)


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
    model = bn_model()
    bn = model.layers[2]
    ev = evaluator(model, "recompute")
    got = ev.measure()
    pre_bn = keras.Model(model.inputs, model.layers[1].output)(DATA.x_train).numpy().astype(np.float64)
    np.testing.assert_allclose(bn.moving_mean.numpy(), pre_bn.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), pre_bn.var(0), rtol=1e-3, atol=1e-5)
    loss, acc = numpy_metrics(model, DATA.x_train, DATA.y_train)
    assert got["train_loss"] == pytest.approx(loss, rel=1e-4) and got["train_acc"] == acc
    assert "population" in ev.source


def test_a_set_too_large_for_one_pass_is_estimated_as_measure_model_estimates_it(monkeypatch):
    """Without the fused pass, the trainer's chunked estimate from --bn_eval_examples rows and
    lbtf.measurement.reestimate from as many rows (same seed, same chunks) give the same
    statistics: the Python entry stores what a run's checkpoint holds."""
    import lbtf.bn
    from lbtf.measurement import MeasureSettings, reestimate

    monkeypatch.setattr(lbtf.bn, "POPULATION_PASS_BYTES", 0)  # never one pass
    stats = []
    for use_trainer in (True, False):
        model = bn_model()
        if use_trainer:
            strategy = tf.distribute.get_strategy()
            Evaluator(model, DATA, bn_eval="recompute", bn_eval_examples=100, eval_batch_size=50,
                      seed=7, strategy=strategy, x=place(strategy, DATA.x_train),
                      y=place(strategy, DATA.y_train), xla=False).measure()
        else:
            reestimate(model, DATA.x_train, DATA.y_train, examples=100,
                       settings=MeasureSettings(seed=7, eval_batch_size=50, jit_compile=False))
        stats.append([v.numpy() for v in model.non_trainable_variables])
    for a, b in zip(*stats, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_an_unknown_bn_eval_is_refused():
    with pytest.raises(ValueError, match="bn_eval must be"):
        evaluator(mlp(), "median")
