"""Sharpness (Metric 2.1) cost, on F1 with MNIST-sized synthetic data, in one run:

(a) full-space sharpness wall time against nfev x one full-data loss+gradient pass (target: at most
    10% overhead), the pass timed both bare (--passes right before and as many right after the
    run, so that drift within the round falls on both sides) and inside the run itself (what
    L-BFGS-B and the glue add, free of drift), and that overhead split into scipy's L-BFGS-B
    routine (setulb, its O(m n) work an iteration) and lbtf's glue;
(b) that pass's FLOP/s against a chained matrix product timed in the same round;
(c) random subspace p = 100, time per evaluation and peak memory against full space, with A held
    (target <= 1.1x) and streamed under a small budget, the blocks that fit kept (target <= 1.5x,
    peak within budget + model);
(d) a naive implementation (value from model.evaluate, gradient from a separate pass, public
    scipy L-BFGS-B) on the same problem (target: lbtf at least 2x faster), beside the floor its
    extra work sets by arithmetic.
Each figure is the median over --repeats rounds of the ratio taken within a round (each round
times every side once, so that drift in the machine's speed falls on all alike), with the rounds'
range (min-max); the run ends with one summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_train import dense_train_flops, matmul_chain, per_round, ratio_cell, summary  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.objective import Objective, flat_weights, set_flat_weights  # noqa: E402
from lbtf.sharpness import Subspace, box_halfwidths, sharpness_at  # noqa: E402


class TimedObjective:
    """An Objective whose loss+gradient passes add up their wall time in `seconds`."""

    def __init__(self, objective: Objective):
        self.objective, self.n, self.seconds = objective, objective.n, 0.0

    def value_and_gradient(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        t = time.perf_counter()
        out = self.objective.value_and_gradient(w)
        self.seconds += time.perf_counter() - t
        return out


class PeakRSS:
    """Peak resident memory above the level at entry: the kernel's high-water mark (VmHWM), reset
    on entry through /proc/self/clear_refs, so no sampling thread competes with the timed run (a
    5 ms /proc sampler slowed full-space sharpness by 5-8%). Where the reset is not allowed, the
    sampler is the fallback."""

    def __enter__(self):
        self.base = self.peak = self._status("VmRSS")
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._status("VmRSS"))

    def __exit__(self, *exc):
        if self._thread is None:  # the high-water mark covers the current RSS too
            self.peak = self._status("VmHWM")
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._status("VmRSS"))

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def naive_sharpness(model, x, y, epsilon: float, maxiter: int) -> tuple[float, int]:
    """What public scripts do: f from model.evaluate, the gradient from a second pass."""
    model.compile(loss="sparse_categorical_crossentropy")
    w0 = flat_weights(model)
    h = box_halfwidths(w0, epsilon)

    def f_and_g(d):
        set_flat_weights(model, w0 + d)
        f = model.evaluate(x, y, batch_size=4096, verbose=0)
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=False))
            loss = tf.reduce_mean(loss)
        g = np.concatenate([t.numpy().ravel() for t in tape.gradient(loss, model.trainable_variables)])
        return -f, -g.astype(np.float64)

    res = scipy.optimize.minimize(f_and_g, np.zeros_like(w0), jac=True, method="L-BFGS-B",
                                  bounds=scipy.optimize.Bounds(-h, h), options={"maxiter": maxiter})
    set_flat_weights(model, w0)
    return -res.fun, int(res.nfev)


def conversion_seconds(n: int) -> float:
    """What scipy.optimize.minimize spends on n box bounds before its first iteration: the whole
    call on a quadratic stopped after one iteration (its two evaluations cost microseconds)."""
    h = np.full(n, 1e-3)
    t = time.perf_counter()
    scipy.optimize.minimize(lambda x: (float(x @ x), 2 * x), np.full(n, 1e-4), jac=True,
                            method="L-BFGS-B", bounds=scipy.optimize.Bounds(-h, h),
                            options={"maxiter": 1})
    return time.perf_counter() - t


@contextlib.contextmanager
def setulb_timed(seconds: list[float]):
    """Adds the wall time of every call of scipy's L-BFGS-B routine (`_lbfgsb.setulb`, which
    lbtf.lbfgsb drives) to seconds[0] while inside: the optimiser's own O(m n) work an
    iteration, apart from the passes and lbtf's glue."""
    from scipy.optimize import _lbfgsb
    original = _lbfgsb.setulb

    def timed(*args):
        t = time.perf_counter()
        try:
            return original(*args)
        finally:
            seconds[0] += time.perf_counter() - t

    _lbfgsb.setulb = timed
    try:
        yield
    finally:
        _lbfgsb.setulb = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=60000)
    p.add_argument("--maxiter", type=int, default=10)
    p.add_argument("--budget_mb", type=float, default=64, help="budget for the streamed subspace")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--passes", type=int, default=3,
                   help="bare passes a round, averaged as the full-space time averages its own")
    args = p.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=args.examples, num_test=10)
    keras.utils.set_random_seed(0)
    model = build_model("F1", input_shape=(784,), num_classes=10)
    x, y = data.x_train, data.y_train
    run_chain, chain_flops = matmul_chain()
    obj = Objective(model, x, y)
    w0 = flat_weights(model)
    obj.value_and_gradient(w0)  # compile
    print(f"F1, {len(x)} examples, n = {w0.size} weights")
    # Rounds: each times bare passes, full space, bare passes again, the held and the streamed
    # subspace, and the naive version, so that drift in the machine's speed falls on every side alike.
    t = {k: [] for k in ("chain", "before", "after", "full", "inside", "setulb", "glue", "held",
                         "streamed", "products", "naive")}
    bare = lambda: [_timed(lambda: obj.value_and_gradient(w0)) for _ in range(args.passes)]  # noqa: E731
    for _ in range(args.repeats):
        t["chain"].append(_timed(run_chain))
        t["before"].append(np.mean(bare()))
        timed, setulb = TimedObjective(obj), [0.0]
        with PeakRSS() as mem_full, setulb_timed(setulb):
            full = sharpness_at(timed, w0, epsilon=1e-3, maxiter=args.maxiter)
        t["after"].append(np.mean(bare()))
        t["full"].append(full.seconds / full.nfev)
        t["inside"].append(full.seconds / timed.seconds)
        t["setulb"].append(setulb[0] / full.nfev)
        t["glue"].append((full.seconds - timed.seconds - setulb[0]) / full.nfev)
        for label, budget in (("held", 4096), ("streamed", args.budget_mb)):
            with PeakRSS() as mem:
                sub = Subspace(w0.size, 100, seed=0, memory_budget_mb=budget)
                center = sub.pinv_apply(w0)
                t0 = time.perf_counter()
                res = sharpness_at(obj, w0, epsilon=1e-3, subspace=sub, center=center,
                                   maxiter=args.maxiter)
                t[label].append((time.perf_counter() - t0) / res.nfev)
            print(f"(c) subspace p=100, A {label} (budget {budget:g} MB): peak memory +{mem.mb:.0f} "
                  f"MB (full space +{mem_full.mb:.0f} MB); {res.nfev} evaluations")
        # Where the streamed time goes: A y and A^T g draw A's streamed blocks again.
        t["products"].append(_timed(lambda s=sub: s.matvec(np.ones(s.p)))
                             + _timed(lambda s=sub: s.rmatvec(np.ones(s.n))))
        kept = sub.num_held
        print(f"(c) streamed A y + A^T g alone: {t['products'][-1]:.2f}s, "
              f"{2 * (sub.n - kept * sub.block_rows) * sub.p / 1e6:.0f}M normal numbers drawn "
              f"({kept} of {sub.num_blocks} blocks kept; ziggurat on {sub.workers} threads)")
        del sub
        t0 = time.perf_counter()
        f_naive, nfev_naive = naive_sharpness(model, x, y, 1e-3, args.maxiter)
        t["naive"].append((time.perf_counter() - t0) / nfev_naive)
    t["pass"] = [(b + a) / 2 for b, a in zip(t["before"], t["after"], strict=True)]
    # The naive version's extra work, at lbtf's rate: model.evaluate's forward pass (a third of a
    # loss+gradient pass's FLOPs) each evaluation, and scipy's bound conversion once a run.
    conversion = conversion_seconds(w0.size)
    naive_floor = [4 / 3 * q + conversion / nfev_naive for q in t["pass"]]
    print(f"(d) scipy.optimize.minimize's bound conversion: {conversion:.1f}s a run at n = {w0.size}")
    print(f"(a) full space: {full.seconds:.1f}s for {full.nfev} evaluations; phi = {full.value:.2f}; "
          f"(d) naive: f_max {f_naive:.4g} vs lbtf {full.f_max:.4g}")
    print(f"(a) full space, where an evaluation's time goes (median of the rounds): pass inside "
          f"the run {statistics.median(t['full']) / statistics.median(t['inside']):.2f}s, "
          f"scipy's setulb {_ms(t['setulb'])} at n = {w0.size}, m = 10, lbtf's glue "
          f"{_ms(t['glue'])}; a bare pass {_ms(t['pass'])} (before the run {_ms(t['before'])}, "
          f"after it {_ms(t['after'])})")
    # Seconds a pass would take at the matrix product's rate of the same round.
    at_peak = [len(x) * dense_train_flops(model) * c / chain_flops for c in t["chain"]]
    print(f"matrix product (2048^3, XLA): {chain_flops / statistics.median(t['chain']) / 1e9:.0f} "
          f"GFLOP/s ({chain_flops / max(t['chain']) / 1e9:.0f}-{chain_flops / min(t['chain']) / 1e9:.0f})")
    floor = [f + q for f, q in zip(t["full"], t["products"], strict=True)]
    rows = [("(b) loss+gradient pass FLOP/s against the matrix product",
             *_cell(per_round(at_peak, t["pass"]), [1.0], ">= 75%", lambda m: m >= 0.75,
                    fmt="{:.0%}")),
            ("(a) full space per evaluation against one bare pass",
             *_cell(per_round(t["full"], t["pass"]), [1.0], "<= 1.10x", lambda m: m <= 1.10)),
            ("(a) full space against its own passes, timed inside the run",
             *_cell(t["inside"], [1.0], "<= 1.10x", lambda m: m <= 1.10)),
            ("(a) one bare pass + setulb's time an evaluation (scipy's L-BFGS-B routine, in the "
             "run), against one bare pass",
             *_cell(per_round([q + b for q, b in zip(t["pass"], t["setulb"], strict=True)],
                              t["pass"]), [1.0], "- (floor of the two lines above)",
                    lambda m: None)),
            ("(c) subspace p=100, A held, per evaluation against full space",
             *_cell(per_round(t["held"], t["full"]), [1.0], "<= 1.1x", lambda m: m <= 1.1)),
            ("(c) subspace p=100, A streamed, per evaluation against full space",
             *_cell(per_round(t["streamed"], t["full"]), [1.0], "<= 1.5x", lambda m: m <= 1.5)),
            ("(c) streamed: full space + A y + A^T g timed alone, against full space",
             *_cell(per_round(floor, t["full"]), [1.0], "- (floor: streamed blocks drawn twice)",
                    lambda m: None)),
            ("(d) naive per evaluation against lbtf's full space",
             *_cell(per_round(t["naive"], t["full"]), [1.0], ">= 2x", lambda m: m >= 2)),
            ("(d) naive's extra work by arithmetic (one forward pass an evaluation, the bound "
             "conversion a run) at lbtf's pass rate, against lbtf's full space",
             *_cell(per_round(naive_floor, t["full"]), [1.0], "- (floor of the line above)", lambda m: None))]
    summary(rows)


def _cell(num, den, target: str, met, fmt: str = "{:.2f}x") -> tuple:
    """(median (min-max), target, met) of median(num) / median(den)."""
    cell, med = ratio_cell(num, den, fmt=fmt)
    return cell, target, met(med)


def _ms(seconds: list[float]) -> str:
    """median (min-max) in milliseconds."""
    return ratio_cell(seconds, [1.0], 1e3, "{:.0f}")[0] + " ms"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
