"""The loss landscape between two minimisers (Figures 3 and 7 of Keskar et al.) and distances in
weight space.

A point of a path is c_s x_s + c_l x_l over the trainable weights: the linear path uses
(1 - alpha, alpha), the curvilinear path (cos(alpha pi/2), sin(alpha pi/2)). Both give x_s at
alpha = 0 and x_l at alpha = 1.

Batch normalisation has moving statistics that are not weights, and a point between two minimisers
has none of its own. Two treatments:
- "recompute" (default): at every point, each BN layer's moving mean and variance are re-estimated
  with one pass over training data in training mode: the average over batches of the batch mean
  and (biased) batch variance each BN layer sees, which is what Keras' moving averages estimate
  during training (dropout included, as it was then). The end points therefore use re-estimated
  statistics too, which can differ slightly from the training run's own moving averages.
- "interpolate": means are combined with the path's coefficients and variances log-linearly,
  var_s^c_s * var_l^c_l, which is positive for every alpha (the linear combination of variances
  turns negative outside [0, 1]) and exact at the end points.

This module knows nothing of how the minimisers were found: it takes a model and two snapshots.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import keras
import numpy as np
import pandas as pd

from lbtf.bn import BatchNormEstimator, bn_layers
from lbtf.choices import BN_MODES, PATHS  # noqa: F401  (re-exported)
from lbtf.objective import EvalSet, make_evaluator, weights_restored


def path_coefficients(alpha: float, path: str) -> tuple[float, float]:
    """(c_s, c_l) of the point c_s x_s + c_l x_l at `alpha`; round-off zeros are made exact so the
    end points are reproduced bit for bit."""
    if path == "linear":
        c = (1.0 - alpha, float(alpha))
    elif path == "curvilinear":
        c = (math.cos(alpha * math.pi / 2), math.sin(alpha * math.pi / 2))
    else:
        raise ValueError(f"unknown path {path!r}; choose one of {', '.join(PATHS)}")
    return tuple(0.0 if abs(v) < 1e-12 else v for v in c)


def combine(xs: Sequence[np.ndarray], xl: Sequence[np.ndarray], c_s: float,
            c_l: float) -> list[np.ndarray]:
    """c_s xs + c_l xl, array by array, in the arrays' own dtype."""
    return [(c_s * a + c_l * b).astype(a.dtype) for a, b in zip(xs, xl, strict=True)]


def combine_variances(var_s: np.ndarray, var_l: np.ndarray, c_s: float, c_l: float) -> np.ndarray:
    """var_s^c_s * var_l^c_l: positive for any coefficients, var_s at (1, 0) and var_l at (0, 1)."""
    tiny = np.finfo(np.float32).tiny
    logs = c_s * np.log(np.maximum(var_s, tiny).astype(np.float64))
    logs = logs + c_l * np.log(np.maximum(var_l, tiny).astype(np.float64))
    return np.exp(logs).astype(var_s.dtype)


def distance(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Euclidean distance between two weight lists, as if each were one flat vector."""
    return math.sqrt(sum(float(np.sum((np.asarray(x, np.float64) - y) ** 2))
                         for x, y in zip(a, b, strict=True)))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A point of weight space: trainable weights and BN moving statistics, as NumPy arrays."""
    weights: list[np.ndarray]
    means: list[np.ndarray]
    variances: list[np.ndarray]


def snapshot(model: keras.Model) -> Snapshot:
    bns = bn_layers(model)
    return Snapshot([v.numpy() for v in model.trainable_variables],
                    [b.moving_mean.numpy() for b in bns], [b.moving_variance.numpy() for b in bns])


def set_point(model: keras.Model, start: Snapshot, end: Snapshot, c_s: float, c_l: float, *,
              bn: str, estimator: BatchNormEstimator | None) -> None:
    """Puts the model at c_s start + c_l end, with BN statistics treated as `bn` says."""
    for v, w in zip(model.trainable_variables, combine(start.weights, end.weights, c_s, c_l),
                    strict=True):
        v.assign(w)
    layers = bn_layers(model)
    if bn == "interpolate":
        for lay, ms, ml, vs, vl in zip(layers, start.means, end.means, start.variances,
                                       end.variances, strict=True):
            lay.moving_mean.assign((c_s * ms + c_l * ml).astype(ms.dtype))
            lay.moving_variance.assign(combine_variances(vs, vl, c_s, c_l))
    elif bn == "recompute":
        if layers:
            estimator()
    else:
        raise ValueError(f"unknown BN treatment {bn!r}; choose one of {', '.join(BN_MODES)}")


def evaluate_path(model: keras.Model, start: Snapshot, end: Snapshot, alphas: Sequence[float], *,
                  path: str, splits: dict[str, EvalSet], bn: str = "recompute",
                  estimator: BatchNormEstimator | None = None,
                  evaluate: Callable[[EvalSet], tuple[float, float]] | None = None,
                  log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Loss and accuracy on every split at every alpha of `path` from `start` (alpha 0) to `end`
    (alpha 1). One row per alpha: alpha, <split>_loss, <split>_acc. The model is left as found.
    Pass `evaluate` (objective.make_evaluator of this model) to reuse its compilation."""
    if bn == "recompute" and estimator is None and bn_layers(model):
        raise ValueError("bn='recompute' needs a BatchNormEstimator over training data")
    evaluate = evaluate or make_evaluator(model, jit_compile=True)
    rows = []
    with weights_restored(model):
        for alpha in alphas:
            c_s, c_l = path_coefficients(float(alpha), path)
            set_point(model, start, end, c_s, c_l, bn=bn, estimator=estimator)
            row = {"alpha": float(alpha)}
            for name, split in splits.items():
                row[f"{name}_loss"], row[f"{name}_acc"] = evaluate(split)
            rows.append(row)
            if log is not None:
                log(f"  {path} alpha {alpha:+.3f}: " + "  ".join(
                    f"{k} {v:.4g}" for k, v in row.items() if k != "alpha"))
    return pd.DataFrame(rows)


def default_alphas(points: int, low: float = -1.0, high: float = 2.0) -> np.ndarray:
    """`points` evenly spaced alphas over [low, high], always including 0 and 1 (the minimisers)."""
    grid = list(np.linspace(low, high, points))
    grid += [a for a in (0.0, 1.0) if low <= a <= high and not np.isclose(grid, a).any()]
    return np.array(sorted(grid))
