"""Every sharpness measure of a network at its current weights, the way the command line takes
them: under each BN mode, with Keras 1's loss clip, on the whole training set.

    from lbtf.measurement import MeasureSettings, measure_model
    table = measure_model(model, x_train, y_train)            # the command line's defaults
    table = measure_model(model, x_train, y_train, MeasureSettings(measures=("keskar", "trace")))

`MeasureSettings`' defaults are the command line's flag defaults (a test holds them together), and
`lbtf.experiments.sharpness` measures every saved minimiser through the same `Measurer`. Any Keras
classifier and its data are taken (softmax or logits, class ids or one-hot; lbtf.classifier checks
them). Measurement code knows nothing of how the network was trained.
"""

from __future__ import annotations

import dataclasses
import hashlib

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lbtf import classifier
from lbtf.bn import (
    BatchNormEstimator,
    bn_layers,
    estimate_by_calls,
    estimation_subset,
    measurement_model,
    population_pass,
)
from lbtf.choices import MEASURE_BN, MEASURES
from lbtf.hessian import top_eigenvalues_at
from lbtf.measures import average_sharpness, hutchinson_trace, pacbayes_flatness
from lbtf.objective import (
    Objective,
    flat_weights,
    measurement_loss,
    set_flat_weights,
    subsample,
)
from lbtf.sharpness import Subspace, sharpness_at

# Metric 2.1's box eps (|x_i| + eta): eta 1 is Keskar et al.'s, 0 the adaptive box.
BOXES = {"keskar": ("sharpness", 1.0), "adaptive": ("adaptive", 0.0)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeasureSettings:
    """How a minimiser is measured. The defaults are the command line's (--epsilons, ...)."""
    measures: tuple[str, ...] = ("keskar",)    # of lbtf.choices.MEASURES
    epsilons: tuple[float, ...] = (1e-3, 5e-4)
    subspace_dim: int = 100                    # 0: full space only
    maxiter: int = 10                          # L-BFGS-B iterations (the paper's)
    starts: int = 1                            # 1: from the minimiser only
    bn_modes: tuple[str, ...] = ("moving", "batch")  # inference-mode BN, or each chunk by itself
    bn_chunk: int = 5000                       # examples BN normalises over in "batch" mode
    eval_batch_size: int = 2048                # a memory bound in "moving" mode
    loss_clip: float = 1e-7                    # Keras 1's probability clip (0: exact loss)
    hessian_k: int = 0                         # top eigenvalues (1 when "hessian" is measured)
    average_sigma: float = 0.01
    samples: int = 10                          # Monte-Carlo draws of average, pacbayes, trace
    pacbayes_target: float = 0.1
    pacbayes_eps: float = 1e-3
    examples: int = 0                          # a seeded subset of the training set (0: all)
    subspace_memory_mb: float = 1024.0
    seed: int = 0
    jit_compile: bool = True

    def __post_init__(self):
        """Checked at construction, before any work, in the command line's words."""
        for name in ("measures", "epsilons", "bn_modes"):  # lists as tuples: settings are keys
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("measures", "epsilons", "bn_modes"):
            if not isinstance(getattr(self, name), tuple | list):
                raise ValueError(f"MeasureSettings({name}=...) takes a tuple, e.g. {name}="
                                 f"{MeasureSettings.__dataclass_fields__[name].default!r}")
        if not self.measures or not set(self.measures) <= set(MEASURES) or len(
                set(self.measures)) != len(self.measures):
            raise ValueError(f"measures take names from {', '.join(MEASURES)} (each once), not "
                             f"{tuple(self.measures)}")
        if not self.bn_modes or not set(self.bn_modes) <= set(MEASURE_BN):
            raise ValueError(f"bn_modes take names from {', '.join(MEASURE_BN)}, not "
                             f"{tuple(self.bn_modes)}")
        if not self.epsilons or not all(isinstance(e, int | float) and e > 0 for e in self.epsilons):
            raise ValueError("epsilons take positive numbers, e.g. (1e-3, 5e-4)")
        for name in ("maxiter", "starts", "bn_chunk", "eval_batch_size", "samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        for name in ("subspace_dim", "hessian_k", "examples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, not {getattr(self, name)!r}")
        if not 0 <= self.loss_clip < 0.5:
            raise ValueError(f"loss_clip must lie in [0, 0.5) (Keras 1: 1e-7; 0: the exact "
                             f"loss), not {self.loss_clip}")
        for name in ("average_sigma", "pacbayes_target", "pacbayes_eps", "subspace_memory_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")


class Measurer:
    """One network, one compiled objective per BN mode and one random subspace A, serving every
    minimiser measured with it, so that their values are comparable. Without a BN layer the BN
    modes are one function, measured once (under the first)."""

    def __init__(self, model: keras.Model, x, y, settings: MeasureSettings = MeasureSettings(), *,
                 strategy: tf.distribute.Strategy | None = None, from_logits: bool = False):
        self.model, self.settings = model, settings
        s, strategy = settings, strategy or tf.distribute.get_strategy()
        modes = s.bn_modes if bn_layers(model) else s.bn_modes[:1]
        with strategy.scope():
            nets = {mode: measurement_model(model, mode) for mode in modes}
        x, y = subsample(x, y, s.examples or None, s.seed)
        self.objectives = {
            mode: Objective(net, x, y, loss=measurement_loss(s.loss_clip, from_logits=from_logits),
                            jit_compile=s.jit_compile,
                            batch_size=s.bn_chunk if mode == "batch" else s.eval_batch_size,
                            strategy=strategy)
            for mode, net in nets.items()}
        size = next(iter(self.objectives.values())).size
        self.subspace = (Subspace(size, s.subspace_dim, seed=s.seed,
                                  memory_budget_mb=s.subspace_memory_mb) if s.subspace_dim else None)

    def measure(self, labels: dict | None = None, log=None) -> list[dict]:
        """Every measure of the settings at the model's current weights, one row each, labelled
        with `labels`, its BN mode ("bn"), loss clip and chunk."""
        x0, labels, rows = flat_weights(self.model), labels or {}, []
        for mode, objective in self.objectives.items():
            how = {"bn": mode, "loss_clip": self.settings.loss_clip,
                   "bn_chunk": objective.batch_size if mode == "batch" else None}
            rows += self._boxes(objective, x0, {**labels, **how}, log)
            rows += self._sampled(objective, x0, {**labels, **how}, log)
        return rows

    def _boxes(self, objective: Objective, x0: np.ndarray, labels: dict, log) -> list[dict]:
        s, rows = self.settings, []
        spaces = [("full", None, None)]
        if self.subspace is not None:
            spaces.append(("subspace", self.subspace, self.subspace.pinv_apply(x0)))
        for name, (measure, eta) in BOXES.items():
            if name not in s.measures:
                continue
            for eps in s.epsilons:
                for space, sub, center in spaces:
                    r = sharpness_at(objective, x0, epsilon=float(eps), subspace=sub, center=center,
                                     maxiter=s.maxiter, starts=s.starts, seed=s.seed, eta=eta)
                    rows.append({**labels, "measure": measure, "space": space,
                                 **dataclasses.asdict(r)})
                    _say(log, f"  {measure:9s} {_short(labels)} {space:8s} eps={eps:g}: "
                         f"{r.value:10.4f}  (f {r.f_x:.3g} -> {r.f_max:.3g}, {r.nit} it, "
                         f"{r.nfev} evals, {r.seconds:.1f}s; {r.message}"
                         + ("; STOPPED BEFORE ITS FIRST ITERATION" if r.stopped_at_start else "")
                         + ")")
        return rows

    def _sampled(self, objective: Objective, x0: np.ndarray, labels: dict, log) -> list[dict]:
        """The seeded Monte-Carlo measures (average, pacbayes, trace) and the Hessian's top."""
        s, rows = self.settings, []
        if "average" in s.measures:
            e = average_sharpness(objective, x0, sigma=s.average_sigma, samples=s.samples,
                                  seed=s.seed)
            rows.append({**labels, "measure": "average", "space": "full",
                         "sigma": s.average_sigma, **dataclasses.asdict(e)})
        if "pacbayes" in s.measures:
            p = pacbayes_flatness(objective, x0, target=s.pacbayes_target,
                                  eps_floor=s.pacbayes_eps, samples=s.samples, seed=s.seed)
            rows.append({**labels, "measure": "pacbayes", "space": "full", **dataclasses.asdict(p)})
        if "trace" in s.measures:
            t = hutchinson_trace(objective, x0, samples=s.samples, seed=s.seed)
            rows.append({**labels, "measure": "trace", "space": "full", **dataclasses.asdict(t)})
        for r in rows:
            _say(log, f"  {r['measure']:9s} {_short(labels)}: {r['value']:.6g}"
                 + (f" ± {r['stderr']:.2g}" if "stderr" in r else f" (sigma' {r['sigma']:.4g})"))
        k = max(s.hessian_k, int("hessian" in s.measures))
        if k:
            e = top_eigenvalues_at(objective, x0, k=k, seed=s.seed)
            rows.append({**labels, "measure": "hessian", "space": "full", "value": e.eigenvalues[0],
                         "eigenvalues": e.eigenvalues, "nfev": e.num_hvp,
                         "num_examples": e.num_examples})
            _say(log, f"  hessian   {_short(labels)} top eigenvalues "
                 f"{[round(v, 4) for v in e.eigenvalues]}")
        return rows


def _short(labels: dict) -> str:
    return " ".join(str(v) for k, v in labels.items() if k not in ("loss_clip", "bn_chunk")
                    and v is not None) + " BN"


def _say(log, line: str) -> None:
    if log is not None:
        log(line)


def reestimate(model: keras.Model, x, y, *, examples: int, settings: MeasureSettings,
               from_logits: bool = False):
    """The BN statistics the command line stores with a checkpoint (--bn_eval=recompute): the
    population statistics of the whole set in one pass when it fits, or else averaged over chunks
    of a seeded subset of `examples`. Returns the estimator, to be called again (no retracing)."""
    loss = measurement_loss(0.0, from_logits=from_logits)
    whole = population_pass(model, x, y, loss=loss, jit_compile=settings.jit_compile)
    if whole is None:
        subset = estimation_subset(x, examples, settings.seed)
        try:
            whole = BatchNormEstimator(model, subset, batch_size=settings.eval_batch_size,
                                       jit_compile=settings.jit_compile)
        except (AttributeError, ValueError):  # subclassed: no graph to probe
            def whole():
                estimate_by_calls(model, subset, batch_size=settings.eval_batch_size)
    whole()
    return whole


def _fingerprint(*arrays: np.ndarray) -> tuple:
    digest = hashlib.blake2b(digest_size=16)
    for a in arrays:
        digest.update(str((a.shape, a.dtype)).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return (digest.hexdigest(),)


def _prepared(model: keras.Model, x, y, settings: MeasureSettings, from_logits: bool | None,
              reestimate_bn: bool, bn_examples: int):
    """(measurer, BN re-estimation or None) for this model, data and settings: made once and kept
    on the model, so that a loop of calls compiles nothing again."""
    classifier.check_built(model)
    x, raw = classifier.as_arrays(x, y)
    logits, classes = classifier.output_is_logits(model, x, from_logits)
    ids = classifier.class_ids(raw, classes)
    key = (settings, logits, reestimate_bn, bn_examples, *_fingerprint(x, ids))
    cache = model.__dict__.setdefault("_lbtf_measurers", {})
    if key not in cache:
        measurer = Measurer(model, x, ids, settings, from_logits=logits)
        again = None
        if reestimate_bn and bn_layers(model):
            again = reestimate(model, x, ids, examples=bn_examples, settings=settings,
                               from_logits=logits)
        cache.clear()  # one data set and setting at a time: the last one asked for
        cache[key] = (measurer, again)
    elif cache[key][1] is not None:
        cache[key][1]()
    return cache[key]


# The rows' measure names as the settings name them (Metric 2.1's rows say "sharpness" inside lbtf).
ROW_NAMES = {"sharpness": "keskar"}


def measure_model(model: keras.Model, x, y=None, settings: MeasureSettings = MeasureSettings(), *,
                  from_logits: bool | None = None, reestimate_bn: bool = True,
                  bn_examples: int = 10000, log=print) -> pd.DataFrame:
    """Every measure of `settings` at `model`'s weights, one row per measurement (its `value`,
    BN mode, space, eps, f(x), iterations, ...), as the command line measures a saved minimiser.

    Any Keras classifier: Sequential, functional or subclassed (moving BN statistics only: pass
    bn_modes=("moving",)), ending in a softmax or in logits (detected from its outputs, or
    `from_logits`); `x`, `y` as arrays (class ids or one-hot) or `x` a finite tf.data.Dataset of
    (x, y). Bad input raises one ValueError before any work.

    With `reestimate_bn` (the command line stores re-estimated statistics with every checkpoint),
    the BN moving statistics used by "moving" mode are first re-estimated from up to `bn_examples`
    seeded training examples; the model's own statistics are restored afterwards. The trainable
    weights are restored after every measurement. Repeated calls on one model and data reuse
    what was compiled."""
    saved = [v.numpy() for lay in bn_layers(model) for v in lay.non_trainable_variables]
    try:
        measurer, _ = _prepared(model, x, y, settings, from_logits, reestimate_bn, bn_examples)
        w = flat_weights(model)
        rows = measurer.measure(log=log)
        set_flat_weights(model, w)
        table = pd.DataFrame(rows)
        if "measure" in table:
            table["measure"] = table["measure"].replace(ROW_NAMES)
        return table
    finally:
        stats = [v for lay in bn_layers(model) for v in lay.non_trainable_variables]
        for v, value in zip(stats, saved, strict=True):
            v.assign(value)
