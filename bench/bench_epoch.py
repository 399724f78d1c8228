"""The epoch as a user gets it, against its training pass alone.

F1 on MNIST-shaped synthetic data (60000 x 784), Adam, at the paper's SB 256 and LB 6000. `fit`
runs a few epochs with its default checkpoints (a resume checkpoint every 30 s, the weights of
each new lowest training loss); an epoch's cost is the time between two of its per-epoch log lines:
training pass, end-of-epoch measurement (BN statistics, training and test loss and accuracy) and
checkpoints. Each training pass is timed inside the same fit, and the ratio is taken row by row.
Medians (min-max) over the rows after the first, which compiles.

Target (issue 15): at most 1.2x. By arithmetic the measurement needs one forward pass over the
training set and one over the test set: (60000 + 10000) / (3 x 60000) = 0.39 of a training pass
at equal efficiency, so every-epoch measurement (the paper's, lbtf's default) cannot go under
about 1.3x at LB, where the training pass runs at the matrix-product rate; the output shows the
parts. With `--measure_every=3` (patience still in epochs) it costs a third: the target applies
to that line. An epoch's cost there is the time between two log lines divided by 3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from bench_train import ratio_cell, summary  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer, fit  # noqa: E402

TARGET = 1.2


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}s ({min(values):.2f}-{max(values):.2f})"


def bench(data, batch: int, epochs: int, every: int) -> dict:
    """Per-epoch cost in fit measuring every `every` epochs, and its training passes, timed inside
    the same fit (so that drift in the machine's speed falls on both alike)."""
    trainer = Trainer(lambda: build_model("F1", input_shape=(784,), num_classes=10), data,
                      TrainConfig(batch_size=batch, max_epochs=every * (epochs + 1),
                                  patience=every * (epochs + 2), measure_every=every))
    passes, train_epoch = [], trainer.train_epoch

    def timed_epoch(rng):
        t = time.perf_counter()
        out = train_epoch(rng)
        passes.append(time.perf_counter() - t)
        return out

    trainer.train_epoch = timed_epoch
    stamps = []
    with tempfile.TemporaryDirectory() as d:
        fit(trainer, checkpoint_dir=d, log=lambda line: stamps.append(time.perf_counter()))
    # Rows after the first (its epochs compile): each covers `every` epochs and one measurement.
    whole = [t / every for t in np.diff(stamps)]
    passes = [sum(passes[i:i + every]) / every for i in range(every, len(passes), every)]
    measures = []
    for _ in range(epochs):
        t = time.perf_counter()
        trainer.measure()
        measures.append(time.perf_counter() - t)
    median = statistics.median
    print(f"batch {batch}, measured every {every} epoch(s): epoch in fit {spread(whole)}; its "
          f"training pass {spread(passes)}; measurement {spread(measures)} "
          f"({trainer.bn_eval_source}); rest (checkpoints, logging) "
          f"{median(whole) - median(passes) - median(measures) / every:.2f}s")
    return {"batch": batch, "every": every, "whole": whole, "passes": passes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one compiling)")
    parser.add_argument("--batches", default="256,6000", help="SB and LB of the paper")
    parser.add_argument("--measure_every", default="1,3", help="measuring intervals to time")
    args = parser.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=10000, seed=0)
    rows = []
    for b in args.batches.split(","):
        for every in map(int, args.measure_every.split(",")):
            r = bench(data, int(b), args.epochs, every)
            ratios = [w / p for w, p in zip(r["whole"], r["passes"], strict=True)]  # row by row
            cell, med = ratio_cell(ratios, [1.0])
            target = every > 1  # every epoch cannot reach it (see above): reported, not judged
            rows.append((f"epoch in fit / training pass, batch {b}, measured every {every}", cell,
                         f"<= {TARGET}x" if target else "- (>= 1.39x by arithmetic)",
                         med <= TARGET if target else None))
    summary(rows)


if __name__ == "__main__":
    main()
