"""Remedies: ghost BN against NumPy, scaling rules, regime adaptation, the proximal term, FGSM,
a SAM step computed by hand, the diffusion fit and Appendix C's model."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from lbtf import remedies
from lbtf.data import Dataset
from lbtf.remedies import Remedies
from lbtf.train import TrainConfig, Trainer

RNG = np.random.default_rng(0)


def test_learning_rate_scaling_and_regime_adaptation():
    assert remedies.scaled_learning_rate(1e-3, 1024, reference=256, rule="sqrt") == pytest.approx(2e-3)
    assert remedies.scaled_learning_rate(1e-3, 1024, reference=256, rule="linear") == pytest.approx(4e-3)
    assert remedies.scaled_learning_rate(1e-3, 1024, reference=256, rule="none") == 1e-3
    assert remedies.adapted_epochs(10, 1024, 256) == 40
    assert remedies.adapted_epochs(10, 384, 256) == 15
    assert remedies.adapted_milestones([30, 60], 1024, 256) == [120, 240]


def test_proximal_term_and_its_gradient():
    w = [tf.Variable(RNG.normal(size=(3, 2))), tf.Variable(RNG.normal(size=2))]
    anchors = [tf.Variable(RNG.normal(size=(3, 2))), tf.Variable(RNG.normal(size=2))]
    with tf.GradientTape() as tape:
        value = remedies.proximal_term(w, anchors, 1e-3)
    grads = tape.gradient(value, w)
    flat = np.concatenate([(a.numpy() - b.numpy()).ravel() for a, b in zip(w, anchors, strict=True)])
    assert float(value) == pytest.approx(0.5e-3 * flat @ flat)
    for g, a, b in zip(grads, w, anchors, strict=True):
        np.testing.assert_allclose(g, 1e-3 * (a.numpy() - b.numpy()), rtol=1e-6)


def test_fgsm_moves_each_input_by_eps_up_the_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    x = tf.constant(RNG.normal(size=(8, 5)).astype(np.float32))
    y = tf.constant(RNG.integers(0, 3, size=8))
    loss = lambda xb: tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(xb)))  # noqa: E731
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(x)
    gx = tape.gradient(value, x)
    adv = remedies.fgsm_examples(x, gx, 0.05)
    np.testing.assert_allclose(np.abs(adv - x), 0.05, rtol=1e-5)  # max-norm step of size eps
    np.testing.assert_array_equal(np.sign(adv - x), np.sign(gx))  # in the gradient's sign
    assert float(loss(adv)) > float(value)


def test_label_smoothing_matches_the_smoothed_targets_and_reaches_the_trainer():
    probs = RNG.dirichlet(np.ones(4), size=6).astype(np.float32)
    y = RNG.integers(0, 4, size=6)
    s = 0.1
    # -sum_k q_k log p_k with q = (1 - s) one-hot + s / K, written out per example.
    expected = [-((1 - s) * np.log(p[t]) + s / 4 * np.log(p).sum()) for p, t in zip(probs, y, strict=True)]
    got = remedies.smoothed_cross_entropy(tf.constant(y), tf.constant(probs), s)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The trainer's loss on a batch is the mean of the smoothed losses of its examples.
    data = Dataset("tiny", RNG.normal(size=(16, 5)).astype(np.float32),
                   RNG.integers(0, 3, 16).astype(np.int32),
                   RNG.normal(size=(4, 5)).astype(np.float32),
                   RNG.integers(0, 3, 4).astype(np.int32), 3)

    def build():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])

    trainer = Trainer(build, data, TrainConfig(batch_size=16, bn_eval="moving",
                                               remedies=Remedies(label_smoothing=s)))
    p = trainer.model(data.x_train).numpy().astype(np.float64)
    manual = np.mean([-((1 - s) * np.log(q[t]) + s / 3 * np.log(q).sum())
                      for q, t in zip(p, data.y_train, strict=True)])
    assert float(trainer.step.loss(tf.constant(data.x_train), tf.constant(data.y_train))) == (
        pytest.approx(manual, rel=1e-5))


def test_sam_perturbation_on_a_quadratic():
    a = np.diag([1.0, 4.0])
    w = np.array([1.0, 1.0])
    g = a @ w
    (e,) = remedies.sam_perturbation([tf.constant(g)], 0.1)
    np.testing.assert_allclose(e, 0.1 * g / np.linalg.norm(g))
    sam_grad = a @ (w + e.numpy())  # SAM descends along the gradient at w + e
    np.testing.assert_allclose(sam_grad, [1 + 0.1 / np.sqrt(17), 4 + 1.6 / np.sqrt(17)])


def _softmax_grad(x, y, w, b):
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return x.T @ p / len(y), p.mean(0)


def test_one_sam_training_step_matches_a_hand_computed_step():
    """Full-batch step of the trainer with SAM on a linear softmax model, against NumPy: gradient
    g at w, e = rho g / ||g||, gradient g' at w + e, then Adam's first step w - lr g'/(|g'| + eps')."""
    x = RNG.normal(size=(32, 4)).astype(np.float32)
    y = RNG.integers(0, 3, size=32).astype(np.int32)
    data = Dataset("toy", x, y, x, y, 3)

    def build():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))

    trainer = Trainer(build, data, TrainConfig(batch_size=32, learning_rate=0.01,
                                               remedies=Remedies(sam_rho=0.3)))
    w0, b0 = (v.numpy().astype(np.float64) for v in trainer.model.trainable_variables)
    trainer.train_epoch(np.random.default_rng(0))
    gw, gb = _softmax_grad(x.astype(np.float64), y, w0, b0)
    scale = 0.3 / np.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2))
    gw2, gb2 = _softmax_grad(x.astype(np.float64), y, w0 + scale * gw, b0 + scale * gb)
    eps = 1e-7 / np.sqrt(1 - 0.999)  # Adam's first step: lr g / (|g| + eps / sqrt(1 - beta2))
    w1, b1 = (v.numpy() for v in trainer.model.trainable_variables)
    np.testing.assert_allclose(w1, w0 - 0.01 * gw2 / (np.abs(gw2) + eps), atol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.01 * gb2 / (np.abs(gb2) + eps), atol=1e-6)


def test_diffusion_fit_and_recording():
    t = np.array([10, 100, 1000, 10000])
    fit = remedies.diffusion_fit(t, 2.0 * np.log(t) + 1.0)
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0)
    x = RNG.normal(size=(40, 4)).astype(np.float32)
    y = RNG.integers(0, 3, size=40).astype(np.int32)

    def build():
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))

    trainer = Trainer(build, Dataset("toy", x, y, x, y, 3),
                      TrainConfig(batch_size=8,
                                  remedies=Remedies(diffusion_every=2, clip_norm=5.0)))
    w0 = [v.numpy() for v in trainer.model.trainable_variables]
    trainer.train_epoch(np.random.default_rng(0))
    assert [s for s, _ in trainer.diffusion] == [2, 4, 5]  # 5 steps, recorded every 2 and at the end
    last = np.sqrt(sum(np.sum((v.numpy() - a) ** 2)
                       for v, a in zip(trainer.model.trainable_variables, w0, strict=True)))
    assert trainer.diffusion[-1][1] == pytest.approx(last, rel=1e-5)


def test_sam_updates_bn_statistics_once_per_step():
    """The moving statistics after a SAM step are those of a plain step: the second (perturbed)
    pass leaves them alone."""
    from lbtf.models import build_model

    x = RNG.normal(size=(32, 6)).astype(np.float32)
    y = RNG.integers(0, 3, size=32).astype(np.int32)
    data = Dataset("toy", x, y, x, y, 3)
    stats = []
    for rho in (0.0, 0.5):
        def build():
            keras.utils.set_random_seed(2)
            return build_model("F1", input_shape=(6,), num_classes=3)
        trainer = Trainer(build, data, TrainConfig(batch_size=32, remedies=Remedies(sam_rho=rho)))
        trainer.train_epoch(np.random.default_rng(0))
        stats.append([v.numpy() for v in trainer.model.non_trainable_variables
                      if "moving_" in v.path])
    for a, b in zip(*stats, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(stats[0][1], 1.0)  # the statistics did move
