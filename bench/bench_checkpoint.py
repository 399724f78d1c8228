"""Checkpoint overhead: what saving a run's checkpoints after every epoch costs against the epoch.

F1 on MNIST-shaped synthetic data (60000 x 784), Adam, batch 256. Per epoch `fit` saves the
weights (weights-<epoch>, kept for the measurements) and the resume checkpoint (weights, Adam's
slots, RNG states, w_0 and the run's Python state). Both are timed directly, several times, and
divided by the median epoch (training plus the end-of-epoch measurement) of the same process.
Target (issue 7): at most 5% of the epoch time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from lbtf.checkpoints import Checkpoints  # noqa: E402
from lbtf.data import load_synthetic  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", default="256,6000", help="SB and LB of the paper")
    args = parser.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=60000, num_test=10000, seed=0)
    for batch in (int(b) for b in args.batches.split(",")):
        bench(data, batch, args.epochs)


def _size_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder)
               for f in fs) / 2**20


def bench(data, batch: int, num_epochs: int) -> None:
    trainer = Trainer(lambda: build_model("F1", input_shape=(784,), num_classes=10), data,
                      TrainConfig(batch_size=batch))
    rng = np.random.default_rng(0)
    epochs, saves = [], []
    with tempfile.TemporaryDirectory() as d:
        ckpts = Checkpoints(trainer.trackables(), d)
        for epoch in range(1, num_epochs + 2):  # the first epoch compiles: not counted
            t = time.perf_counter()
            trainer.train_epoch(rng)
            trainer.measure()
            epochs.append(time.perf_counter() - t)
            t = time.perf_counter()
            ckpts.save_weights(epoch)
            ckpts.save_state(epoch, {"history": [{"epoch": e} for e in range(epoch)],
                                     "rng": rng.bit_generator.state, **trainer.progress()})
            saves.append(time.perf_counter() - t)
            print(f"epoch {epoch}: {epochs[-1]:.2f}s, checkpoints {saves[-1]:.3f}s")
        resume = _size_mb(os.path.join(d, "resume"))
        weights = (_size_mb(d) - resume) / (num_epochs + 1)
    epoch, save = statistics.median(epochs[1:]), statistics.median(saves[1:])
    print(f"\nF1, batch {batch}, 60000 examples: epoch {epoch:.2f}s, checkpoints per epoch "
          f"{save:.3f}s = {100 * save / epoch:.1f}% of the epoch (target <= 5%); each epoch "
          f"keeps {weights:.1f} MB of weights and rewrites the {resume:.1f} MB resume checkpoint\n")


if __name__ == "__main__":
    main()
