"""Parametric-plot cost, on F1 with MNIST-sized synthetic data (60000 train, 10000 test).

A point of the plot needs, at the least, one forward pass over each split (train and test) and,
with BN statistics recomputed, one more forward pass over the training data in training mode.
The floor is those passes timed bare (a compiled loop of model calls); the figure is lbtf's time
per point (weights set, statistics re-estimated, both splits evaluated) against it.
Target: about 1x (at most 1.2x). Each figure is the median of --repeats rounds, each timing every
point right after its bare passes, with the range of the rounds' ratios (min-max); the run ends
with one summary table.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_train import ratio_cell, summary  # noqa: E402

from lbtf import landscape  # noqa: E402
from lbtf.data import load_synthetic  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.objective import EvalSet, make_evaluator  # noqa: E402


def bare_pass(model, x: np.ndarray, batch: int, training: bool):
    """A function timing one compiled forward pass over all of x in batches, the last one padded
    as lbtf's evaluation pads it (compiled and warmed up here)."""
    pad = -len(x) % batch
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    chunks = tf.constant(x.reshape(-1, batch, *x.shape[1:]))

    @tf.function(jit_compile=True)
    def run(xs):
        total = tf.constant(0.0)
        for i in tf.range(tf.shape(xs)[0]):
            total += tf.reduce_sum(model(xs[i], training=training)[:, 0])
        return total

    run(chunks).numpy()

    def timed() -> float:
        t0 = time.perf_counter()
        run(chunks).numpy()
        return time.perf_counter() - t0

    return timed


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=10000, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model("F1", input_shape=data.input_shape, num_classes=10)
    start = landscape.snapshot(model)
    keras.utils.set_random_seed(1)
    end = landscape.snapshot(build_model("F1", input_shape=data.input_shape, num_classes=10))
    bare = {"train": bare_pass(model, data.x_train, args.batch, False),
            "test": bare_pass(model, data.x_test, args.batch, False),
            "bn": bare_pass(model, data.x_train, args.batch, True)}
    splits = {"train": EvalSet(data.x_train, data.y_train, args.batch),
              "test": EvalSet(data.x_test, data.y_test, args.batch)}
    estimator = landscape.BatchNormEstimator(model, data.x_train, batch_size=args.batch)
    evaluate = make_evaluator(model, jit_compile=True)
    alphas = np.linspace(-1, 2, args.points)
    modes = {"interpolate": ("train", "test"), "recompute": ("train", "test", "bn")}
    path = functools.partial(landscape.evaluate_path, model, start, end, path="linear",
                             splits=splits, estimator=estimator, evaluate=evaluate)
    for bn in modes:
        path(alphas[:2], bn=bn)  # compile
    # Rounds of point-by-point alternation: before every point the bare passes it needs are
    # timed, so the host's drift (up to 1.5x within a minute here) falls on a point and its floor
    # alike; each round's ratio is its points' time over their floors.
    ratios, per_point = {bn: [] for bn in modes}, {bn: [] for bn in modes}
    for _ in range(args.repeats):
        for bn, parts in modes.items():
            spent = floor = 0.0
            for alpha in alphas:
                floor += sum(bare[k]() for k in parts)
                t0 = time.perf_counter()
                path([alpha], bn=bn)
                spent += time.perf_counter() - t0
            ratios[bn].append(spent / floor)
            per_point[bn].append(spent / len(alphas))
    rows = []
    for bn in modes:
        cell, med = ratio_cell(ratios[bn], [1.0])
        print(f"BN {bn:11s}: {statistics.median(per_point[bn]):.3f} s per point, {cell} its bare "
              "forward passes timed before it (target <= 1.2x)")
        rows.append((f"parametric plot per point, BN {bn}, against bare passes", cell, "<= 1.2x",
                     med <= 1.2))
    summary(rows)


if __name__ == "__main__":
    main()
