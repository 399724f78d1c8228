"""Sharpness of a minimiser, Metric 2.1 of Keskar et al. (2017):

    phi(x) = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100,
    C_eps = { z : |z_i| <= eps (|(A+ x)_i| + 1) }.

Full space: A = I, so each weight moves by at most eps(|x_i| + 1). Random subspace: A is n x p with
standard Gaussian columns drawn from a seed (or given by the caller), A+ its pseudo-inverse.

Conventions (what the paper leaves open):
- x is the flat vector of *trainable* weights; BN moving statistics are never perturbed.
- f is the mean training loss over the whole training set (or a seeded subset when asked), with the
  network in inference mode (BN moving statistics, dropout off).
- The maximisation is L-BFGS-B from y = 0 with `maxiter` iterations (paper: 10) on -f with
  gradient -grad f; `starts=K` adds K - 1 runs from seeded uniform points of the box. f_max is the
  largest f seen at any (feasible) point evaluated.
- A run from y = 0 that ends before its first iteration (the projected gradient at y = 0 is below
  L-BFGS-B's pgtol) is flagged `stopped_at_start`: its phi = 0 says the optimiser never moved, not
  that f cannot rise in the box.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from collections.abc import Iterable, Iterator

import keras
import numpy as np
import scipy.linalg
import tensorflow as tf
import threadpoolctl

from lbtf.lbfgsb import minimize_box
from lbtf.objective import LossFn, Objective, flat_weights, subsample, weights_restored

# Rows of A drawn from one seed. Fixed, so that a streamed A (any budget) and a held A are the same
# matrix; small, so that streaming stays far below any sensible memory budget (3 MB at p = 100).
BLOCK_ROWS = 8192
# How A is drawn, in run records: another generator gives another sample of A, so values measured
# with two generators are never put in one table (lbtf.experiments.rundir.cached).
SUBSPACE_METHOD = f"N(0, 1) float32, NumPy ziggurat on SFC64(seed, block), {BLOCK_ROWS}-row blocks"


@dataclasses.dataclass(frozen=True)
class SharpnessResult:
    value: float              # phi, in percent
    f_x: float                # f at the minimiser
    f_max: float              # largest f found in the box
    epsilon: float
    subspace_dim: int | None  # None: full space
    nit: int
    nfev: int
    message: str
    success: bool
    num_examples: int
    streamed: bool            # subspace generated block by block
    seconds: float
    driver: str = ""          # the L-BFGS-B path that ran (lbtf.lbfgsb.FAST or PUBLIC)
    starts: int = 1           # L-BFGS-B runs: from y = 0 and from starts - 1 random points
    best_start: int = 0       # the run that found f_max (0: the one from y = 0)
    stopped_at_start: bool = False  # the run from y = 0 made no iteration (phi = 0 is no result)
    eta: float = 1.0          # the box's |x_i| + eta (1: Keskar's; 0: adaptive)
    trace: tuple = ()         # phi after each iteration of the run from y = 0 (its best f so far)


def sharpness_value(f_x: float, f_max: float) -> float:
    """phi = (f_max - f(x)) / (1 + f(x)) * 100."""
    return (f_max - f_x) / (1.0 + f_x) * 100.0


def box_halfwidths(center: np.ndarray, epsilon: float, eta: float = 1.0) -> np.ndarray:
    """eps (|c_i| + eta): the half-widths of C_eps around c = A+ x (c = x in full space). eta = 1
    is Keskar's box; eta = 0 the adaptive one (lbtf.measures), which moves with every weight's
    scale and so is invariant to rescaling the weights that feed a BN layer."""
    return epsilon * (np.abs(center) + eta)


def draw_block(seed: int, j: int, rows: int, p: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [j*r, j*r + rows) of A: standard normal float32 from NumPy's ziggurat sampler on an SFC64
    generator seeded with (seed, j), into `out` (rows x p) when given. Streaming A costs its
    generation (bench_sharpness): on every core this draws about 150M numbers a second on 2 cores,
    1.6x TensorFlow's Philox with Box-Muller (lbtf's generator until 2026-12) on the same cores."""
    gen = np.random.Generator(np.random.SFC64([seed, j]))
    if out is None:
        return gen.standard_normal((rows, p), dtype=np.float32)
    return gen.standard_normal(dtype=np.float32, out=out)


def _workers() -> int:
    """The cores this process may run on (a Slurm or taskset limit included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Subspace:
    """An n x p matrix A of independent standard normal entries, drawn block by block from its seed.

    Block j holds rows [j*r, (j+1)*r) (`draw_block`), so a held A and a streamed A are the same
    matrix. Blocks that fit `memory_budget_mb` are kept; the rest are drawn again whenever a
    product needs them, on every core (NumPy's generators and BLAS release the GIL).
    """

    def __init__(self, n: int, p: int, *, seed: int = 0, matrix: np.ndarray | None = None,
                 memory_budget_mb: float = 1024, block_rows: int | None = None):
        self.n, self.p, self.seed = n, p, seed
        self.block_rows = block_rows or BLOCK_ROWS
        self.workers = _workers()
        self._scratch = threading.local()  # one block buffer a thread: no page faults a block
        self._r: tuple[np.ndarray, np.ndarray] | None = None
        if matrix is not None:
            if matrix.shape != (n, p):
                raise ValueError(f"subspace has shape {matrix.shape}, expected ({n}, {p}) for a "
                                 f"model with {n} trainable weights")
            matrix = np.asarray(matrix, np.float32)
            self._held = [matrix[self._rows(j)] for j in range(self.num_blocks)]
        else:
            self._held = self._map(self._draw, range(self._blocks_within(memory_budget_mb)))

    def _blocks_within(self, memory_budget_mb: float) -> int:
        """How many blocks to keep: all of A if it fits the budget, else what fits beside the
        blocks being drawn (one per worker)."""
        block_mb = 4 * self.block_rows * self.p / 2**20
        if 4 * self.n * self.p <= memory_budget_mb * 2**20:
            return self.num_blocks
        return max(0, min(self.num_blocks, int(memory_budget_mb // block_mb) - self.workers))

    @property
    def num_held(self) -> int:
        """Blocks kept in memory (the first ones)."""
        return len(self._held)

    @property
    def streamed(self) -> bool:
        """Some of A is drawn again for every product."""
        return len(self._held) < self.num_blocks

    @property
    def num_blocks(self) -> int:
        return -(-self.n // self.block_rows)

    def _draw(self, j: int, out: np.ndarray | None = None) -> np.ndarray:
        rows = min(self.block_rows, self.n - j * self.block_rows)
        return draw_block(self.seed, j, rows, self.p, None if out is None else out[:rows])

    def _block(self, j: int) -> np.ndarray:
        """Block j: held, or drawn into this thread's buffer (valid until its next draw)."""
        if j < len(self._held):
            return self._held[j]
        if not hasattr(self._scratch, "block"):
            self._scratch.block = np.empty((self.block_rows, self.p), np.float32)
        return self._draw(j, self._scratch.block)

    def _rows(self, j: int) -> slice:
        """Block j's rows of A (and of a vector of length n)."""
        return slice(j * self.block_rows, (j + 1) * self.block_rows)

    def _map(self, fn, blocks: Iterable[int] | None = None) -> list:
        """fn(j) for every block index (default: all), in order, on `workers` threads. BLAS runs
        single-threaded meanwhile: its own threads spin between the small products and starved
        the generators (measured: 1.5-2x the rate with them)."""
        with (threadpoolctl.threadpool_limits(1, user_api="blas"),
              concurrent.futures.ThreadPoolExecutor(self.workers) as pool):
            return list(pool.map(fn, range(self.num_blocks) if blocks is None else blocks))

    def blocks(self) -> Iterator[np.ndarray]:
        for j in range(self.num_blocks):
            yield self._held[j] if j < len(self._held) else self._draw(j)

    def matvec(self, y: np.ndarray) -> np.ndarray:
        """A y."""
        y32 = np.asarray(y, np.float32)
        return np.concatenate(self._map(lambda j: self._block(j) @ y32)).astype(np.float64)

    def rmatvec(self, g: np.ndarray) -> np.ndarray:
        """A^T g, the blocks' products added in block order (deterministic)."""
        g32 = np.asarray(g, np.float32)
        parts = self._map(lambda j: self._block(j).T @ g32[self._rows(j)])
        return np.sum(parts, axis=0, dtype=np.float64)

    def _gram(self, right: np.ndarray | None = None) -> np.ndarray:
        """sum_b B_b^T B_b with B_b = A_b R^-1 (R = I when None), in float64."""
        def part(j):
            block = self._block(j).astype(np.float64)
            if right is not None:
                block = scipy.linalg.solve_triangular(right, block.T, trans="T").T
            return block.T @ block
        return np.sum(self._map(part), axis=0)

    def _factors(self) -> tuple[np.ndarray, np.ndarray]:
        """R1 = chol(A^T A), R2 = chol(Q1^T Q1) with Q1 = A R1^-1: CholeskyQR2's factors of A."""
        if self._r is None:
            try:
                r1 = np.linalg.cholesky(self._gram()).T
                r2 = np.linalg.cholesky(self._gram(right=r1)).T
            except np.linalg.LinAlgError:
                raise ValueError("the subspace matrix is rank deficient; its columns must be "
                                 "linearly independent") from None
            self._r = (r1, r2)
        return self._r

    def pinv_apply(self, x: np.ndarray) -> np.ndarray:
        """A+ x, the least-squares solution of A c = x, with CholeskyQR2's factors of A.

        A = Q R with Q = A R1^-1 R2^-1 and R = R2 R1 (factors computed once per subspace), so
        A+ x = R^-1 Q^T x and Q^T x = R2^-T R1^-T (A^T x): one streamed float64 pass for A^T x and
        four p x p triangular solves. Never an n x n matrix nor all of A in float64; as accurate
        as Householder QR for cond(A) < 1e8 (a Gaussian n x p A with n >> p has cond(A) near 1).
        """
        r1, r2 = self._factors()
        atx = np.sum(self._map(lambda j: self._block(j).T.astype(np.float64) @ x[self._rows(j)]),
                     axis=0)
        q1tx = scipy.linalg.solve_triangular(r1, atx, trans="T")
        qtx = scipy.linalg.solve_triangular(r2, q1tx, trans="T")
        return scipy.linalg.solve_triangular(r2 @ r1, qtx)


def start_points(halfwidths: np.ndarray, starts: int, seed: int) -> list[np.ndarray]:
    """y = 0, then starts - 1 points drawn uniformly from the box |y| <= halfwidths (seeded)."""
    rng = np.random.default_rng([seed, 7919])
    return [np.zeros_like(halfwidths)] + [rng.uniform(-halfwidths, halfwidths)
                                          for _ in range(starts - 1)]


def maximize_in_box(objective: Objective, minimizer: np.ndarray, halfwidths: np.ndarray,
                    subspace: Subspace | None, maxiter: int, *, starts: int = 1, seed: int = 0):
    """L-BFGS-B on -f(minimizer + A y) over |y| <= halfwidths from each of `start_points`; returns
    (the L-BFGS-B results, f(minimizer), the largest f seen, the index of the run that saw it).

    The gradient handed to L-BFGS-B is -A^T grad f: the gradient of the minimised function. (Returning
    +grad f with -f, as a public implementation does, breaks the line search.)
    """
    seen: list[float] = []

    def negated(y: np.ndarray) -> tuple[float, np.ndarray]:
        w = minimizer + (y if subspace is None else subspace.matvec(y))
        f, g = objective.value_and_gradient(w)
        seen.append(f)
        return -f, -(g if subspace is None else subspace.rmatvec(g))

    results, best, best_start = [], -np.inf, 0
    for k, y0 in enumerate(start_points(halfwidths, starts, seed)):
        first = len(seen)
        results.append(minimize_box(negated, y0, -halfwidths, halfwidths, maxiter=maxiter))
        if max(seen[first:]) > best:
            best, best_start = max(seen[first:]), k
        if k == 0:  # the run from y = 0: its best f after each iteration
            results[0].best_f = [max(seen[:m]) for m in results[0].iterate_nfev]
    return results, seen[0], best, best_start


def keskar_sharpness(model: keras.Model, x, y, *, epsilon: float, subspace_dim: int | None = None,
                     subspace: np.ndarray | None = None, maxiter: int = 10, seed: int = 0,
                     loss: LossFn | None = None, batch_size: int | None = None,
                     num_examples: int | None = None, memory_budget_mb: float = 1024,
                     jit_compile: bool = True, starts: int = 1, eta: float = 1.0,
                     strategy: tf.distribute.Strategy | None = None) -> SharpnessResult:
    """Metric 2.1 of `model` at its current weights over (x, y), the training data.

    Full space by default; `subspace_dim=p` draws an n x p Gaussian A from `seed`, `subspace` gives
    A (rows in `model.trainable_variables` order). Above `memory_budget_mb` a drawn A is streamed
    block by block. `num_examples` evaluates f on a seeded random subset. `x, y` may be arrays or a
    tf.data.Dataset of (x, y) batches. With `strategy` (the model built in its scope) the passes
    over the data are spread over its replicas. `starts` > 1 also maximises from seeded random
    points of the box. The model's weights are left exactly as they were. For Keras 1's batch-
    statistics BN, pass `lbtf.bn.measurement_model(model, "batch")`.
    """
    start = time.perf_counter()
    if isinstance(x, tf.data.Dataset):
        x, y = (np.concatenate(parts) for parts in zip(*x.as_numpy_iterator(), strict=True))
    x, y = subsample(np.asarray(x), np.asarray(y), num_examples, seed)
    with weights_restored(model):
        objective = Objective(model, x, y, loss=loss, batch_size=batch_size,
                              jit_compile=jit_compile, strategy=strategy)
        minimizer = flat_weights(model)
        a = None
        if subspace is not None or subspace_dim is not None:
            p = subspace.shape[1] if subspace is not None else subspace_dim
            a = Subspace(len(minimizer), p, seed=seed, matrix=subspace, memory_budget_mb=memory_budget_mb)
        result = sharpness_at(objective, minimizer, epsilon=epsilon, subspace=a, maxiter=maxiter,
                              starts=starts, seed=seed, eta=eta)
    return dataclasses.replace(result, seconds=time.perf_counter() - start)


def sharpness_at(objective: Objective, minimizer: np.ndarray, *, epsilon: float,
                 subspace: Subspace | None = None, center: np.ndarray | None = None,
                 maxiter: int = 10, starts: int = 1, seed: int = 0,
                 eta: float = 1.0) -> SharpnessResult:
    """Metric 2.1 at the flat weights `minimizer` for a prepared objective and subspace (None: full space).

    `center` may pass a precomputed A+ minimizer, to share it between several epsilons. `nit` and `nfev`
    add up every start's; `message` and `success` are those of the run that found f_max.
    """
    start = time.perf_counter()
    if center is None:
        center = minimizer if subspace is None else subspace.pinv_apply(minimizer)
    results, f_x, f_max, best = maximize_in_box(objective, minimizer,
                                                box_halfwidths(center, epsilon, eta),
                                                subspace, maxiter, starts=starts, seed=seed)
    return SharpnessResult(
        value=sharpness_value(f_x, f_max), f_x=f_x, f_max=f_max, epsilon=epsilon,
        subspace_dim=None if subspace is None else subspace.p,
        nit=sum(int(r.nit) for r in results), nfev=sum(int(r.nfev) for r in results),
        message=str(results[best].message), success=bool(results[best].success),
        num_examples=objective.n, streamed=bool(subspace is not None and subspace.streamed),
        seconds=time.perf_counter() - start, driver=results[0].driver, starts=starts,
        best_start=best, stopped_at_start=int(results[0].nit) == 0, eta=eta,
        trace=tuple(sharpness_value(f_x, f) for f in results[0].best_f))
