"""Training throughput: lbtf's in-graph loop against Keras Model.fit, side by side in one run.

F1 on MNIST-shaped synthetic data (60000 x 784), Adam, batch 256 and 6000. Also reports the loop's
FLOP/s against a large float32 matrix product measured in the same process (the machine's practical
peak), so the figures are ratios, comparable across machines. Each of --repeats rounds times one
lbtf epoch, one fit epoch and one matrix-product chain, and the ratios are taken round by round.
Last, a convolutional step (C1 on 8x8 images, batch 1024) with and without XLA: lbtf compiles
convolutions on a CPU without it (`lbtf.objective.use_xla`), and this line says why. Targets
(issue 3): >= 2x fit at batch 256, >= 1.2x at batch 6000, >= 75% of the matrix product's FLOP/s
at both. Each figure is the median over the rounds (min-max), and the run ends with one summary
table.
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


def matmul_chain(n: int = 2048, reps: int = 20):
    """A compiled chain of n x n float32 products, as (run, its FLOPs). Each product feeds the
    next, so XLA cannot hoist it out of the loop; b is scaled by 1/sqrt(n) so the values stay
    bounded."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n)) / n**0.5

    @tf.function(jit_compile=True)
    def chain(a, b):
        for _ in tf.range(reps):
            a = tf.matmul(a, b)
        return a

    chain(a, b).numpy()
    return (lambda: chain(a, b).numpy()), 2 * n**3 * reps


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def times(fn, repeats: int) -> list[float]:
    return [_timed(fn) for _ in range(repeats)]


def timed_rounds(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of every run in each of `repeats` rounds, the runs in turn within a round, so that
    the host's drift (up to 1.5x within a minute here) falls on every side of one round alike."""
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(_timed(run))
    return seconds


def per_round(num: list[float], den: list[float]) -> list[float]:
    """Ratios round by round (both sides of a round timed back to back), for `ratio_cell(.., [1])`:
    drift between rounds then moves neither side against the other."""
    return [a / b for a, b in zip(num, den, strict=True)]


def ratio_cell(num: list[float], den: list[float], scale: float = 1.0, fmt: str = "{:.2f}x") -> tuple:
    """median(num) / median(den) and the range the extremes allow, formatted; and the median."""
    med = scale * statistics.median(num) / statistics.median(den)
    lo, hi = scale * min(num) / max(den), scale * max(num) / min(den)
    return f"{fmt.format(med)} ({fmt.format(lo)}-{fmt.format(hi)})", med


def summary(rows: list[tuple[str, str, str, bool | None]]) -> None:
    """One Markdown table: measure, median (min-max), target, met (None: no target)."""
    print("\n| measure | median (min-max) | target | met |\n|---|---|---|---|")
    for measure, value, target, ok in rows:
        print(f"| {measure} | {value} | {target} | {'-' if ok is None else 'met' if ok else 'NOT MET'} |")


def bench_batch(data, batch: int, repeats: int, chain) -> dict:
    """`repeats` rounds, each timing one lbtf epoch, one `fit` epoch and one matrix-product chain
    (`chain` = (run, FLOPs)), so that drift in the machine's speed falls on all three alike."""
    def build():
        keras.utils.set_random_seed(0)
        return build_model("F1", input_shape=data.input_shape, num_classes=data.num_classes)

    trainer = Trainer(build, data, TrainConfig(batch_size=batch))
    rng = np.random.default_rng(0)
    trainer.train_epoch(rng)  # trace and compile
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    fit = lambda: model.fit(data.x_train, data.y_train, batch_size=batch, epochs=1, verbose=0)  # noqa: E731
    fit()
    run_chain, chain_flops = chain
    t = timed_rounds({"loop": lambda: trainer.train_epoch(rng), "fit": fit, "chain": run_chain},
                     repeats)
    t_loop, t_fit, t_chain = t["loop"], t["fit"], t["chain"]
    # Samples per second: fit's epoch sees every example, the loop drops the remainder.
    steps = data.num_train // batch
    loop_work = steps * batch / data.num_train
    flops = steps * batch * dense_train_flops(trainer.model)
    return {"batch": batch, "fit_speedup": [f / (t / loop_work) for f, t in zip(t_fit, t_loop, strict=True)],
            "share": [flops / t / (chain_flops / c) for t, c in zip(t_loop, t_chain, strict=True)],
            "loop_s": t_loop, "fit_s": t_fit, "flops": flops, "peak": [chain_flops / c for c in t_chain]}


def conv_step_seconds(jit: bool, repeats: int, batch: int = 1024) -> list[float]:
    """Seconds of one SGD step of C1 on 8x8x1 images, as a bare tf.function with or without XLA."""
    keras.utils.set_random_seed(0)
    model = build_model("C1", input_shape=(8, 8, 1), num_classes=10)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    x = tf.random.uniform((batch, 8, 8, 1))
    y = tf.random.uniform((batch,), maxval=10, dtype=tf.int32)

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    step().numpy()
    return times(lambda: step().numpy(), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed epochs; the median is kept")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 6000])
    args = p.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=1000)
    chain = matmul_chain()
    targets = {256: 2.0, 6000: 1.2}
    rows = []
    for b in args.batches:
        r = bench_batch(data, b, args.repeats, chain)
        med = statistics.median
        print(f"batch {b}: lbtf {med(r['loop_s']):.2f}s an epoch, fit {med(r['fit_s']):.2f}s; lbtf "
              f"{r['flops'] / med(r['loop_s']) / 1e9:.1f} GFLOP/s, matrix product (2048^3, XLA) "
              f"{med(r['peak']) / 1e9:.1f} ({min(r['peak']) / 1e9:.0f}-{max(r['peak']) / 1e9:.0f})")
        # Ratios taken round by round: median (min-max) over the rounds.
        speed, ratio = ratio_cell(r["fit_speedup"], [1.0])
        share_text, share = ratio_cell(r["share"], [1.0], 100.0, "{:.0f}%")
        target = targets.get(b)
        rows.append((f"training against Keras fit, batch {b}", speed,
                     f">= {target}x" if target else "-", None if target is None else ratio >= target))
        rows.append((f"training FLOP/s against the matrix product, batch {b}", share_text,
                     ">= 75%", share >= 75))
    xla, plain = conv_step_seconds(True, args.repeats), conv_step_seconds(False, args.repeats)
    print(f"C1 step, batch 1024, 8x8 images: XLA {statistics.median(xla):.3f}s, without "
          f"{statistics.median(plain):.3f}s")
    text, _ = ratio_cell(xla, plain)
    rows.append(("C1 step on CPU, XLA against TensorFlow's kernels (lbtf: no XLA)", text, "-",
                 None))
    summary(rows)


if __name__ == "__main__":
    main()
