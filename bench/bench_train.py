"""Training throughput: lbtf's in-graph loop against Keras Model.fit, side by side in one run.

F1 on MNIST-shaped synthetic data (60000 x 784), Adam, batch 256 and 6000. Also reports the loop's
FLOP/s against a large float32 matrix product measured in the same process (the machine's practical
peak), so the figures are ratios, comparable across machines. Targets (issue 3): >= 2x fit at
batch 256, >= 1.2x at batch 6000, >= 75% of the matrix product's FLOP/s at both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def dense_train_flops(model: keras.Model) -> float:
    """Training FLOPs per example from the dense layers: forward 2mn, weight gradient 2mn, input
    gradient 2mn except for the first layer (nothing upstream needs it). BN/ReLU are ignored."""
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    flops = 0.0
    for i, layer in enumerate(dense):
        m, n = layer.kernel.shape
        flops += 2 * m * n * (2 if i == 0 else 3)
    return flops


def matmul_flops_per_s(n: int = 2048, reps: int = 20) -> float:
    """FLOP/s of a chain of n x n float32 products. Each product feeds the next, so XLA cannot
    hoist it out of the loop; b is scaled by 1/sqrt(n) so the values stay bounded."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n)) / n**0.5

    @tf.function(jit_compile=True)
    def chain(a, b):
        for _ in tf.range(reps):
            a = tf.matmul(a, b)
        return a

    chain(a, b).numpy()
    best = statistics.median(_timed(lambda: chain(a, b).numpy()) for _ in range(3))
    return 2 * n**3 * reps / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_batch(data, batch: int, repeats: int) -> dict:
    def build():
        keras.utils.set_random_seed(0)
        return build_model("F1", input_shape=data.input_shape, num_classes=data.num_classes)

    trainer = Trainer(build, data, TrainConfig(batch_size=batch))
    rng = np.random.default_rng(0)
    trainer.train_epoch(rng)  # trace and compile
    steps = data.num_train // batch
    t_loop = statistics.median(_timed(lambda: trainer.train_epoch(rng)) for _ in range(repeats))

    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(data.x_train, data.y_train, batch_size=batch, epochs=1, verbose=0)
    t_fit = statistics.median(_timed(lambda: model.fit(data.x_train, data.y_train, batch_size=batch, epochs=1,
                                         verbose=0)) for _ in range(repeats))
    loop_sps = steps * batch / t_loop
    fit_sps = data.num_train / t_fit
    return {"batch": batch, "loop_samples_s": loop_sps, "fit_samples_s": fit_sps,
            "ratio": loop_sps / fit_sps, "loop_flops": loop_sps * dense_train_flops(trainer.model)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed epochs; the median is kept")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 6000])
    args = p.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=1000)
    peak = matmul_flops_per_s()
    print(f"matrix product (2048^3, XLA): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'batch':>6} {'lbtf samples/s':>15} {'fit samples/s':>14} {'ratio':>6} "
          f"{'lbtf GFLOP/s':>13} {'of matmul':>9}")
    targets = {256: 2.0, 6000: 1.2}
    for b in args.batches:
        r = bench_batch(data, b, args.repeats)
        share = r["loop_flops"] / peak
        print(f"{b:6d} {r['loop_samples_s']:15.0f} {r['fit_samples_s']:14.0f} {r['ratio']:6.2f} "
              f"{r['loop_flops'] / 1e9:13.1f} {share:9.0%}")
        if b in targets:
            ok = r["ratio"] >= targets[b] and share >= 0.75
            print(f"       target: >= {targets[b]}x fit and >= 75% of matmul: "
                  f"{'met' if ok else 'NOT met'}")

if __name__ == "__main__":
    main()
