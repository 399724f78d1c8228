"""Remedies for the large-batch generalisation gap, as small pure functions the trainer composes.

- Hoffer et al. 2017: learning-rate scaling with the batch, regime adaptation ("train longer"),
  gradient clipping, ultra-slow diffusion of the weights (||w_t - w_0|| ~ log t).
- Keskar et al. 2017, Appendix E: data augmentation, conservative training (a proximal term),
  adversarial training (FGSM examples, Goodfellow et al. 2014).
- Sharpness-Aware Minimization (Foret et al. 2021): the ascent step.

Every remedy's setting is a field of `Remedies`, off by default; `REGIMES` says how
--experiment=remedies turns each one on. Adding a remedy touches three files: a field and its
regime here (its default is what SB and LB run), its flag in lbtf/experiments/flags.py, and the
step that applies it in lbtf/train.py.

Keskar et al.'s Appendix C performance model is in lbtf.performance. TensorFlow is imported inside
the functions that need it: the flags read `Remedies` and `REGIMES` before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lbtf.choices import LR_SCALINGS, NORMALIZATIONS  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True, kw_only=True)
class Remedies:
    """Every remedy's setting (the flags of the same names); the defaults are off."""
    lr_scaling: str = "none"          # lr x sqrt(B / B_ref) ("sqrt", Hoffer) or x B / B_ref
    lr_reference_batch: int = 256     # B_ref of lr_scaling and regime_adaptation
    regime_adaptation: bool = False   # epochs, patience, milestones, measure_every x B / B_ref
    clip_norm: float = 0.0            # clip gradients to this global norm (0: off)
    sam_rho: float = 0.0              # Sharpness-Aware Minimization radius (0: off)
    fgsm_epsilon: float = 0.0         # adversarial training with FGSM examples of this size
    conservative_lambda: float = 0.0  # proximal weight of conservative training (0: off)
    conservative_steps: int = 3       # Adam steps per proximal subproblem
    augment: bool = False             # on-the-fly image augmentation (Appendix E)
    label_smoothing: float = 0.0      # train on targets (1 - s) one-hot + s / K (0: off)
    diffusion_every: int = 0          # not a remedy, Hoffer's measurement: ||w_t - w_0|| every N
                                      # steps (0: off)


# --experiment=remedies: regime "LB+<name>" is LB with every remedy off (OFF: standard BN and each
# Remedies default, but for the settings that only parametrise a remedy) except those
# REGIMES[name] turns on, given the configured settings (a flag left at 0 takes the published
# value). Keys name configuration fields of any group (e.g. the network's bn_layer).
PARAMETERS = ("lr_reference_batch", "conservative_steps", "diffusion_every")
OFF = {"bn_layer": "standard", **{k: v for k, v in dataclasses.asdict(Remedies()).items()
                                  if k not in PARAMETERS}}
REGIMES: dict[str, Callable[[Remedies], dict]] = {
    "ghost": lambda r: {"bn_layer": "ghost", "lr_scaling": "sqrt", "regime_adaptation": True,
                        "clip_norm": r.clip_norm},  # Hoffer et al.: GBN, sqrt lr, train longer
    "augment": lambda r: {"augment": True},          # Appendix E (image data only)
    "conservative": lambda r: {"conservative_lambda": r.conservative_lambda or 1e-3},
    "adversarial": lambda r: {"fgsm_epsilon": r.fgsm_epsilon or 0.01},
    "sam": lambda r: {"sam_rho": r.sam_rho or 0.05},  # Foret et al.
    "label_smoothing": lambda r: {"label_smoothing": r.label_smoothing or 0.1},  # Szegedy et al.
}


def scaled_learning_rate(learning_rate: float, batch: int, *, reference: int = 256,
                         rule: str = "none") -> float:
    """lr at `batch` given lr at `reference`: unchanged, times sqrt(B / B_ref) (Hoffer et al.) or
    times B / B_ref (linear scaling)."""
    ratio = batch / reference
    if rule == "none":
        return learning_rate
    if rule == "sqrt":
        return learning_rate * math.sqrt(ratio)
    if rule == "linear":
        return learning_rate * ratio
    raise ValueError(f"unknown learning-rate scaling {rule!r}; choose one of {LR_SCALINGS}")


def regime_factor(batch: int, reference: int) -> float:
    """How much longer (in epochs) batch B trains to make as many updates as batch B_ref."""
    return batch / reference


def adapted_epochs(epochs: int, batch: int, reference: int) -> int:
    """An epoch budget (or patience, or milestone) times B / B_ref, rounded up, at least 1."""
    return max(1, math.ceil(epochs * regime_factor(batch, reference) - 1e-9))


def adapted_milestones(milestones: Sequence[int], batch: int, reference: int) -> list[int]:
    return [adapted_epochs(m, batch, reference) for m in milestones]


def proximal_term(variables: Sequence[tf.Variable], anchors: Sequence[tf.Variable],
                  lam: float) -> tf.Tensor:
    """lambda / 2 ||x - x_k||^2 over the trainable weights: the conservative-training term, whose
    gradient is lambda (x - x_k)."""
    import tensorflow as tf

    return 0.5 * lam * tf.add_n([tf.reduce_sum(tf.square(v - a))
                                 for v, a in zip(variables, anchors, strict=True)])


def fgsm_examples(x: tf.Tensor, grad_x: tf.Tensor, epsilon: float) -> tf.Tensor:
    """x + eps sign(grad_x f): the fast-gradient-sign adversarial examples (max-norm eps)."""
    import tensorflow as tf

    return tf.stop_gradient(x + epsilon * tf.sign(grad_x))


def smoothed_cross_entropy(y_true: tf.Tensor, probs: tf.Tensor, smoothing: float) -> tf.Tensor:
    """Per-example cross-entropy against the smoothed targets (1 - s) one-hot(y) + s / K."""
    import keras

    one_hot = keras.ops.one_hot(y_true, probs.shape[-1])
    return keras.losses.categorical_crossentropy(one_hot, probs, label_smoothing=smoothing)


def global_norm(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    import tensorflow as tf

    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))


def sam_perturbation(grads: Sequence[tf.Tensor], rho: float) -> list[tf.Tensor]:
    """SAM's ascent step e = rho g / ||g|| (global norm over every weight)."""
    scale = rho / (global_norm(grads) + 1e-12)
    return [g * scale for g in grads]


def diffusion_fit(steps: Sequence[int], distances: Sequence[float]) -> dict:
    """Least-squares fit ||w_t - w_0|| = a log t + b (Hoffer et al.'s "ultra-slow diffusion");
    returns slope a, intercept b and r^2."""
    t = np.log(np.asarray(steps, np.float64))
    d = np.asarray(distances, np.float64)
    if len(t) < 2 or np.ptp(t) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan")}
    a, b = np.polyfit(t, d, 1)
    resid = d - (a * t + b)
    total = np.sum((d - d.mean()) ** 2)
    return {"slope": float(a), "intercept": float(b),
            "r2": float(1 - np.sum(resid ** 2) / total) if total > 0 else 1.0}


def sam_gradients(loss_fn: Callable[[], tf.Tensor], grads: list, variables: Sequence[tf.Variable],
                  bn_stats: Sequence[tf.Variable], rho: float) -> list:
    """In a replica context, SAM's gradient: that of loss_fn() at w + rho g/||g||, g all-reduced
    over replicas so that ||g|| is the global batch's. BN: the first pass has updated the moving
    statistics `bn_stats`; this pass's update is undone, so each step updates them once, from the
    unperturbed weights."""
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    eps = sam_perturbation(ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads), rho)
    saved = [tf.identity(v) for v in bn_stats]
    for v, e in zip(variables, eps, strict=True):
        v.assign_add(e)
    with tf.control_dependencies(saved):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, variables)
    with tf.control_dependencies(grads):
        for v, e in zip(variables, eps, strict=True):
            v.assign_sub(e)
        for v, s in zip(bn_stats, saved, strict=True):
            v.assign(s)
    return grads
