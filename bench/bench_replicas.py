"""Training on several replicas, on 2 logical CPU devices (as on a 2-GPU node), in one run:

(a) a training step of F1 on 2 replicas against one device at the same global batch (both without
    XLA, which is off on several replicas): the cost of splitting a step and its all-reduces
    (gradients, synchronized BN statistics); no target, as two logical devices share the same two
    cores;
(b) a step's time against the training set's size on 2 replicas (target: a step at 8x the data
    within 1.1x of a step at 1x: no per-step copy of the data), with the data placed once per
    replica (`lbtf.distribute.place`) and, beside it, as one tensor on the first device that every
    replica gathers from (lbtf before the placement).
Each figure: per-step seconds, the sides alternating round by round, median (min-max) over
--repeats, then one summary table.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_train import per_round, ratio_cell, summary, timed_rounds  # noqa: E402

import lbtf.train  # noqa: E402
from lbtf.data import load_synthetic  # noqa: E402
from lbtf.layers import norm_layer  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def step_runner(strategy, num_train: int, batch: int, *, placed: bool = True):
    """A function training one epoch of F1 on `num_train` examples; returns it and its steps."""
    data = load_synthetic(shape=(784,), num_classes=10, num_train=num_train, num_test=256, seed=0)

    def build():
        keras.utils.set_random_seed(0)
        return build_model("F1", input_shape=data.input_shape, num_classes=10,
                           norm=norm_layer("standard"))

    place = lbtf.train.place
    if not placed:  # one tensor on the first device, gathered by every replica
        lbtf.train.place = lambda strategy, array: tf.constant(array)
    try:
        trainer = Trainer(build, data, TrainConfig(batch_size=batch, jit_compile=False),
                          strategy=strategy)
    finally:
        lbtf.train.place = place
    rng = np.random.default_rng(0)
    trainer.train_epoch(rng)  # traced and compiled
    return (lambda: trainer.train_epoch(rng)), num_train // batch


def per_step(seconds: list[float], steps: int) -> list[float]:
    return [s / steps for s in seconds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--small", type=int, default=5120, help="training examples, (b)'s 1x")
    args = parser.parse_args()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(cpus)
    one = tf.distribute.get_strategy()
    b, n = args.batch, args.small
    runs = {"one device": step_runner(one, n, b), "2 replicas": step_runner(mirrored, n, b),
            "2 replicas, 8x data": step_runner(mirrored, 8 * n, b),
            "2 replicas, unplaced": step_runner(mirrored, n, b, placed=False),
            "2 replicas, unplaced, 8x data": step_runner(mirrored, 8 * n, b, placed=False)}
    seconds = timed_rounds({k: fn for k, (fn, _) in runs.items()}, args.repeats)
    step = {k: per_step(seconds[k], runs[k][1]) for k in runs}
    for k, s in step.items():
        print(f"{k:32s} {1e3 * np.median(s):7.2f} ms a step ({1e3 * min(s):.2f}-{1e3 * max(s):.2f})")
    split, _ = ratio_cell(per_round(step["2 replicas"], step["one device"]), [1.0])
    grows, med = ratio_cell(per_round(step["2 replicas, 8x data"], step["2 replicas"]), [1.0])
    old, _ = ratio_cell(per_round(step["2 replicas, unplaced, 8x data"],
                                  step["2 replicas, unplaced"]), [1.0])
    unplaced, _ = ratio_cell(per_round(step["2 replicas, unplaced"], step["2 replicas"]), [1.0])
    summary([(f"step, 2 replicas vs one device (F1, global batch {b})", split, "-", None),
             (f"step at {8 * n} vs {n} examples, placed once per replica", grows, "<= 1.1x",
              med <= 1.1),
             (f"step at {8 * n} vs {n} examples, one tensor on the first device", old, "-", None),
             ("step, one tensor on the first device vs placed", unplaced, "-", None)])


if __name__ == "__main__":
    main()
