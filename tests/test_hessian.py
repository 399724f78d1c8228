"""Hessian eigenvalues (lbtf.hessian): Lanczos and power iteration against known spectra."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from nets import small_data, small_net

from lbtf.objective import Objective, flat_weights


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


class QuadraticObjective:
    """f(w) = w'Hw / 2 with a known symmetric H: Hessian-vector products without a network."""

    def __init__(self, eigenvalues, seed=0):
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
        self.h, self.n = (q * eigenvalues) @ q.T, 1

    def hessian_vector_product(self, w, v):
        return self.h @ v


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


def test_lanczos_stops_on_its_residual_bound_before_arpack_and_says_when_it_cannot():
    """At ARPACK's own rule (residual <= tol |theta|) unrestarted Lanczos spends fewer products than
    scipy's eigsh, and its value is within the bound; every eigenvalue of a small operator is exact
    once the Krylov space is the whole space; too few steps is an error, not a wrong value."""
    import scipy.sparse.linalg

    from lbtf.hessian import top_eigenvalues_at

    spectrum = np.concatenate([[10.0, 9.5], np.linspace(-0.5, 9.0, 198)])
    quad = QuadraticObjective(spectrum, seed=1)
    w = np.zeros(len(spectrum))
    count = [0]

    def matvec(v):
        count[0] += 1
        return quad.h @ np.ravel(v)

    op = scipy.sparse.linalg.LinearOperator(quad.h.shape, matvec=matvec, dtype=np.float64)
    scipy.sparse.linalg.eigsh(op, k=1, which="LA", tol=1e-3, ncv=6, return_eigenvectors=False,
                              v0=np.random.default_rng(0).normal(size=len(w)))
    found = top_eigenvalues_at(quad, w, tol=1e-3)
    assert abs(found.eigenvalues[0] - 10.0) <= 1e-3 * 10.0
    assert found.num_hvp < count[0]
    small = QuadraticObjective([3.0, -1.0, 2.0, 0.5, 1.5], seed=2)
    every = top_eigenvalues_at(small, np.zeros(5), k=5, tol=1e-12)
    np.testing.assert_allclose(every.eigenvalues, [3.0, 2.0, 1.5, 0.5, -1.0], atol=1e-10)
    assert every.num_hvp == 5
    with pytest.raises(RuntimeError, match="raise maxiter"):
        top_eigenvalues_at(quad, w, tol=1e-9, maxiter=3)
