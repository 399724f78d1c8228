"""Sharpness measures (lbtf.measures, and lbtf.sharpness's eta) against closed forms on quadratics
f(w) = 1/2 w^T H w + g^T w, no network: each value derived by hand here, not by the code."""

import numpy as np
import pytest

from lbtf.measures import average_sharpness, hutchinson_trace, pacbayes_flatness
from lbtf.sharpness import sharpness_at, sharpness_value


class Quadratic:
    """f(w) = 1/2 w^T H w + g^T w with its gradient and Hessian-vector products."""

    n = 1  # examples, for the result record

    def __init__(self, h: np.ndarray, g: np.ndarray):
        self.h, self.g = h, g

    def value(self, w):
        return float(0.5 * w @ self.h @ w + self.g @ w)

    def value_and_gradient(self, w):
        return self.value(w), self.h @ w + self.g

    def hessian_vector_product(self, w, v):
        return self.h @ v


def _spd(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T / n + np.eye(n) * 0.1


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_worst_case_sharpness_is_the_box_maximum_of_a_separable_quadratic(eta):
    """Diagonal H > 0: f is convex in each coordinate, so its maximum over the box
    |d_i| <= eps (|x_i| + eta) sits at the vertex whose every coordinate takes the larger end."""
    rng = np.random.default_rng(0)
    n, eps = 12, 0.05
    h, g = rng.uniform(0.5, 3.0, n), rng.normal(size=n)
    x = rng.normal(size=n) * np.linspace(0.01, 3, n)  # small and large weights
    f = Quadratic(np.diag(h), g)
    r = eps * (np.abs(x) + eta)
    per = lambda w: 0.5 * h * w**2 + g * w  # noqa: E731
    f_x = per(x).sum()
    f_max = np.maximum(per(x + r), per(x - r)).sum()
    got = sharpness_at(f, x, epsilon=eps, maxiter=50, eta=eta)
    assert got.f_x == pytest.approx(f_x, rel=1e-12)
    assert got.value == pytest.approx(sharpness_value(f_x, f_max), rel=1e-9)
    assert got.eta == eta


def test_the_adaptive_box_is_the_keskar_box_without_its_floor():
    """With weights far below 1 Keskar's box is about eps wide whatever the weight; eta = 0 scales
    with each weight: a rescaled x (x -> a x, H -> H / a^2, g -> g / a: the same function of
    the rescaled weights) keeps the adaptive value and changes Keskar's."""
    rng = np.random.default_rng(1)
    n, eps, a = 8, 0.1, 10.0
    h, g = rng.uniform(0.5, 2.0, n), rng.normal(size=n)
    x = rng.normal(size=n) * 0.05
    base, scaled = Quadratic(np.diag(h), g), Quadratic(np.diag(h / a**2), g / a)
    adaptive = [sharpness_at(q, w, epsilon=eps, maxiter=50, eta=0.0).value
                for q, w in ((base, x), (scaled, a * x))]
    keskar = [sharpness_at(q, w, epsilon=eps, maxiter=50, eta=1.0).value
              for q, w in ((base, x), (scaled, a * x))]
    assert adaptive[1] == pytest.approx(adaptive[0], rel=1e-9)
    assert keskar[1] < 0.5 * keskar[0]


def test_average_sharpness_is_half_sigma_squared_sum_h_ii_x_i_squared():
    n, sigma = 10, 0.3
    h = _spd(n, 2)
    rng = np.random.default_rng(3)
    x, g = rng.normal(size=n), rng.normal(size=n)
    exact = 0.5 * sigma**2 * np.sum(np.diag(h) * x**2)
    got = average_sharpness(Quadratic(h, g), x, sigma=sigma, samples=4000, seed=1)
    assert got.stderr > 0 and abs(got.value - exact) < 4 * got.stderr
    assert got.stderr < 0.1 * exact  # the check has teeth
    again = average_sharpness(Quadratic(h, g), x, sigma=sigma, samples=4000, seed=1)
    assert again == got  # seeded


def test_hutchinson_trace_is_the_trace():
    h = _spd(15, 4)
    got = hutchinson_trace(Quadratic(h, np.zeros(15)), np.zeros(15), samples=3000, seed=0)
    assert abs(got.value - np.trace(h)) < 4 * got.stderr and got.stderr < 0.05 * np.trace(h)
    diagonal = hutchinson_trace(Quadratic(np.diag(np.arange(1.0, 6.0)), np.zeros(5)), np.zeros(5),
                                samples=5)
    assert diagonal.value == 15.0 and diagonal.stderr == 0.0  # v^T D v = tr(D) for every v


def test_pacbayes_sigma_solves_the_quadratic_by_hand():
    """At a minimiser (g = -H x) the rise under noise of std s_i is 1/2 sum_i H_ii s_i^2 on
    average, with s_i^2 = sigma'^2 x_i^2 + eps'^2: sigma'^2 = (2 target - eps'^2 tr H) /
    sum_i H_ii x_i^2."""
    n, target, floor = 10, 0.05, 1e-2
    h = _spd(n, 5)
    x = np.random.default_rng(6).normal(size=n)
    f = Quadratic(h, -h @ x)
    exact = np.sqrt((2 * target - floor**2 * np.trace(h)) / np.sum(np.diag(h) * x**2))
    got = pacbayes_flatness(f, x, target=target, eps_floor=floor, samples=3000, seed=0, steps=30)
    assert got.sigma == pytest.approx(exact, rel=0.05)
    assert got.value == pytest.approx(1 / got.sigma**2) and got.rise <= target * (1 + 1e-9)
    flat = pacbayes_flatness(Quadratic(h * 1e-9, -h @ x * 1e-9), x, target=target, samples=5)
    assert flat.sigma == 2.0  # flat beyond the search range: its upper end
