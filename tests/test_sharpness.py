"""Metric 2.1 against closed forms, finite differences and NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbtf.objective import Objective, flat_weights
from lbtf.sharpness import Subspace, box_halfwidths, keskar_sharpness, sharpness_value

N = 6


def one_hot_linear(seed=0):
    """f(w) = (1/N) sum_i (w_i - t_i)^2: a linear model without bias on one-hot inputs, MSE."""
    rng = np.random.default_rng(seed)
    x = np.eye(N, dtype=np.float32)
    t = rng.normal(size=(N, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((N,)), keras.layers.Dense(1, use_bias=False)])
    w = rng.normal(size=(N, 1)).astype(np.float32)
    model.set_weights([w])
    return model, x, t, w[:, 0].astype(np.float64), t[:, 0].astype(np.float64)


def small_net(seed=0, dropout=0.0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                             keras.layers.ReLU(), keras.layers.Dropout(dropout),
                             keras.layers.Dense(3, activation="softmax")])


def small_data(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def test_formulas():
    np.testing.assert_allclose(box_halfwidths(np.array([-2.0, 0.0, 3.0]), 0.1), [0.3, 0.1, 0.4])
    assert sharpness_value(1.0, 1.5) == pytest.approx(25.0)


def test_full_space_closed_form():
    model, x, t, w, target = one_hot_linear()
    eps = 0.05
    r = eps * (np.abs(w) + 1)
    expected_max = np.mean((np.abs(w - target) + r) ** 2)
    f_x = np.mean((w - target) ** 2)
    res = keskar_sharpness(model, x, t, epsilon=eps, loss=keras.losses.mean_squared_error)
    assert res.f_x == pytest.approx(f_x, rel=1e-6)
    assert res.f_max == pytest.approx(expected_max, rel=1e-5)
    assert res.value == pytest.approx(sharpness_value(f_x, expected_max), rel=1e-4)
    assert "ABNORMAL" not in res.message and res.nfev >= 2 and res.subspace_dim is None


def test_caller_given_subspace_closed_form():
    """A = c E_S (scaled coordinate columns): A+ w = w_S / c, so |y_i| <= eps(|w_i|/c + 1) and the
    weight i in S moves by at most eps(|w_i| + c); the other weights stay."""
    model, x, t, w, target = one_hot_linear(seed=3)
    c, eps, chosen = 2.0, 0.05, [0, 2, 5]
    a = np.zeros((N, len(chosen)))
    a[chosen, range(len(chosen))] = c
    gap = np.abs(w - target)
    moved = gap.copy()
    moved[chosen] += eps * (np.abs(w[chosen]) + c)
    res = keskar_sharpness(model, x, t, epsilon=eps, subspace=a,
                           loss=keras.losses.mean_squared_error)
    assert res.f_max == pytest.approx(np.mean(moved**2), rel=1e-5)
    assert res.subspace_dim == 3 and not res.streamed


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


def test_pseudo_inverse_and_streaming():
    n, p = 53, 5
    streamed = Subspace(n, p, seed=4, memory_budget_mb=0, block_rows=7)
    held = Subspace(n, p, seed=4, memory_budget_mb=1, block_rows=7)
    assert streamed.streamed and not held.streamed and streamed.num_blocks == 8
    a = np.vstack([b.numpy() for b in held.blocks()]).astype(np.float64)
    assert a.shape == (n, p)
    np.testing.assert_array_equal(a, np.vstack([b.numpy() for b in streamed.blocks()]))
    x = np.random.default_rng(0).normal(size=n)
    np.testing.assert_allclose(streamed.pinv_apply(x), np.linalg.pinv(a) @ x, rtol=1e-8)
    y, g = np.arange(p, dtype=float), x
    for s in (streamed, held):
        np.testing.assert_allclose(s.matvec(y), a @ y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.rmatvec(g), a.T @ g, rtol=1e-5, atol=1e-5)


def test_streamed_subspace_gives_the_materialised_value():
    model = small_net()
    x, y = small_data()
    kw = {"epsilon": 1e-2, "subspace_dim": 4, "seed": 2}
    held = keskar_sharpness(model, x, y, memory_budget_mb=1024, **kw)
    streamed = keskar_sharpness(model, x, y, memory_budget_mb=0, **kw)
    assert streamed.streamed and not held.streamed
    assert streamed.value == pytest.approx(held.value, rel=1e-4)


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


def exact_hessian(model, x, y):
    """The Hessian of the mean inference-mode cross-entropy by nested tapes, as a NumPy matrix."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, model(x, training=False)))
        g = tf.concat([tf.reshape(t, [-1]) for t in inner.gradient(loss, variables)], 0)
    rows = outer.jacobian(g, variables)
    return np.concatenate([tf.reshape(r, [g.shape[0], -1]).numpy() for r in rows], 1)


def test_hessian_vector_products_and_top_eigenvalues():
    from lbtf.hessian import top_eigenvalues

    model = small_net(seed=3)
    x, y = small_data(n=30)
    h = exact_hessian(model, x, y).astype(np.float64)
    h = (h + h.T) / 2
    w = flat_weights(model)
    v = np.random.default_rng(0).normal(size=w.size)
    hv = Objective(model, x, y, batch_size=8).hessian_vector_product(w, v)
    np.testing.assert_allclose(hv, h @ v, rtol=1e-3, atol=1e-4 * np.abs(h @ v).max())
    exact = np.sort(np.linalg.eigvalsh(h))[::-1][:3]
    found = top_eigenvalues(model, x, y, k=3, tol=1e-6)
    np.testing.assert_allclose(found.eigenvalues, exact, rtol=1e-3)
    assert found.num_hvp > 0 and found.eigenvalues[0] > 0


def test_fast_lbfgsb_driver_equals_scipy_minimize(monkeypatch):
    import scipy.optimize

    from lbtf.lbfgsb import FAST, PUBLIC, minimize_box

    rng = np.random.default_rng(0)
    q = rng.normal(size=(30, 30))
    b = rng.normal(size=30)

    def fun(x):  # a non-convex quartic with a box: the line search and bounds both matter
        f = -(x @ q @ x) + np.sum(x**4) + b @ x
        return f, -(q + q.T) @ x + 4 * x**3 + b

    lo, hi = -np.full(30, 0.5), np.linspace(0.1, 1.0, 30)
    slow = minimize_box(fun, np.zeros(30), lo, hi, maxiter=10, fast=False)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the fast driver fell back on scipy.optimize.minimize")

    monkeypatch.setattr(scipy.optimize, "minimize", no_fallback)
    fast = minimize_box(fun, np.zeros(30), lo, hi, maxiter=10)
    assert (fast.driver, slow.driver) == (FAST, PUBLIC)
    np.testing.assert_array_equal(fast.x, slow.x)
    assert (fast.nit, fast.nfev, fast.message) == (slow.nit, slow.nfev, slow.message)
    assert fast.fun == slow.fun and fast.nit == 10


def test_two_replicas_give_the_same_sharpness_and_curvature():
    """The passes over the data spread over two logical CPUs: same f, gradient, Hv, sharpness."""
    from lbtf.hessian import top_eigenvalues

    x, y = small_data(n=50)
    mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    one = small_net(seed=4)
    with mirrored.scope():
        two = small_net(seed=4)
    kw = {"epsilon": 1e-2, "batch_size": 8, "subspace_dim": 3}  # 50 = 6 x 8 + 2: uneven chunks
    a = keskar_sharpness(one, x, y, **kw)
    b = keskar_sharpness(two, x, y, strategy=mirrored, **kw)
    assert b.f_x == pytest.approx(a.f_x, rel=1e-6) and b.value == pytest.approx(a.value, rel=1e-4)
    w = flat_weights(one)
    v = np.random.default_rng(0).normal(size=w.size)
    h1 = Objective(one, x, y, batch_size=8).hessian_vector_product(w, v)
    h2 = Objective(two, x, y, batch_size=8, strategy=mirrored).hessian_vector_product(w, v)
    np.testing.assert_allclose(h2, h1, rtol=1e-4, atol=1e-6)
    e1 = top_eigenvalues(one, x, y, tol=1e-6).eigenvalues[0]
    e2 = top_eigenvalues(two, x, y, tol=1e-6, strategy=mirrored).eigenvalues[0]
    assert e2 == pytest.approx(e1, rel=1e-4)


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


class SquaredNorm:
    """f(w) = sum(w^2), a stand-in objective: its gradient vanishes at w = 0."""
    n = 1
    size = 4

    def value_and_gradient(self, w):
        return float(w @ w), 2 * w


def test_stop_at_start_is_flagged_and_random_starts_find_the_corners():
    """At x = 0 the gradient of sum(w^2) is 0: L-BFGS-B from y = 0 ends before its first iteration
    (phi = 0, flagged). From random points it climbs to a corner of the box: f_max = 4 (1 + 0)^2
    for eps = 1 in four dimensions."""
    from lbtf.sharpness import sharpness_at

    x0 = np.zeros(4)
    one = sharpness_at(SquaredNorm(), x0, epsilon=1.0)
    assert one.value == 0 and one.nit == 0 and one.stopped_at_start
    three = sharpness_at(SquaredNorm(), x0, epsilon=1.0, starts=3, seed=5)
    assert three.f_max == pytest.approx(4.0) and three.best_start in (1, 2)
    assert three.value == pytest.approx(sharpness_value(0.0, 4.0)) and three.stopped_at_start


def test_report_marks_stopped_measurements():
    import pandas as pd

    from lbtf.report import sharpness_markdown

    rows = pd.DataFrame([{"measure": "sharpness", "space": "full", "bn": "moving", "epsilon": 1e-3,
                          "regime": r, "trial": t, "value": v, "stopped_at_start": s}
                         for r, t, v, s in (("SB", 0, 0.0, True), ("SB", 1, 2.0, False),
                                            ("LB", 0, 5.0, False), ("LB", 1, 7.0, False))])
    text = sharpness_markdown(rows, space="full", network="F1", dataset="d")
    assert "1.00 ± 1.41 (median 1.00; 0.00–2.00) †1" in text and "†k: k of the" in text
    assert "6.00 ± 1.41 (median 6.00; 5.00–7.00) |" in text


def test_an_objective_that_raises_propagates():
    from lbtf.lbfgsb import minimize_box

    calls = []

    def fun(x):
        calls.append(1)
        if len(calls) == 3:
            raise TypeError("objective failed")
        return float(x @ x), 2 * x

    with pytest.raises(TypeError, match="objective failed"):
        minimize_box(fun, np.ones(3), -np.full(3, 2.0), np.full(3, 2.0), maxiter=10)
    assert len(calls) == 3  # not retried through scipy.optimize.minimize


def test_missing_fast_routine_warns_once_and_records_the_public_path(monkeypatch, capsys):
    from lbtf import lbfgsb

    def stub(*args, **kwargs):  # scipy <= 1.14's Fortran-era setulb fails the call like this
        raise TypeError("setulb() takes a different argument list")

    lbfgsb.fast_path_available.cache_clear()
    monkeypatch.setattr(lbfgsb, "_driver", stub)
    try:
        res = lbfgsb.minimize_box(lambda x: (float(x @ x), 2 * x), np.ones(2), -np.ones(2),
                                  np.ones(2), maxiter=5)
        lbfgsb.minimize_box(lambda x: (float(x @ x), 2 * x), np.ones(2), -np.ones(2),
                            np.ones(2), maxiter=5)
    finally:
        lbfgsb.fast_path_available.cache_clear()
    assert res.driver == lbfgsb.PUBLIC and np.allclose(res.x, 0, atol=1e-6)
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "scipy.optimize.minimize" in warning[0]


class QuadraticObjective:
    """f(w) = w'Hw / 2 with a known symmetric H: Hessian-vector products without a network."""

    def __init__(self, eigenvalues, seed=0):
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
        self.h, self.n = (q * eigenvalues) @ q.T, 1

    def hessian_vector_product(self, w, v):
        return self.h @ v


def test_power_iteration_and_lanczos_find_a_known_top_eigenvalue_and_count_products():
    from lbtf.hessian import power_iteration_at, top_eigenvalues_at

    spectrum = np.concatenate([[10.0, 9.5], np.linspace(-0.5, 5.0, 98)])  # gap ratio 0.95
    quad = QuadraticObjective(spectrum)
    w = np.zeros(len(spectrum))
    power = power_iteration_at(quad, w, tol=1e-6)
    lanczos = top_eigenvalues_at(quad, w, k=1, tol=1e-6)
    assert power.eigenvalues[0] == pytest.approx(10.0, rel=1e-4)
    assert lanczos.eigenvalues[0] == pytest.approx(10.0, rel=1e-6)
    # Power iteration converges like 0.95^(2t); Lanczos like a Chebyshev polynomial: far fewer.
    assert lanczos.num_hvp < power.num_hvp / 2
