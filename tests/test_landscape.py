"""Parametric plots: path end points, BN statistics re-estimation and interpolation, against NumPy."""

import math

import keras
import numpy as np
import pytest

from lbtf import landscape
from lbtf.objective import EvalSet, make_evaluator

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 6)).astype(np.float32)
Y = RNG.integers(0, 3, size=96).astype(np.int32)
SPLITS = {"train": EvalSet(X, Y, 40)}  # 96 = 2 x 40 + 16: a padded last batch


def softmax_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))


def bn_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Dense(5)(inputs)))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(4)(h))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))


def with_random_stats(model: keras.Model, seed: int) -> keras.Model:
    rng = np.random.default_rng(seed)
    for lay in landscape.bn_layers(model):
        lay.moving_mean.assign(rng.normal(size=lay.moving_mean.shape))
        lay.moving_variance.assign(rng.uniform(0.2, 3.0, size=lay.moving_variance.shape))
    return model


def numpy_loss(w: np.ndarray, b: np.ndarray) -> float:
    z = X.astype(np.float64) @ w + b
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(Y)), Y].mean())


def test_path_coefficients():
    assert landscape.path_coefficients(0.0, "linear") == (1.0, 0.0)
    assert landscape.path_coefficients(1.0, "linear") == (0.0, 1.0)
    assert landscape.path_coefficients(-1.0, "linear") == (2.0, -1.0)
    # The curvilinear end points are exact, not merely close (cos(pi/2) = 6e-17 is snapped to 0).
    assert landscape.path_coefficients(0.0, "curvilinear") == (1.0, 0.0)
    assert landscape.path_coefficients(1.0, "curvilinear") == (0.0, 1.0)
    assert landscape.path_coefficients(2.0, "curvilinear") == (-1.0, 0.0)
    c_s, c_l = landscape.path_coefficients(0.5, "curvilinear")
    assert c_s == pytest.approx(math.sqrt(0.5)) and c_l == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="unknown path"):
        landscape.path_coefficients(0.0, "spiral")


def test_default_alphas_span_the_range_and_hold_both_minimisers():
    a = landscape.default_alphas(25)
    assert a[0] == -1 and a[-1] == 2 and len(a) == 25
    assert 0.0 in a and 1.0 in a
    b = landscape.default_alphas(4)  # -1, 0, 1, 2 exactly: no near-duplicates added
    assert len(b) == 4
    np.testing.assert_allclose(b, [-1, 0, 1, 2], atol=1e-12)
    c = landscape.default_alphas(3, -0.5, 1.5)  # 0 and 1 are added to -0.5, 0.5, 1.5
    np.testing.assert_allclose(c, [-0.5, 0, 0.5, 1, 1.5])


def test_variances_interpolate_positive_and_exact_at_the_ends():
    vs, vl = np.array([0.5, 4.0, 1e-3], np.float32), np.array([3.0, 0.1, 2.0], np.float32)
    for alpha in np.linspace(-1, 2, 13):
        c_s, c_l = landscape.path_coefficients(alpha, "linear")
        v = landscape.combine_variances(vs, vl, c_s, c_l)
        assert (v > 0).all()
        np.testing.assert_allclose(v, vs.astype(np.float64) ** c_s * vl.astype(np.float64) ** c_l,
                                   rtol=1e-5)
    # The linear combination the pitfall list warns about does go negative here.
    assert ((-1 * vs + 2 * vl) < 0).any()
    np.testing.assert_array_equal(landscape.combine_variances(vs, vl, 1.0, 0.0), vs)
    np.testing.assert_array_equal(landscape.combine_variances(vs, vl, 0.0, 1.0), vl)


def test_distance_matches_the_flat_norm():
    a = [RNG.normal(size=(3, 4)), RNG.normal(size=5)]
    b = [RNG.normal(size=(3, 4)), RNG.normal(size=5)]
    flat = np.concatenate([x.ravel() for x in a]) - np.concatenate([x.ravel() for x in b])
    assert landscape.distance(a, b) == pytest.approx(np.linalg.norm(flat), rel=1e-12)


@pytest.mark.parametrize("path", landscape.PATHS)
def test_path_without_bn_matches_numpy_at_every_alpha(path):
    model = softmax_model(0)
    xs = landscape.snapshot(model)
    xl = landscape.snapshot(softmax_model(1))
    alphas = [-1.0, 0.0, 0.3, 1.0, 2.0]
    table = landscape.evaluate_path(model, xs, xl, alphas, path=path, splits=SPLITS)
    for alpha, loss in zip(alphas, table.train_loss, strict=True):
        c_s, c_l = landscape.path_coefficients(alpha, path)
        w = c_s * xs.weights[0].astype(np.float64) + c_l * xl.weights[0]
        b = c_s * xs.weights[1].astype(np.float64) + c_l * xl.weights[1]
        assert loss == pytest.approx(numpy_loss(w, b), rel=1e-5)
    # The model is left at x_s.
    np.testing.assert_array_equal(model.trainable_variables[0].numpy(), xs.weights[0])


@pytest.mark.parametrize("path", landscape.PATHS)
def test_interpolated_bn_reproduces_both_minimisers(path):
    start, end = with_random_stats(bn_model(0), 10), with_random_stats(bn_model(1), 11)
    evaluate = make_evaluator(start, jit_compile=False)
    expect = [evaluate(SPLITS["train"]), make_evaluator(end, jit_compile=False)(SPLITS["train"])]
    before = [v.numpy() for v in start.variables]
    table = landscape.evaluate_path(start, landscape.snapshot(start), landscape.snapshot(end),
                                    [0.0, 1.0], path=path, splits=SPLITS, bn="interpolate")
    for row, (loss, acc) in zip(table.itertuples(), expect, strict=True):
        assert row.train_loss == pytest.approx(loss, rel=1e-6) and row.train_acc == acc
    for v, b in zip(start.variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)


def numpy_bn_statistics(model: keras.Model, batches: list[np.ndarray]):
    """The reference: per batch, each BN layer's batch mean and biased variance in training mode
    (earlier BN layers normalise with the batch's statistics), averaged with batch-size weights."""
    d1, bn1, _, d2, bn2 = (lay for lay in model.layers[1:6])
    n = sum(len(b) for b in batches)
    sums = [np.zeros(5), np.zeros(5), np.zeros(4), np.zeros(4)]
    for xb in batches:
        h1 = xb.astype(np.float64) @ d1.kernel.numpy() + d1.bias.numpy()
        m1, v1 = h1.mean(0), h1.var(0)
        a1 = np.maximum((h1 - m1) / np.sqrt(v1 + bn1.epsilon) * bn1.gamma.numpy() + bn1.beta.numpy(),
                        0)
        h2 = a1 @ d2.kernel.numpy() + d2.bias.numpy()
        for i, s in enumerate((m1, v1, h2.mean(0), h2.var(0))):
            sums[i] += len(xb) * s
    assert bn2 is landscape.bn_layers(model)[1]
    return [s / n for s in sums]


def test_bn_statistics_are_recomputed_like_the_numpy_reference():
    model = with_random_stats(bn_model(3), 12)
    for lay in landscape.bn_layers(model):  # non-trivial scale and shift
        lay.gamma.assign(RNG.uniform(0.5, 2, size=lay.gamma.shape))
        lay.beta.assign(RNG.normal(size=lay.beta.shape))
    landscape.BatchNormEstimator(model, X, batch_size=40)()  # batches of 40, 40 and 16
    m1, v1, m2, v2 = numpy_bn_statistics(model, [X[:40], X[40:80], X[80:]])
    bn1, bn2 = landscape.bn_layers(model)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), m1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), v1, rtol=1e-4)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), m2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), v2, rtol=1e-4)


def test_recompute_along_a_path_uses_the_statistics_of_each_point():
    """At alpha = 0 the recomputed statistics replace the snapshot's; the loss is then the one of
    x_s with freshly estimated statistics, and the model is restored afterwards."""
    start, end = with_random_stats(bn_model(0), 10), bn_model(1)
    estimator = landscape.BatchNormEstimator(start, X, batch_size=96)
    table = landscape.evaluate_path(start, landscape.snapshot(start), landscape.snapshot(end),
                                    [0.0], path="linear", splits=SPLITS, estimator=estimator)
    reference = bn_model(0)
    landscape.BatchNormEstimator(reference, X, batch_size=96)()
    loss, _ = make_evaluator(reference, jit_compile=False)(SPLITS["train"])
    assert table.train_loss[0] == pytest.approx(loss, rel=1e-5)
    assert landscape.bn_layers(start)[0].moving_variance.numpy() == pytest.approx(
        landscape.snapshot(with_random_stats(bn_model(0), 10)).variances[0])
    with pytest.raises(ValueError, match="BatchNormEstimator"):
        landscape.evaluate_path(start, landscape.snapshot(start), landscape.snapshot(end), [0.0],
                                path="linear", splits=SPLITS)
