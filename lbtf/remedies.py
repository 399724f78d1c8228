"""Remedies for the large-batch generalisation gap, as small pure functions the trainer composes.

- Hoffer et al. 2017: learning-rate scaling with the batch, regime adaptation ("train longer"),
  gradient clipping, ultra-slow diffusion of the weights (||w_t - w_0|| ~ log t).
- Keskar et al. 2017, Appendix E: data augmentation, conservative training (a proximal term),
  adversarial training (FGSM examples, Goodfellow et al. 2014).
- Sharpness-Aware Minimization (Foret et al. 2021): the ascent step.

Keskar et al.'s Appendix C performance model is in lbtf.performance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from lbtf.choices import LR_SCALINGS, NORMALIZATIONS  # noqa: F401  (re-exported)


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
    return 0.5 * lam * tf.add_n([tf.reduce_sum(tf.square(v - a))
                                 for v, a in zip(variables, anchors, strict=True)])


def fgsm_examples(x: tf.Tensor, grad_x: tf.Tensor, epsilon: float) -> tf.Tensor:
    """x + eps sign(grad_x f): the fast-gradient-sign adversarial examples (max-norm eps)."""
    return tf.stop_gradient(x + epsilon * tf.sign(grad_x))


def global_norm(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
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


def augmentation(*, rotation_degrees: float = 10.0, translation: float = 0.1,
                 flip: bool = True, seed: int = 0) -> keras.Sequential:
    """Appendix E's on-the-fly augmentation for images: random rotations, translations and
    horizontal reflections (Keras preprocessing layers, active only with training=True)."""
    layers = [keras.layers.RandomRotation(rotation_degrees / 360.0, fill_mode="constant",
                                          seed=seed),
              keras.layers.RandomTranslation(translation, translation, fill_mode="constant",
                                             seed=seed + 1)]
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 2))
    return keras.Sequential(layers, name="augmentation")
