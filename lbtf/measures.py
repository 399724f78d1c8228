"""Sharpness measures beside Metric 2.1, at flat weights x of any objective with
`value(w)`, `value_and_gradient(w)` and `hessian_vector_product(w, v)` (lbtf.objective.Objective, or a test's
quadratic): they know nothing of how x was trained.

- adaptive worst-case sharpness (Kwon et al. 2021; Andriushchenko et al. 2023): Metric 2.1's
  maximisation over the box |d_i| <= eps (|x_i| + eta); eta = 1 is Keskar's box, eta = 0 the
  adaptive one, invariant to rescaling the weights that feed a BN layer (`lbtf.sharpness`,
  `eta`);
- average-case adaptive sharpness (Andriushchenko et al. 2023): E[f(x + d)] - f(x) with
  d_i ~ N(0, (sigma |x_i|)^2), by Monte Carlo over seeded draws, with its standard error;
- magnitude-aware PAC-Bayes flatness (Jiang et al. 2020): the largest sigma' for which noise of
  variance sigma'^2 x_i^2 + eps'^2 raises the mean f by at most `target`, by bisection with the
  same seeded draws at every sigma'; reported as 1 / sigma'^2;
- Hessian trace by Hutchinson's estimator: the mean of v^T H v over seeded Rademacher v, with its
  standard error (the top eigenvalue is lbtf.hessian's).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


class Function(Protocol):
    def value(self, w: np.ndarray) -> float: ...

    def value_and_gradient(self, w: np.ndarray) -> tuple[float, np.ndarray]: ...

    def hessian_vector_product(self, w: np.ndarray, v: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo measure: its value, standard error and how it was drawn."""
    value: float
    stderr: float
    samples: int
    seed: int
    f_x: float


def _normal_draws(n: int, samples: int, seed: int):
    """`samples` seeded standard normal vectors of length n, one at a time (n may be millions)."""
    gen = np.random.Generator(np.random.SFC64([seed, 104729]))
    for _ in range(samples):
        yield gen.standard_normal(n)


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def average_sharpness(fn: Function, x: np.ndarray, *, sigma: float, samples: int = 20,
                      seed: int = 0) -> Estimate:
    """E[f(x + d)] - f(x), d_i ~ N(0, (sigma |x_i|)^2): the mean over `samples` seeded draws and its
    standard error. On a quadratic 1/2 w^T H w + g^T w it is 1/2 sigma^2 sum_i H_ii x_i^2."""
    f_x = fn.value(x)
    scale = sigma * np.abs(x)
    rises = [fn.value(x + scale * z) - f_x
             for z in _normal_draws(x.size, samples, seed)]
    value, stderr = _mean_and_stderr(rises)
    return Estimate(value, stderr, samples, seed, f_x)


def hutchinson_trace(fn: Function, x: np.ndarray, *, samples: int = 20, seed: int = 0) -> Estimate:
    """tr(H(x)) as the mean of v^T H v over `samples` seeded Rademacher vectors v, with its
    standard error (exact for a diagonal H: every v^T H v is then the trace)."""
    gen = np.random.Generator(np.random.SFC64([seed, 15485863]))
    quads = []
    for _ in range(samples):
        v = gen.integers(0, 2, x.size).astype(np.float64) * 2 - 1
        quads.append(float(v @ fn.hessian_vector_product(x, v)))
    value, stderr = _mean_and_stderr(quads)
    return Estimate(value, stderr, samples, seed, fn.value(x))


@dataclasses.dataclass(frozen=True)
class PacBayes:
    """Magnitude-aware PAC-Bayes flatness: sigma' found and 1 / sigma'^2 (the reported measure:
    larger is sharper), with the rise in f it allows and the search's settings."""
    value: float           # 1 / sigma'^2
    sigma: float           # sigma'
    rise: float            # mean rise of f at sigma' over the draws
    target: float
    eps_floor: float       # eps'
    samples: int
    seed: int
    f_x: float
    steps: int


def _mean_rise(fn: Function, x: np.ndarray, f_x: float, sigma: float, eps_floor: float, *,
               samples: int, seed: int) -> float:
    """The mean rise of f under the seeded draws scaled to sigma (drawn again, not held: n may be
    millions)."""
    scale = np.sqrt((sigma * x) ** 2 + eps_floor ** 2)
    return float(np.mean([fn.value(x + scale * z) - f_x
                          for z in _normal_draws(x.size, samples, seed)]))


def pacbayes_flatness(fn: Function, x: np.ndarray, *, target: float = 0.1, eps_floor: float = 1e-3,
                      samples: int = 10, seed: int = 0, sigma_max: float = 2.0,
                      steps: int = 15) -> PacBayes:
    """The largest sigma' in [0, sigma_max] with a mean rise of f of at most `target` under noise of
    variance sigma'^2 x_i^2 + eps'^2 (the same seeded draws at every sigma', so the search sees one
    function), by `steps` bisections (Jiang et al.: 15); 1 / sigma'^2 is the measure. On a
    quadratic the rise is 1/2 sum_i H_ii (sigma'^2 x_i^2 + eps'^2)."""
    f_x = fn.value(x)

    def rise(sigma: float) -> float:
        return _mean_rise(fn, x, f_x, sigma, eps_floor, samples=samples, seed=seed)

    lo, hi = 0.0, sigma_max
    if rise(hi) <= target:
        lo = hi  # flat beyond the search range: sigma' = sigma_max
    else:
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if rise(mid) <= target else (lo, mid)
    sigma = lo
    return PacBayes(value=float("inf") if sigma == 0 else 1.0 / sigma**2, sigma=sigma,
                    rise=rise(sigma), target=target,
                    eps_floor=eps_floor, samples=samples, seed=seed, f_x=f_x, steps=steps)
