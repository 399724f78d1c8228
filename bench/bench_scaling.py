"""How cost grows: one training epoch and one sharpness measurement of F1, at 1/4, 1/2 and all of
60000 synthetic examples (width 512), and at widths 256, 512 and 1024 (all examples).

F1 is five batch-normalised ReLU layers; here their width varies (512 is the paper's). Training
is lbtf's loop at batch 256 (Adam), the median of --repeats epochs after one that compiles;
sharpness is Metric 2.1 in full space at eps 1e-3 with --maxiter L-BFGS-B iterations. The slope
is that of log time against log size over the three points: about 1 in the examples (every pass
is linear in them), about 2 in the width once the 512 x 512 products dominate (784 x w and w x 10
grow linearly), less where fixed costs (Python, Adam's per-variable work, small matrices)
still show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.objective import Objective, flat_weights  # noqa: E402
from lbtf.sharpness import sharpness_at  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402


def f1(width: int) -> keras.Model:
    """F1 with `width` units per hidden layer (the paper's: 512)."""
    layers = [keras.Input((784,))]
    for _ in range(5):
        layers += [keras.layers.Dense(width), keras.layers.BatchNormalization(),
                   keras.layers.ReLU()]
    return keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax")])


def costs(data, width: int, repeats: int, maxiter: int) -> tuple[float, float]:
    """(median seconds of a training epoch, seconds of one sharpness measurement)."""
    keras.utils.set_random_seed(0)
    trainer = Trainer(lambda: f1(width), data, TrainConfig(batch_size=256, max_epochs=1))
    rng = np.random.default_rng(0)
    trainer.train_epoch(rng)  # compiles
    epoch = []
    for _ in range(repeats):
        t = time.perf_counter()
        trainer.train_epoch(rng)
        epoch.append(time.perf_counter() - t)
    objective = Objective(trainer.model, data.x_train, data.y_train)
    w0 = flat_weights(trainer.model)
    objective.value_and_gradient(w0)  # compiles
    found = sharpness_at(objective, w0, epsilon=1e-3, maxiter=maxiter)
    return statistics.median(epoch), found.seconds


def slope(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60000)
    parser.add_argument("--widths", default="256,512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--maxiter", type=int, default=5)
    args = parser.parse_args()
    full = load_synthetic(shape=(784,), num_classes=10, num_train=args.examples, num_test=10)
    sweeps = {"examples (width 512)": [(n, full.subset(n, 10), 512) for n in
                                       (args.examples // 4, args.examples // 2, args.examples)],
              f"width ({args.examples} examples)": [(w, full, w) for w in
                                                   map(int, args.widths.split(","))]}
    print("| size | training epoch (s) | sharpness (s) |\n|---|---|---|")
    for name, points in sweeps.items():
        found = []
        for size, data, width in points:
            epoch, sharp = costs(data, width, args.repeats, args.maxiter)
            found.append((size, epoch, sharp))
            print(f"| {name}: {size} | {epoch:.2f} | {sharp:.2f} |", flush=True)
        sizes, epochs, sharps = (list(c) for c in zip(*found, strict=True))
        print(f"| {name}: slope of log time against log size | {slope(sizes, epochs):.2f} | "
              f"{slope(sizes, sharps):.2f} |")


if __name__ == "__main__":
    main()
