"""Where a training step's time goes, as a roofline: F1 on 60000 x 784 synthetic data, Adam.

The step is built up in four compiled loops over the same batches, each adding one part:
  1. the dense layers' matrix products, forward and backward (no BN, no ReLU, no update);
  2. + BN, ReLU and softmax cross-entropy (the whole forward-backward pass);
  3. + Adam's update of the 1.07M weights (a whole step, as a bare tf.function);
  4. lbtf's training loop itself (`Trainer.train_epoch`: batch gathering, clipping, the loss
     scaled for tf.distribute).
Each part's time is the difference from the loop before it. Its floor is the roofline:
max(FLOPs / matrix-product rate, bytes / memory bandwidth), both measured in this run (a chained
2048^3 product; a 64 MB triad a = b + s c). Matmuls are compute-bound; BN, ReLU and Adam stream
their operands and are bandwidth-bound. What remains above the floors is overhead (kernel
launches, small-matrix inefficiency, Python), shown per part.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_train import dense_train_flops, matmul_flops_per_s, times  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def bandwidth_bytes_per_s(mb: int = 64, reps: int = 20) -> float:
    """Bytes/s of the triad a = b + s c over `mb` MB arrays (3 arrays moved per repetition)."""
    n = mb * 2**20 // 4
    b, c = tf.random.normal((n,)), tf.random.normal((n,))

    @tf.function(jit_compile=True)
    def triad(b, c):
        for _ in tf.range(reps):
            b = b + 1e-3 * c
        return b

    triad(b, c).numpy()
    return 3 * 4 * n * reps / statistics.median(times(lambda: triad(b, c).numpy(), 3))


def part_loops(model: keras.Model, optimizer, x, y, batch: int):
    """Compiled loops over all batches: matmuls only, forward-backward, a whole bare step."""
    dense = [la for la in model.layers if isinstance(la, keras.layers.Dense)]
    steps = len(x) // batch
    variables = model.trainable_variables

    def matmuls(xb):
        h = xb
        for la in dense:
            h = tf.matmul(h, la.kernel)
        return tf.reduce_sum(h)

    def loss(xb, yb):
        probs = model(xb, training=True)
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, probs))

    def loop(body):
        @tf.function(jit_compile=True)
        def run():
            total = tf.constant(0.0)
            for i in tf.range(steps):
                xb = tf.slice(x, [i * batch, 0], [batch, x.shape[1]])
                yb = tf.slice(y, [i * batch], [batch])
                total += body(xb, yb)
            return total
        return lambda: run().numpy()

    def grads_of(f, sources):
        def body(xb, yb):
            with tf.GradientTape() as tape:
                value = f(xb, yb)
            return value + tf.add_n([tf.reduce_sum(g) for g in tape.gradient(value, sources)])
        return body

    def step(xb, yb):
        with tf.GradientTape() as tape:
            value = loss(xb, yb)
        optimizer.apply_gradients(zip(tape.gradient(value, variables), variables, strict=True))
        return value

    kernels = [la.kernel for la in dense]
    return {"matmuls": loop(grads_of(lambda xb, yb: matmuls(xb), kernels)),
            "forward-backward": loop(grads_of(loss, variables)), "bare step": loop(step)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=10)
    peak, bandwidth = matmul_flops_per_s(), bandwidth_bytes_per_s()
    keras.utils.set_random_seed(0)
    trainer = Trainer(lambda: build_model("F1", input_shape=(784,), num_classes=10), data,
                      TrainConfig(batch_size=args.batch))
    model, steps = trainer.model, data.num_train // args.batch
    x, y = tf.constant(data.x_train), tf.constant(data.y_train)
    adam = keras.optimizers.Adam(1e-3)
    adam.build(model.trainable_variables)  # slots before tracing
    loops = part_loops(model, adam, x, y, args.batch)
    rng = np.random.default_rng(0)
    loops["lbtf loop"] = lambda: trainer.train_epoch(rng)
    seconds = {}
    for name, run in loops.items():
        run()  # compiles
        seconds[name] = statistics.median(times(run, args.repeats)) / steps
    weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    acts = args.batch * 512 * 5  # hidden activations per step
    # Work per step: matmul FLOPs; BN+ReLU+loss stream each activation ~10 times (forward and
    # backward, 4 bytes); Adam reads w, g, m, v and writes w, m, v.
    work = {"matmuls": (args.batch * dense_train_flops(model), 0),
            "forward-backward": (0, 10 * 4 * acts), "bare step": (0, 7 * 4 * weights),
            "lbtf loop": (0, 0)}
    print(f"F1, batch {args.batch}, {steps} steps; matrix product {peak / 1e9:.0f} GFLOP/s, "
          f"memory {bandwidth / 1e9:.1f} GB/s\n")
    print("| part (added to the row above) | ms per step | FLOPs | bytes | roofline floor ms | "
          "above the floor ms |\n|---|---|---|---|---|---|")
    before = 0.0
    for name, total in seconds.items():
        part = total - before
        flops, moved = work[name]
        floor = max(flops / peak, moved / bandwidth)
        print(f"| {name} | {1e3 * part:.2f} | {flops / 1e9:.2f} G | {moved / 1e6:.1f} MB | "
              f"{1e3 * floor:.2f} | {1e3 * (part - floor):.2f} |")
        before = total
    floor = sum(max(f / peak, m / bandwidth) for f, m in work.values())
    print(f"| whole step | {1e3 * before:.2f} | | | {1e3 * floor:.2f} | "
          f"{1e3 * (before - floor):.2f} |")


if __name__ == "__main__":
    main()
