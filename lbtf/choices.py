"""The names and formats the command line accepts, in plain Python: flags are parsed and checked
without importing TensorFlow, so a mistyped flag costs a fraction of a second. The library
modules use the same definitions."""

from __future__ import annotations

from lbtf.errors import UsageError

KESKAR_NETWORKS = ("F1", "F2", "C1", "C2", "C3", "C4")  # Keskar et al., Appendix B
HOFFER_NETWORKS = ("resnet44", "wrn16_4")                # Hoffer et al., Table 1
NETWORKS = KESKAR_NETWORKS + HOFFER_NETWORKS
VARIANTS = ("paper", "reference")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "slurm")
PATHS = ("linear", "curvilinear")
BN_MODES = ("recompute", "interpolate")
LR_SCALINGS = ("none", "sqrt", "linear")
NORMALIZATIONS = ("standard", "ghost", "sync", "per_replica", "none")
MEASURE_BN = ("moving", "batch")        # BN during measurements (lbtf.bn)
# Sharpness measures (lbtf.sharpness, lbtf.measures, lbtf.hessian).
MEASURES = ("keskar", "adaptive", "average", "pacbayes", "hessian", "trace")
OPTIMIZERS = ("adam", "sgd")
MEASURE_POINTS = ("best", "last")       # the epoch a run is measured at


def parse_batch_size(text: str) -> int | float:
    """'256' -> 256 examples; '0.1' or '10%' -> a fraction of the training set."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"batch size {text!r} is neither an integer nor a fraction "
                         "(e.g. 256, 0.1 or 10%)") from None
    if t.endswith("%") or "." in t or "e" in t.lower():
        if not 0 < value <= 1:
            raise ValueError(f"batch size fraction {text!r} must lie in (0, 1], e.g. 0.1")
        return value
    if value < 1:
        raise ValueError(f"batch size {text!r} must be a positive integer")
    return int(value)


def resolve_batch_size(spec: int | float | str, num_train: int) -> int:
    """A batch size in examples: an integer as given, a fraction of `num_train` rounded."""
    try:
        value = parse_batch_size(spec) if isinstance(spec, str) else spec
    except ValueError as e:
        raise UsageError(str(e)) from None
    batch = max(1, round(value * num_train)) if isinstance(value, float) else int(value)
    if batch > num_train:
        raise UsageError(f"batch size {batch} exceeds the {num_train} training examples; use at "
                         f"most {num_train} or a fraction such as 0.1")
    return batch
