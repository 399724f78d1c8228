"""Remedy costs, on F1 with MNIST-shaped synthetic data (60000 x 784), in one run:

(a) ghost batch normalisation's training throughput against standard BN at the same batch
    (target: at most 10% slower); (b) a SAM step against a plain Adam step (expected: about 2x,
    two forward-backward passes). Medians of --repeats epochs, the two sides alternating, with
    min-max, then a summary table.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_train import per_round, ratio_cell, summary, timed_rounds  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.layers import norm_layer  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.remedies import Remedies  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def epochs(data, *, batch: int, norm: str, ghost: int, **config):
    """A function running one training epoch, traced and compiled by a first epoch."""
    def build():
        keras.utils.set_random_seed(0)
        return build_model("F1", input_shape=data.input_shape, num_classes=data.num_classes,
                           norm=norm_layer(norm, virtual_batch_size=ghost))

    trainer = Trainer(build, data, TrainConfig(batch_size=batch, **config))
    rng = np.random.default_rng(0)
    trainer.train_epoch(rng)
    return lambda: trainer.train_epoch(rng)


def paired(first, second, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of `repeats` epochs of each, alternating, so that drift in the machine's speed
    (other processes, frequency) falls on both alike."""
    t = timed_rounds({"first": first, "second": second}, repeats)
    return t["first"], t["second"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 6000])
    p.add_argument("--ghost", type=int, default=128)
    args = p.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=1000)
    run = functools.partial(epochs, data, ghost=args.ghost)
    rows = []
    for b in args.batches:
        standard, ghost = paired(run(batch=b, norm="standard"), run(batch=b, norm="ghost"),
                                 args.repeats)
        print(f"(a) batch {b}: standard BN {statistics.median(standard):.2f}s an epoch, ghost BN "
              f"({args.ghost}) {statistics.median(ghost):.2f}s")
        text, ratio = ratio_cell(per_round(ghost, standard), [1.0])
        rows.append((f"ghost BN ({args.ghost}) against standard BN, batch {b}", text, "<= 1.10x",
                     ratio <= 1.10))
    b = args.batches[0]
    plain, sam = paired(run(batch=b, norm="standard"),
                        run(batch=b, norm="standard", remedies=Remedies(sam_rho=0.05)), args.repeats)
    text, ratio = ratio_cell(per_round(sam, plain), [1.0])
    rows.append((f"SAM step against a plain step, batch {b}", text,
                 "none (two passes: about 2x expected)", None))
    summary(rows)

if __name__ == "__main__":
    main()
