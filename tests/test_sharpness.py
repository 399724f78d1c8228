"""Metric 2.1 against closed forms, finite differences and NumPy references."""

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from nets import N, one_hot_linear, small_data, small_net

from lbtf.objective import Objective, flat_weights
from lbtf.sharpness import Subspace, box_halfwidths, keskar_sharpness, sharpness_value


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


def test_pseudo_inverse_and_streaming():
    n, p = 53, 5
    streamed = Subspace(n, p, seed=4, memory_budget_mb=0, block_rows=7)
    held = Subspace(n, p, seed=4, memory_budget_mb=1, block_rows=7)
    assert streamed.streamed and not held.streamed and streamed.num_blocks == 8
    a = np.vstack(list(held.blocks())).astype(np.float64)
    assert a.shape == (n, p)
    np.testing.assert_array_equal(a, np.vstack(list(streamed.blocks())))
    x = np.random.default_rng(0).normal(size=n)
    np.testing.assert_allclose(streamed.pinv_apply(x), np.linalg.pinv(a) @ x, rtol=1e-8)
    y, g = np.arange(p, dtype=float), x
    for s in (streamed, held):
        np.testing.assert_allclose(s.matvec(y), a @ y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.rmatvec(g), a.T @ g, rtol=1e-5, atol=1e-5)


def test_a_budget_below_the_matrix_keeps_what_fits_and_draws_the_rest():
    n, p, r = 10_000, 50, 100  # 20 kB blocks, 2 MB in all
    whole = np.vstack(list(Subspace(n, p, seed=3, block_rows=r).blocks()))
    part = Subspace(n, p, seed=3, block_rows=r, memory_budget_mb=1)
    assert part.streamed and part.num_held == int(2**20 // (4 * r * p)) - part.workers
    np.testing.assert_array_equal(np.vstack(list(part.blocks())), whole)
    y, g = np.linspace(-1, 1, p), np.linspace(0, 2, n)
    np.testing.assert_allclose(part.matvec(y), whole.astype(np.float64) @ y, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(part.rmatvec(g), whole.astype(np.float64).T @ g, rtol=1e-5, atol=1e-3)


def test_subspace_entries_are_independent_standard_normals():
    """Kolmogorov-Smirnov against N(0, 1) over 200 000 entries; blocks and seeds uncorrelated."""
    a = np.vstack(list(Subspace(20_000, 10, seed=0, block_rows=1000).blocks())).astype(np.float64)
    assert scipy.stats.kstest(a.ravel(), "norm").pvalue > 1e-3
    assert abs(np.corrcoef(a[:1000].ravel(), a[1000:2000].ravel())[0, 1]) < 0.02  # two blocks
    other = np.vstack(list(Subspace(20_000, 10, seed=1, block_rows=1000).blocks()))
    assert abs(np.corrcoef(a.ravel(), other.ravel())[0, 1]) < 0.01  # two seeds
    gram = a.T @ a / len(a)  # columns: unit variance, nearly orthogonal
    np.testing.assert_allclose(gram, np.eye(10), atol=0.03)


def test_streamed_subspace_gives_the_materialised_value():
    model = small_net()
    x, y = small_data()
    kw = {"epsilon": 1e-2, "subspace_dim": 4, "seed": 2}
    held = keskar_sharpness(model, x, y, memory_budget_mb=1024, **kw)
    streamed = keskar_sharpness(model, x, y, memory_budget_mb=0, **kw)
    assert streamed.streamed and not held.streamed
    assert streamed.value == pytest.approx(held.value, rel=1e-4)


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

    minimizer = np.zeros(4)
    one = sharpness_at(SquaredNorm(), minimizer, epsilon=1.0)
    assert one.value == 0 and one.nit == 0 and one.stopped_at_start
    three = sharpness_at(SquaredNorm(), minimizer, epsilon=1.0, starts=3, seed=5)
    assert three.f_max == pytest.approx(4.0) and three.best_start in (1, 2)
    assert three.value == pytest.approx(sharpness_value(0.0, 4.0)) and three.stopped_at_start


def test_the_trace_is_phi_after_each_iteration_ending_at_the_result():
    """The run from y = 0 records its best f after every iteration: one entry per iteration,
    never falling, and the last one the reported phi (one start)."""
    from lbtf.sharpness import sharpness_at

    model, x, t, _, _ = one_hot_linear()
    objective = Objective(model, x, t, loss=lambda yt, yp: (yp - yt) ** 2, jit_compile=False)
    w = flat_weights(model)
    r = sharpness_at(objective, w, epsilon=0.3, maxiter=6)
    assert len(r.trace) == r.nit and r.nit >= 2
    assert all(b >= a for a, b in zip(r.trace, r.trace[1:], strict=False))
    assert r.trace[-1] == pytest.approx(r.value, rel=1e-12)
