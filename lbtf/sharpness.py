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
  gradient -grad f. f_max is the largest f seen at any (feasible) point evaluated.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import keras
import numpy as np
import scipy.linalg
import scipy.optimize
import tensorflow as tf

from lbtf.objective import LossFn, Objective, flat_weights, subsample, weights_restored

BLOCK_BYTES = 64 << 20  # a streamed subspace block: 64 MiB of float32


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


def sharpness_value(f_x: float, f_max: float) -> float:
    """phi = (f_max - f(x)) / (1 + f(x)) * 100."""
    return (f_max - f_x) / (1.0 + f_x) * 100.0


def box_halfwidths(center: np.ndarray, epsilon: float) -> np.ndarray:
    """eps (|c_i| + 1): the half-widths of C_eps around c = A+ x (c = x in full space)."""
    return epsilon * (np.abs(center) + 1.0)


class Subspace:
    """An n x p matrix A, held in memory or generated block by block from its seed.

    Block j holds rows [j*r, (j+1)*r) and is `tf.random.stateless_normal` with seed (seed, j), so a
    materialised A and a streamed A are the same matrix.
    """

    def __init__(self, n: int, p: int, *, seed: int = 0, matrix: np.ndarray | None = None,
                 memory_budget_mb: float = 1024, block_rows: int | None = None):
        self.n, self.p, self.seed = n, p, seed
        self.block_rows = block_rows or max(1, min(n, BLOCK_BYTES // (4 * p)))
        if matrix is not None:
            if matrix.shape != (n, p):
                raise ValueError(f"subspace has shape {matrix.shape}, expected ({n}, {p}) for a "
                                 f"model with {n} trainable weights")
            self._a = tf.constant(matrix, tf.float32)
        elif 4 * n * p <= memory_budget_mb * 2**20:
            self._a = tf.concat([self._block(j) for j in range(self.num_blocks)], 0)
        else:
            self._a = None

    @property
    def streamed(self) -> bool:
        return self._a is None

    @property
    def num_blocks(self) -> int:
        return -(-self.n // self.block_rows)

    def _block(self, j: int) -> tf.Tensor:
        rows = min(self.block_rows, self.n - j * self.block_rows)
        return tf.random.stateless_normal((rows, self.p), seed=[self.seed, j])

    def blocks(self) -> Iterator[tf.Tensor]:
        for j in range(self.num_blocks):
            if self._a is None:
                yield self._block(j)
            else:
                yield self._a[j * self.block_rows:(j + 1) * self.block_rows]

    def matvec(self, y: np.ndarray) -> np.ndarray:
        """A y."""
        yt = tf.constant(y, tf.float32)
        if self._a is not None:
            return tf.linalg.matvec(self._a, yt).numpy().astype(np.float64)
        return np.concatenate([tf.linalg.matvec(b, yt).numpy() for b in self.blocks()]).astype(
            np.float64)

    def rmatvec(self, g: np.ndarray) -> np.ndarray:
        """A^T g."""
        gt = tf.constant(g, tf.float32)
        if self._a is not None:
            return tf.linalg.matvec(self._a, gt, transpose_a=True).numpy().astype(np.float64)
        out, start = np.zeros(self.p), 0
        for b in self.blocks():
            out += tf.linalg.matvec(b, gt[start:start + b.shape[0]], transpose_a=True).numpy()
            start += b.shape[0]
        return out

    def pinv_apply(self, x: np.ndarray) -> np.ndarray:
        """A+ x, the least-squares solution of A c = x, by a streaming QR (TSQR) over the row
        blocks: never an n x n matrix, never all of A in float64, numerically stable."""
        r, qtx, start = np.zeros((0, self.p)), np.zeros(0), 0
        for b in self.blocks():
            block = b.numpy().astype(np.float64)
            q, r = np.linalg.qr(np.vstack([r, block]))
            qtx = q.T @ np.concatenate([qtx, x[start:start + len(block)]])
            start += len(block)
        return scipy.linalg.solve_triangular(r, qtx)


def maximize_in_box(objective: Objective, x0: np.ndarray, halfwidths: np.ndarray,
                    subspace: Subspace | None, maxiter: int):
    """L-BFGS-B on -f(x0 + A y) over |y| <= halfwidths, from y = 0; returns (result, f(x0), best f).

    The gradient handed to L-BFGS-B is -A^T grad f: the gradient of the minimised function. (Returning
    +grad f with -f, as a public implementation does, breaks the line search.)
    """
    seen: list[float] = []

    def negated(y: np.ndarray) -> tuple[float, np.ndarray]:
        w = x0 + (y if subspace is None else subspace.matvec(y))
        f, g = objective.value_and_gradient(w)
        seen.append(f)
        return -f, -(g if subspace is None else subspace.rmatvec(g))

    bounds = scipy.optimize.Bounds(-halfwidths, halfwidths)
    res = scipy.optimize.minimize(negated, np.zeros_like(halfwidths), jac=True, method="L-BFGS-B",
                                  bounds=bounds, options={"maxiter": maxiter})
    return res, seen[0], max(seen)


def keskar_sharpness(model: keras.Model, x, y, *, epsilon: float, subspace_dim: int | None = None,
                     subspace: np.ndarray | None = None, maxiter: int = 10, seed: int = 0,
                     loss: LossFn | None = None, batch_size: int | None = None,
                     num_examples: int | None = None, memory_budget_mb: float = 1024,
                     jit_compile: bool = True) -> SharpnessResult:
    """Metric 2.1 of `model` at its current weights over (x, y), the training data.

    Full space by default; `subspace_dim=p` draws an n x p Gaussian A from `seed`, `subspace` gives
    A (rows in `model.trainable_variables` order). Above `memory_budget_mb` a drawn A is streamed
    block by block. `num_examples` evaluates f on a seeded random subset. `x, y` may be arrays or a
    tf.data.Dataset of (x, y) batches. The model's weights are left exactly as they were.
    """
    start = time.perf_counter()
    if isinstance(x, tf.data.Dataset):
        x, y = (np.concatenate(parts) for parts in zip(*x.as_numpy_iterator(), strict=True))
    x, y = subsample(np.asarray(x), np.asarray(y), num_examples, seed)
    with weights_restored(model):
        objective = Objective(model, x, y, loss=loss, batch_size=batch_size,
                              jit_compile=jit_compile)
        x0 = flat_weights(model)
        a = None
        if subspace is not None or subspace_dim is not None:
            p = subspace.shape[1] if subspace is not None else subspace_dim
            a = Subspace(len(x0), p, seed=seed, matrix=subspace, memory_budget_mb=memory_budget_mb)
        center = x0 if a is None else a.pinv_apply(x0)
        res, f_x, f_max = maximize_in_box(objective, x0, box_halfwidths(center, epsilon), a,
                                          maxiter)
    return SharpnessResult(
        value=sharpness_value(f_x, f_max), f_x=f_x, f_max=f_max, epsilon=epsilon,
        subspace_dim=None if a is None else a.p, nit=int(res.nit), nfev=int(res.nfev),
        message=str(res.message), success=bool(res.success), num_examples=len(x),
        streamed=bool(a is not None and a.streamed), seconds=time.perf_counter() - start)
