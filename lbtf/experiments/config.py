"""The flags as one typed, frozen configuration, built once at the entry point.

Fields keep their flags' names (lbtf/experiments/flags.py holds the defaults, help and
validators), grouped by concern. Experiments read `Config`; library modules take plain arguments.
A regime changes a copy with `override`, which fails on a field no group has. Plain Python: no
TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

from lbtf.choices import parse_batch_size
from lbtf.remedies import Remedies

_frozen = dataclasses.dataclass(frozen=True, kw_only=True)


@_frozen
class RunConfig:
    experiment: str
    strategy: str
    slurm_port_base: int
    deterministic: bool
    output_dir: str
    run_name: str | None
    shard: str | None        # "i/N": this process's share of the runs (lbtf.experiments.sharding)
    flags_text: str          # the resolved flags as a flagfile, saved as the run's flags.txt
    # The flags the command line (or a flagfile) set: how a value came, not what it is.
    explicit: tuple[str, ...] = dataclasses.field(default=(), compare=False)


@_frozen
class DataConfig:
    dataset: str
    data_dir: str | None
    mnist1d_samples: int
    tfds_download: bool
    normalize: bool
    crop_flip_pad: int
    timit_path: str | None
    synthetic_shape: tuple[int, ...]
    synthetic_classes: int
    synthetic_train: int
    synthetic_test: int


@_frozen
class ModelConfig:
    network: str
    arch_variant: str
    bn_layer: str
    ghost_batch_size: int
    bn_momentum: float


@_frozen
class TrainingConfig:
    batch_size: int | float   # an example count, or a fraction of the training set
    sb_batch_size: int | float
    lb_batch_size: int | float
    learning_rate: float
    optimizer: str
    momentum: float
    weight_decay: float
    trials: int
    seed: int
    max_epochs: int
    patience: int
    measure_every: int
    min_delta: float
    lr_milestones: tuple[int, ...]
    lr_values: tuple[float, ...]
    lr_decay: float
    steps_per_loop: int
    eval_batch_size: int
    jit_compile: bool
    bn_eval: str
    bn_eval_examples: int
    checkpoint_every: int
    resume_interval: float


@_frozen
class MeasureConfig:
    sharpness: bool
    epsilons: tuple[float, ...]
    subspace_dim: int
    sharpness_maxiter: int
    sharpness_examples: int
    subspace_memory_mb: float
    sharpness_starts: int
    bn_measure: tuple[str, ...]
    bn_measure_chunk: int
    loss_clip: float
    measure_point: str
    measure_at_loss: float
    hessian_k: int
    checkpoint: str | None
    measures: tuple[str, ...]
    average_sigma: float
    measure_samples: int
    pacbayes_target: float
    pacbayes_eps: float
    rescale_check: float


@_frozen
class LandscapeConfig:
    parametric: tuple[str, ...]
    parametric_points: int
    alpha_min: float
    alpha_max: float
    parametric_trial: int
    bn_path: str


@_frozen
class ExperimentConfig:
    """Settings of one experiment each: Figures 4-6, the remedies regimes, Appendix C."""
    batch_sizes: tuple[int | float, ...]
    warm_start_epochs: int
    warm_start_stride: int
    trajectory_stride: int
    remedies: tuple[str, ...]
    perf_processors: int
    perf_sb_efficiency: float
    perf_sb_iterations: float
    perf_lb_iterations: float
    perf_num_train: int


@_frozen
class Config:
    run: RunConfig
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    remedies: Remedies
    measure: MeasureConfig
    landscape: LandscapeConfig
    experiment: ExperimentConfig


_CLASSES = typing.get_type_hints(Config)  # group name -> its dataclass, in Config's order

# Flags whose values are text lists or batch specs, converted to typed tuples and numbers.
_CONVERT = {
    "synthetic_shape": lambda v: tuple(int(d) for d in v),
    "batch_size": parse_batch_size, "sb_batch_size": parse_batch_size,
    "lb_batch_size": parse_batch_size,
    "batch_sizes": lambda v: tuple(parse_batch_size(b) for b in v),
    "lr_milestones": lambda v: tuple(int(m) for m in v),
    "epsilons": lambda v: tuple(float(e) for e in v),
    "measures": tuple,
    "lr_values": lambda v: tuple(float(e) for e in v),
}


def field_group(name: str) -> str:
    """The group that holds field `name` (every field name is unique across groups)."""
    owners = [g for g, cls in _CLASSES.items()
              if name in {f.name for f in dataclasses.fields(cls)}]
    if not owners:
        raise TypeError(f"no configuration field {name!r}")
    return owners[0]


def from_flags(values, flags_text: str = "", explicit: tuple[str, ...] = ()) -> Config:
    """The Config of parsed flags (absl FlagValues or anything with the flags as attributes)."""
    own = {"flags_text": flags_text, "explicit": tuple(explicit)}

    def group(cls):
        return cls(**{f.name: convert(f.name, getattr(values, f.name))
                      for f in dataclasses.fields(cls) if f.name not in own},
                   **(own if cls is RunConfig else {}))
    return Config(**{name: group(cls) for name, cls in _CLASSES.items()})


def convert(name: str, value):
    """A flag's parsed value as its Config field holds it (tuples, batch specs)."""
    return _CONVERT.get(name, _as_tuple)(value)


def _as_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def override(config: Config, changes: Mapping[str, object] | None = None, /, **fields) -> Config:
    """A copy of `config` with the named fields (of any group) replaced; an unknown name fails."""
    by_group: dict[str, dict] = {}
    for name, value in {**(changes or {}), **fields}.items():
        by_group.setdefault(field_group(name), {})[name] = value
    return dataclasses.replace(config, **{
        g: dataclasses.replace(getattr(config, g), **values) for g, values in by_group.items()})
