"""The L-BFGS-B driver (lbtf.lbfgsb): the fast path equals scipy.optimize.minimize, errors
propagate, a missing routine is recorded."""

import numpy as np
import pytest


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


def test_setulb_runs_its_blas_on_one_thread_and_the_objective_keeps_its_threads(monkeypatch):
    import threadpoolctl
    from scipy.optimize import _lbfgsb

    from lbtf.lbfgsb import FAST, minimize_box

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    original, in_setulb, in_fun = _lbfgsb.setulb, [], []

    def recording(*args):
        in_setulb.append(blas_threads())
        return original(*args)

    def fun(x):
        in_fun.append(blas_threads())
        return float(x @ x), 2 * x

    monkeypatch.setattr(_lbfgsb, "setulb", recording)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert blas_threads() == {2}
        res = minimize_box(fun, np.ones(3), -np.full(3, 2.0), np.full(3, 2.0), maxiter=5)
        assert blas_threads() == {2}  # restored after the run
    assert res.driver == FAST and in_setulb and all(t == {1} for t in in_setulb)
    assert in_fun and all(t == {2} for t in in_fun)


@pytest.mark.parametrize("version,fast", [("1.17.1", True), ("1.15.0rc1", True),
                                          ("1.18.0", False), ("1.14.1", False), ("2.0.0", False)])
def test_the_fast_path_runs_only_on_tested_scipy_versions(monkeypatch, capsys, version, fast):
    import scipy

    import lbtf.lbfgsb as lb

    monkeypatch.setattr(scipy, "__version__", version)
    lb.fast_path_available.cache_clear()
    try:
        assert lb.fast_path_available() is fast
    finally:
        lb.fast_path_available.cache_clear()
    assert ("not one of the versions" in capsys.readouterr().err) is not fast
