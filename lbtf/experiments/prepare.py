"""From a Config to what every experiment starts with: the strategy, the data and the batch sizes
in examples, with every input checked before a run folder exists."""

from __future__ import annotations

import tensorflow as tf

from lbtf import data as data_lib
from lbtf import runs
from lbtf.choices import resolve_batch_size
from lbtf.distribute import check_bn_split, describe, make_strategy
from lbtf.errors import UsageError
from lbtf.experiments.config import Config, DataConfig
from lbtf.models import (
    build_model,
    check_compatible,
    is_user_network,
    takes_norm,
    user_builder,
)


def loader_options(data: DataConfig, *, seed: int) -> dict:
    """The keyword arguments of data.dataset's loader (lbtf.data.LOADERS)."""
    return {
        "mnist1d": lambda: {"num_samples": data.mnist1d_samples, "data_dir": data.data_dir},
        "cluttered_digits": lambda: {"data_dir": data.data_dir},
        "digits": dict,
        "mnist5k": dict,
        "timit": lambda: {"path": data.timit_path},
        **({data.dataset: dict} if data.dataset.startswith("npz:") else {}),
        "synthetic": lambda: {"shape": data.synthetic_shape, "num_classes": data.synthetic_classes,
                              "num_train": data.synthetic_train, "num_test": data.synthetic_test,
                              "seed": seed},
    }.get(data.dataset, lambda: {"data_dir": data.data_dir,  # the tfds datasets
                                 "download": data.tfds_download})()


def load_data(cfg: Config) -> data_lib.Dataset:
    """--dataset, loaded through lbtf.data's one registry (standardised with --normalize)."""
    data = data_lib.load_dataset(cfg.data.dataset,
                                 **loader_options(cfg.data, seed=cfg.training.seed))
    return data.standardized() if cfg.data.normalize else data


def milestone_warning(cfg: Config) -> str | None:
    """A warning naming the --lr_milestones that no run reaches (at or beyond --max_epochs; regime
    adaptation stretches both alike), or None. They are kept, not refused: Hoffer et al.'s own
    scripts ran ResNet-44 and WRN-16-4 for 100 epochs with regimes reaching beyond it."""
    t = cfg.training
    late = [m for m in t.lr_milestones if m >= t.max_epochs]
    if not late:
        return None
    return (f"warning: --lr_milestones {', '.join(map(str, late))} lie at or beyond --max_epochs="
            f"{t.max_epochs}: the learning rate never changes there (drop them, or raise "
            "--max_epochs to reach them)")


def check_user_network(cfg: Config, bn_layers: dict | None, data: data_lib.Dataset) -> None:
    """A user's network is built once here, so a wrong one is refused before a run folder
    exists. A builder without lbtf's normalisation factory (`norm=`) runs with its own layers;
    what needs the factory (another --bn_layer, ghost BN in a regime) is refused in one line."""
    if not is_user_network(cfg.model.network):
        return
    build_model(cfg.model.network, input_shape=data.input_shape, num_classes=data.num_classes)
    if takes_norm(user_builder(cfg.model.network)):
        return
    kinds = {cfg.model.bn_layer, *(k for ks in (bn_layers or {}).values() for k in ks)}
    if kinds != {"standard"}:
        needs = ", ".join(sorted(kinds - {"standard"}))
        raise UsageError(f"--network={cfg.model.network} takes no norm= argument, so lbtf cannot "
                         f"put {needs} BN into it (this experiment or --bn_layer needs it); add a "
                         "norm parameter (a callable making the normalisation layer) to the builder")


def prepare(cfg: Config, batch_specs: dict[str, int | float], log=print,
            bn_layers: dict[str, tuple[str, ...]] | None = None):
    """Creates the strategy, loads data, checks the network fits it and the batch sizes fit the
    data and the replicas (under --bn_layer and the `bn_layers` an experiment sets itself); logs
    the strategy (each regime's split and BN: `training.train_regimes`).

    Everything that can be wrong with the input is found here, before a run folder exists.
    """
    runs.check_writable(cfg.run.output_dir)
    if (warning := milestone_warning(cfg)) is not None:
        log(warning)
    if cfg.run.strategy in ("multi_worker", "slurm") and not cfg.run.run_name:
        raise UsageError(f"--strategy={cfg.run.strategy} needs --run_name: every worker must write "
                         "to and resume from the same run folder")
    if cfg.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    # First: a multi-worker strategy must exist before any other TensorFlow op runs.
    strategy = make_strategy(cfg.run.strategy, slurm_port_base=cfg.run.slurm_port_base)
    data = load_data(cfg)
    check_compatible(cfg.model.network, data.input_shape)
    for name, on in (("augment", cfg.remedies.augment), ("crop_flip_pad", cfg.data.crop_flip_pad)):
        if on and len(data.input_shape) != 3:
            raise UsageError(f"--{name} needs image data, but {data.name}'s inputs have shape "
                             f"{tuple(data.input_shape)}; use an image dataset or drop --{name}")
    check_user_network(cfg, bn_layers, data)
    batches = {}
    for regime, spec in batch_specs.items():
        batches[regime] = resolve_batch_size(spec, data.num_train)
        for kind in {cfg.model.bn_layer, *(bn_layers or {}).get(regime, ())}:
            check_bn_split(strategy, batches[regime], bn=kind,
                           ghost_batch_size=cfg.model.ghost_batch_size)
    log(describe(strategy, {}, bn=cfg.model.bn_layer, ghost_batch_size=cfg.model.ghost_batch_size)[0])
    return data, strategy, batches
