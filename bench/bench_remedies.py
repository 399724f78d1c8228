"""Remedy costs, on F1 with MNIST-shaped synthetic data (60000 x 784), in one run:

(a) ghost batch normalisation's training throughput against standard BN at the same batch
    (target: at most 10% slower); (b) a SAM step against a plain Adam step (expected: about 2x,
    two forward-backward passes).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_train import _timed  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.layers import norm_layer  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def epoch_seconds(data, *, batch: int, norm: str, ghost: int, repeats: int, **config) -> float:
    """Median seconds per training epoch (after one epoch of tracing and compilation)."""
    def build():
        keras.utils.set_random_seed(0)
        return build_model("F1", input_shape=data.input_shape, num_classes=data.num_classes,
                           norm=norm_layer(norm, virtual_batch_size=ghost))

    trainer = Trainer(build, data, TrainConfig(batch_size=batch, **config))
    rng = np.random.default_rng(0)
    trainer.train_epoch(rng)
    return statistics.median(_timed(lambda: trainer.train_epoch(rng)) for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 6000])
    p.add_argument("--ghost", type=int, default=128)
    args = p.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=1000)
    run = functools.partial(epoch_seconds, data, ghost=args.ghost, repeats=args.repeats)
    for b in args.batches:
        standard, ghost = run(batch=b, norm="standard"), run(batch=b, norm="ghost")
        print(f"(a) batch {b}: standard BN {data.num_train / standard:8.0f} samples/s, ghost BN "
              f"({args.ghost}) {data.num_train / ghost:8.0f} samples/s: ghost takes "
              f"{ghost / standard:.2f}x the time (target <= 1.10x)")
    b = args.batches[0]
    plain, sam = run(batch=b, norm="standard"), run(batch=b, norm="standard", sam_rho=0.05)
    print(f"(b) batch {b}: SAM step {sam / plain:.2f}x a plain step (expected ~2x)")


if __name__ == "__main__":
    main()
