"""The measured function f (lbtf.objective): gradients, inference mode, subsets, Keras 1's
clipped loss, padded evaluation."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from nets import small_data, small_net

from lbtf.objective import EvalSet, Objective, flat_weights, make_evaluator, use_xla
from lbtf.sharpness import keskar_sharpness


def test_objective_matches_finite_differences():
    model = small_net()
    x, y = small_data()
    obj = Objective(model, x, y, batch_size=16)  # 40 = 2 x 16 + 8: chunks of unequal size
    w = flat_weights(model)
    f, g = obj.value_and_gradient(w)
    probs = model(x, training=False).numpy()
    assert f == pytest.approx(-np.mean(np.log(probs[np.arange(40), y])), rel=1e-5)
    d = np.random.default_rng(0).normal(size=w.shape)
    h = 1e-3
    fd = (obj.value_and_gradient(w + h * d)[0] - obj.value_and_gradient(w - h * d)[0]) / (2 * h)
    assert g @ d == pytest.approx(fd, rel=2e-2)


def _numpy_value_and_gradient(model, x, y):
    """f and grad f of small_net in inference mode, by hand in float64: dense, BN with its moving
    statistics (an affine map), ReLU, dropout off, dense, softmax, mean cross-entropy."""
    w1, b1, gamma, beta, mm, mv, w2, b2 = (v.numpy().astype(np.float64) for v in model.weights)
    eps = model.layers[1].epsilon
    s = np.sqrt(mv + eps)
    h = x.astype(np.float64) @ w1 + b1
    hn = (h - mm) / s
    z = hn * gamma + beta
    a = np.maximum(z, 0)
    o = a @ w2 + b2
    p = np.exp(o - o.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(y)
    f = -np.mean(np.log(p[np.arange(n), y]))
    do = p.copy()
    do[np.arange(n), y] -= 1
    do /= n
    dz = (do @ w2.T) * (z > 0)
    dh = dz * gamma / s
    grads = [x.T @ dh, dh.sum(0), (dz * hn).sum(0), dz.sum(0), a.T @ do, do.sum(0)]
    return f, np.concatenate([g.ravel() for g in grads])


def test_objective_gradient_matches_a_numpy_derivation():
    """The whole gradient, every coordinate, against the analytic gradient derived in NumPy
    (float64), with BN moving statistics away from 0 and 1 and chunks of unequal size."""
    model = small_net()
    x, y = small_data()
    bn = model.layers[1]
    rng = np.random.default_rng(2)
    bn.moving_mean.assign(rng.normal(size=8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=8).astype(np.float32))
    objective = Objective(model, x, y, batch_size=16)
    f, g = objective.value_and_gradient(flat_weights(model))
    f_ref, g_ref = _numpy_value_and_gradient(model, x, y)
    assert f == pytest.approx(f_ref, rel=1e-6)
    assert objective.value(flat_weights(model)) == pytest.approx(f_ref, rel=1e-6)  # forward only
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-7)


def test_inference_mode_and_weights_left_unchanged():
    model = small_net(dropout=0.9)
    x, y = small_data()
    model(x, training=True)  # moving statistics away from their initial values
    before = [v.numpy().copy() for v in model.variables]
    res = keskar_sharpness(model, x, y, epsilon=1e-3)
    probs = model(x, training=False).numpy()  # dropout off, moving statistics
    assert res.f_x == pytest.approx(-np.mean(np.log(probs[np.arange(40), y])), rel=1e-5)
    for a, b in zip(before, [v.numpy() for v in model.variables], strict=True):
        np.testing.assert_array_equal(a, b)
    assert res.value > 0 and "ABNORMAL" not in res.message


def test_dataset_input_and_subset():
    model = small_net()
    x, y = small_data()
    arrays = keskar_sharpness(model, x, y, epsilon=1e-3)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert keskar_sharpness(model, ds, None, epsilon=1e-3).value == pytest.approx(arrays.value)
    sub = keskar_sharpness(model, x, y, epsilon=1e-3, num_examples=10, seed=1)
    assert sub.num_examples == 10 and sub.f_x != pytest.approx(arrays.f_x)


def test_clipped_loss_is_keras1_and_caps_every_example():
    from lbtf.objective import clipped_cross_entropy

    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [1e-12, 1 - 1e-12, 0.0]], np.float32)
    y = np.array([1, 1, 0], np.int32)
    c = 1e-7
    got = clipped_cross_entropy(c)(tf.constant(y), tf.constant(probs)).numpy()
    expected = -np.log(np.clip(probs[np.arange(3), y].astype(np.float64), c, 1 - c))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.max() == pytest.approx(-np.log(c), rel=1e-5)  # 16.118: the Keras 1 ceiling
    with pytest.raises(ValueError, match="1e-7"):
        clipped_cross_entropy(0.7)


def test_evaluator_matches_numpy_with_padding():
    model = small_net()
    x, y = small_data(n=64)
    split = EvalSet(x, y, batch_size=24)  # 64 = 2 x 24 + 16: padded
    loss, acc = make_evaluator(model, jit_compile=True)(split)
    probs = model(x).numpy()
    ref_loss = -np.mean(np.log(probs[np.arange(64), y]))
    ref_acc = np.mean(probs.argmax(1) == y)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and acc == pytest.approx(ref_acc)


def test_xla_is_used_on_one_replica_and_not_for_convolutions_on_cpu():
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    inner = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3)])
    outer = keras.Sequential([keras.Input((6, 6, 1)), inner, keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    gpu = bool(tf.config.list_logical_devices("GPU"))
    assert use_xla(dense) and not use_xla(dense, requested=False)
    assert not use_xla(dense, replicas=2)
    assert use_xla(outer) == gpu  # a convolution one level down counts
    from lbtf.models import build_model
    assert use_xla(build_model("F1", input_shape=(40,), num_classes=10))
    assert use_xla(build_model("resnet44", input_shape=(8, 8, 1), num_classes=10)) == gpu
