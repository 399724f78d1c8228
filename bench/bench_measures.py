"""Cost of each sharpness measure of --measures against Metric 2.1's, on F1 with MNIST-shaped
synthetic data (4000 x 784) at one point, in one run: each measure's wall time in units of one
bare full-data loss+gradient pass timed in the same round (its forward passes, loss+gradient
passes and Hessian-vector products counted beside it), the
rounds alternating so the host's drift falls on every side alike. No targets: the figures say what
a measure costs, so a study can choose its --measure_samples.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bench_train import per_round, ratio_cell, summary, timed_rounds  # noqa: E402

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.hessian import top_eigenvalues_at  # noqa: E402
from lbtf.measures import average_sharpness, hutchinson_trace, pacbayes_flatness  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.objective import Objective, flat_weights  # noqa: E402
from lbtf.sharpness import sharpness_at  # noqa: E402


class Counted:
    """An Objective counting its forward passes, loss+gradient passes and Hessian-vector
    products."""

    def __init__(self, objective: Objective):
        self.objective, self.n = objective, objective.n
        self.forwards = self.passes = self.hvps = 0

    def value(self, w):
        self.forwards += 1
        return self.objective.value(w)

    def value_and_gradient(self, w):
        self.passes += 1
        return self.objective.value_and_gradient(w)

    def hessian_vector_product(self, w, v):
        self.hvps += 1
        return self.objective.hessian_vector_product(w, v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=10, help="--measure_samples")
    args = parser.parse_args()
    data = load_synthetic(shape=(784,), num_classes=10, num_train=args.examples, num_test=10,
                          seed=0)
    keras.utils.set_random_seed(0)
    model = build_model("F1", input_shape=(784,), num_classes=10)
    objective = Objective(model, data.x_train, data.y_train, batch_size=4096)
    x = flat_weights(model)
    objective.value_and_gradient(x)  # traced
    objective.value(x)
    objective.hessian_vector_product(x, np.ones_like(x))
    s = args.samples
    measures = {
        "keskar (Metric 2.1, 10 iterations)": lambda f: sharpness_at(f, x, epsilon=1e-3, maxiter=10),
        "adaptive (eta = 0)": lambda f: sharpness_at(f, x, epsilon=1e-3, maxiter=10, eta=0.0),
        f"average ({s} draws)": lambda f: average_sharpness(f, x, sigma=0.01, samples=s),
        f"pacbayes ({s} draws, 15 bisections)": lambda f: pacbayes_flatness(f, x, samples=s),
        f"trace ({s} probes)": lambda f: hutchinson_trace(f, x, samples=s),
        "hessian (top eigenvalue)": lambda f: top_eigenvalues_at(f, x, k=1),
    }
    counts = {}

    def run(name):
        def go():
            counted = Counted(objective)
            measures[name](counted)
            counts[name] = (counted.forwards, counted.passes, counted.hvps)
        return go

    sides = {"bare pass": lambda: objective.value_and_gradient(x), **{k: run(k) for k in measures}}
    seconds = timed_rounds(sides, args.repeats)
    rows = []
    for name in measures:
        cell, _ = ratio_cell(per_round(seconds[name], seconds["bare pass"]), [1.0])
        forwards, passes, hvps = counts[name]
        rows.append((f"{name}: {forwards} forward, {passes} loss+gradient passes, {hvps} "
                     "Hessian-vector products", cell, "-", None))
        print(f"{name:40s} {np.median(seconds[name]):7.2f} s  {forwards} forward {passes} passes "
              f"{hvps} hvps")
    print(f"bare pass {1e3 * np.median(seconds['bare pass']):.0f} ms ({time.strftime('%H:%M')})")
    summary(rows)


if __name__ == "__main__":
    main()
