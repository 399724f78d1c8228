"""Box-constrained L-BFGS-B for millions of variables: scipy's own L-BFGS-B routine, driven with
vectorised bounds.

`scipy.optimize.minimize(method="L-BFGS-B")` converts the bounds element by element in Python
(about 7 us per variable and call: 8 s for 1M weights, 100 s for C2's 15M) before its first
iteration. This driver runs the same loop around the same compiled routine (`_lbfgsb.setulb`) with
the bounds set up by NumPy. Whether this scipy has that routine with the expected signature is
probed once, on a one-variable problem; when it does not, `minimize` is used and one warning line
says so. Every result names the path that ran (`driver`). tests/test_sharpness.py checks that both
give identical results.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import numpy as np
import scipy.optimize
import threadpoolctl

FunGrad = Callable[[np.ndarray], tuple[float, np.ndarray]]
FAST, PUBLIC = "setulb (vectorised bounds)", "scipy.optimize.minimize"
# L-BFGS-B's own BLAS calls run on one thread. Its vector operations are too short for threads to
# pay (2 cores, n = 1.46M, m = 10: 185 against 228 ms an evaluation), and an OpenBLAS worker left
# idle spins for a while after each call, taking a core from the loss+gradient pass that follows
# (F1 on 4000 examples: passes inside a sharpness run took 1.17x bare ones, 1.01x on one thread).
SETULB_BLAS_THREADS = 1
# The scipy minor versions whose `_lbfgsb.setulb` the identity test (tests/test_lbfgsb.py) has
# passed on (1.15.3, 1.16.3, 1.17.1); another version runs the public path until it is checked.
TESTED_SCIPY = ((1, 15), (1, 16), (1, 17))


def _scipy_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


@functools.cache
def fast_path_available() -> bool:
    """True when scipy's private L-BFGS-B routine runs with the signature the driver expects
    (scipy >= 1.15) and this scipy's minor version is one the identity test has passed on
    (TESTED_SCIPY): a private routine may change its signature without raising. Probed once per
    process on min (x - 1)^2 over [0, 3]; the first call that refuses it prints one warning line."""
    if _scipy_minor(scipy.__version__) not in TESTED_SCIPY:
        print(f"lbtf: warning: scipy {scipy.__version__} is not one of the versions lbtf's L-BFGS-B "
              f"driver was tested on ({', '.join(f'{a}.{b}' for a, b in TESTED_SCIPY)}); using "
              f"{PUBLIC}, which converts box bounds in Python (slow for millions of weights)",
              file=sys.stderr)
        return False
    try:
        res = _driver(lambda x: (float((x[0] - 1) ** 2), 2 * (x - 1)), np.zeros(1), np.zeros(1),
                      np.full(1, 3.0), maxiter=20, m=10, maxfun=100)
        ok = bool(abs(res.x[0] - 1) < 1e-4)
    except (ImportError, AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        print(f"lbtf: warning: scipy {scipy.__version__} lacks the L-BFGS-B routine lbtf drives "
              f"directly; using {PUBLIC}, which converts box bounds in Python (slow for millions "
              "of weights; scipy >= 1.15 avoids it)", file=sys.stderr)
    return ok


def minimize_box(fun_grad: FunGrad, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, *,
                 maxiter: int, m: int = 10, maxfun: int = 15000,
                 fast: bool = True) -> scipy.optimize.OptimizeResult:
    """Minimises f over lower <= x <= upper from x0 (scipy's default tolerances). The result's
    `driver` says which path ran, `iterate_nfev` how many evaluations had been made when each
    iterate was accepted; errors raised by `fun_grad` propagate."""
    if fast and fast_path_available():
        res = _driver(fun_grad, x0, lower, upper, maxiter=maxiter, m=m, maxfun=maxfun)
        res.driver = FAST
        return res
    calls = [0]

    def counted(x):
        calls[0] += 1
        return fun_grad(x)

    marks: list[int] = []
    with threadpoolctl.threadpool_limits(SETULB_BLAS_THREADS, user_api="blas"):  # fun_grad too
        res = scipy.optimize.minimize(counted, x0, jac=True, method="L-BFGS-B",
                                      bounds=scipy.optimize.Bounds(lower, upper),
                                      callback=lambda xk: marks.append(calls[0]),
                                      options={"maxiter": maxiter, "maxcor": m, "maxfun": maxfun})
    res.driver, res.iterate_nfev = PUBLIC, marks
    return res


def _driver(fun_grad: FunGrad, x0, lower, upper, *, maxiter: int, m: int, maxfun: int,
            factr: float = 1e7, pgtol: float = 1e-5, maxls: int = 20):
    from scipy.optimize import _lbfgsb
    from scipy.optimize._lbfgsb_py import status_messages, task_messages

    blas = threadpoolctl.ThreadpoolController()  # after the import: sees scipy's OpenBLAS
    n = x0.size
    low, up = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    # nbd: 0 unbounded, 1 lower only, 2 both, 3 upper only (L-BFGS-B's encoding).
    has_low, has_up = np.isfinite(low), np.isfinite(up)
    nbd = np.where(has_low & has_up, 2, np.where(has_low, 1, np.where(has_up, 3, 0))).astype(np.int32)
    low, up = np.where(has_low, low, 0.0), np.where(has_up, up, 0.0)
    x = np.clip(np.array(x0, np.float64), lower, upper)
    cache: dict = {}

    def evaluate(point: np.ndarray) -> tuple[float, np.ndarray]:
        # Like scipy's ScalarFunction: a point asked for twice in a row is evaluated once.
        if "x" not in cache or not np.array_equal(cache["x"], point):
            f, g = fun_grad(point.copy())
            cache.update(x=point.copy(), f=float(f), g=np.asarray(g, np.float64),
                         nfev=cache.get("nfev", 0) + 1)
        return cache["f"], cache["g"]

    f0, g0 = evaluate(x)
    f, g = np.array(f0, np.float64), g0.copy()
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
    iwa = np.zeros(3 * n, np.int32)
    task, ln_task = np.zeros(2, np.int32), np.zeros(2, np.int32)
    lsave, isave, dsave = np.zeros(4, np.int32), np.zeros(44, np.int32), np.zeros(29, np.float64)
    nit, marks = 0, []
    while True:
        with blas.limit(limits=SETULB_BLAS_THREADS, user_api="blas"):
            _lbfgsb.setulb(m, x, low, up, nbd, f, g, factr, pgtol, wa, iwa, task, lsave, isave,
                           dsave, maxls, ln_task)
        if task[0] == 3:  # wants f and g at x
            fx, gx = evaluate(x)
            f, g = np.array(fx, np.float64), gx.copy()
        elif task[0] == 1:  # a new iterate
            nit += 1
            marks.append(cache["nfev"])
            if nit >= maxiter:
                task[:] = (5, 504)
            elif cache["nfev"] > maxfun:
                task[:] = (5, 502)
        else:
            break
    warn = 0 if task[0] == 4 else (1 if cache["nfev"] > maxfun or nit >= maxiter else 2)
    return scipy.optimize.OptimizeResult(
        x=x, fun=float(f), jac=g, nit=nit, nfev=cache["nfev"], status=warn, success=warn == 0,
        message=status_messages[task[0]] + ": " + task_messages[task[1]], iterate_nfev=marks)
