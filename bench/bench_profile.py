"""Where a training step's time goes, as a roofline: F1 on 60000 x 784 synthetic data, Adam.

The step is built up in four compiled loops over the same batches, each adding one part:
  1. the dense layers' matrix products, forward and backward (no BN, no ReLU, no update);
  2. + BN, ReLU and softmax cross-entropy (the whole forward-backward pass);
  3. + Adam's update of the 1.07M weights (a whole step, as a bare tf.function);
  4. lbtf's training loop itself (`Trainer.train_epoch`: batch gathering, clipping, the loss
     scaled for tf.distribute).
Each part's time is the difference from the loop before it, taken round by round (every round
times all four loops, the matrix product and the triads in turn), at batch 256 and 6000. Its floor
is the roofline: max(FLOPs / matrix-product rate, bytes / bandwidth), both measured in the same
round: a chained 2048^3 product, and a triad b = b + s c over arrays the size of the part's data
(one hidden activation for BN, ReLU and the loss, which at batch 256 lives in cache; the weights
for Adam). What remains above the floors is overhead (small-matrix inefficiency, XLA's element-wise
code, Python), shown per part. The summary gives F1's own matrix products against the 2048^3
product: the most `bench_train`'s FLOP/s share could reach if nothing but the products took time.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_train import dense_train_flops, matmul_chain, ratio_cell, summary, timed_rounds  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def triad(elements: int, moved: float = 4e9):
    """A compiled triad b = b + s c over arrays of `elements` floats, repeated until about `moved`
    bytes have streamed; as (run, bytes moved: 3 arrays a repetition). Sized like the data a part
    streams, it runs from the memory level that data lives in (cache for small arrays)."""
    reps = max(1, int(moved / (12 * elements)))
    b, c = tf.random.normal((elements,)), tf.random.normal((elements,))

    @tf.function(jit_compile=True)
    def run(b, c):
        for _ in tf.range(reps):
            b = b + 1e-3 * c
        return b

    run(b, c).numpy()
    return (lambda: run(b, c).numpy()), 12 * elements * reps


def part_loops(model: keras.Model, optimizer, x, y, batch: int):
    """Compiled loops over all batches: matmuls only, forward-backward, a whole bare step."""
    dense = [la for la in model.layers if isinstance(la, keras.layers.Dense)]
    steps = len(x) // batch
    variables = model.trainable_variables

    # The output weighted by the batch's one-hot labels (the sum of the true class's logits), not
    # summed or weighted by a constant: a loop-invariant output gradient makes the whole chain of
    # input gradients, w.r.t. kernels the loop never updates, loop-invariant too, and XLA hoists
    # those products out of the loop (measured: 3-4 ms a step too little at batch 256).
    def matmuls(xb, yb):
        h = xb
        for la in dense:
            h = tf.matmul(h, la.kernel)
        return tf.reduce_sum(h * tf.one_hot(yb, h.shape[1]))

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
    return {"matmuls": loop(grads_of(matmuls, kernels)),
            "forward-backward": loop(grads_of(loss, variables)), "bare step": loop(step)}


def cell(values: list[float], scale: float = 1e3, digits: int = 2) -> str:
    """median (min-max) of scale * values."""
    return ratio_cell(values, [1.0], scale, f"{{:.{digits}f}}")[0]


def roofline(seconds: dict, work: dict, steps: int, chain_flops: float, streams: dict) -> list:
    """Per round: each part's time (its loop's minus the loop before it) per step, and its floor
    max(FLOPs / that round's matrix-product rate, bytes / that round's bandwidth for its data)."""
    rounds = []
    for r in range(len(seconds["chain"])):
        peak = chain_flops / seconds["chain"][r]
        bandwidth = {k: moved / seconds[f"triad {k}"][r] for k, (_, moved) in streams.items()}
        before, parts = 0.0, {}
        for name, (flops, moved, data) in work.items():
            total = seconds[name][r] / steps
            parts[name] = (total - before, max(flops / peak, moved / bandwidth.get(data, 1.0)))
            before = total
        rounds.append({"parts": parts, "step": before, "peak": peak, "bandwidth": bandwidth,
                       "floor": sum(f for _, f in parts.values())})
    return rounds


def print_roofline(rounds: list[dict], work: dict) -> None:
    print("| part (added to the row above) | ms per step | FLOPs | bytes | roofline floor ms | "
          "above the floor ms |\n|---|---|---|---|---|---|")
    for name, (flops, moved, _) in work.items():
        part = [r["parts"][name][0] for r in rounds]
        floor = [r["parts"][name][1] for r in rounds]
        print(f"| {name} | {cell(part)} | {flops / 1e9:.2f} G | {moved / 1e6:.1f} MB | "
              f"{cell(floor)} | {cell([p - f for p, f in zip(part, floor, strict=True)])} |")
    step, floor = [r["step"] for r in rounds], [r["floor"] for r in rounds]
    print(f"| whole step | {cell(step)} | | | {cell(floor)} | "
          f"{cell([s - f for s, f in zip(step, floor, strict=True)])} |")
    share = [r["floor"] / r["step"] for r in rounds]
    matmuls = [r["parts"]["matmuls"][0] / r["step"] for r in rounds]
    print(f"\nThe step runs at {cell(share, 100, 0)}% of its roofline floor, and its matrix "
          f"products take {cell(matmuls, 100, 0)}% of it (round by round; median (min-max)).")


def profile(data, batch: int, repeats: int) -> tuple[list[dict], dict]:
    """The four loops, the matrix product and the triads at one batch size, timed in rounds; the
    rounds' roofline and the work per part."""
    keras.utils.set_random_seed(0)
    trainer = Trainer(lambda: build_model("F1", input_shape=(784,), num_classes=10), data,
                      TrainConfig(batch_size=batch))
    model, steps = trainer.model, data.num_train // batch
    adam = keras.optimizers.Adam(1e-3)
    adam.build(model.trainable_variables)  # slots before tracing
    runs = part_loops(model, adam, tf.constant(data.x_train), tf.constant(data.y_train), batch)
    rng = np.random.default_rng(0)
    runs["lbtf loop"] = lambda: trainer.train_epoch(rng)
    weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    # Bandwidth where each part's data lives: one hidden activation (batch x 512) for BN, ReLU and
    # the loss, all the weights for Adam.
    streams = {"activations": triad(batch * 512), "weights": triad(weights)}
    chain = matmul_chain()
    for run in runs.values():
        run()  # compiles
    seconds = timed_rounds({**runs, "chain": chain[0],
                            **{f"triad {k}": run for k, (run, _) in streams.items()}}, repeats)
    acts = batch * 512 * 5  # hidden activations per step
    # Work per step: matmul FLOPs; BN+ReLU+loss stream each activation ~10 times (forward and
    # backward, 4 bytes); Adam reads w, g, m, v and writes w, m, v.
    work = {"matmuls": (batch * dense_train_flops(model), 0, None),
            "forward-backward": (0, 10 * 4 * acts, "activations"),
            "bare step": (0, 7 * 4 * weights, "weights"), "lbtf loop": (0, 0, None)}
    return roofline(seconds, work, steps, chain[1], streams), work


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[256, 6000])
    p.add_argument("--repeats", type=int, default=5, help="rounds; each times every part")
    args = p.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=10)
    rows = []
    for batch in args.batches:
        rounds, work = profile(data, batch, args.repeats)
        own = [work["matmuls"][0] / r["parts"]["matmuls"][0] for r in rounds]
        bw = {k: cell([r["bandwidth"][k] for r in rounds], 1e-9, 0) for k in ("activations", "weights")}
        print(f"\nF1, batch {batch}, {data.num_train // batch} steps, {args.repeats} rounds. GFLOP/s: "
              f"matrix product (2048^3) {cell([r['peak'] for r in rounds], 1e-9, 0)}, F1's own "
              f"matrix products {cell(own, 1e-9, 0)}. GB/s, triad over one activation's size "
              f"{bw['activations']}, over the weights' {bw['weights']}\n")
        print_roofline(rounds, work)
        share = [o / r["peak"] for o, r in zip(own, rounds, strict=True)]
        rows += [(f"batch {batch}: F1's matrix products against the 2048^3 product (the ceiling "
                  "of bench_train's FLOP/s share)", f"{cell(share, 100, 0)}%", "-", None),
                 (f"batch {batch}: the step's roofline floor against its time",
                  f"{cell([r['floor'] / r['step'] for r in rounds], 100, 0)}%",
                  "-", None)]
    summary(rows)


if __name__ == "__main__":
    main()
