"""Training runs from a Config (lbtf.experiments.training): the TrainConfig a regime gets."""

import dataclasses
import re

import pytest
from conftest import REPO

from lbtf.experiments.config import TrainingConfig, field_group, override
from lbtf.experiments.flags import parse
from lbtf.experiments.training import DERIVED, training_config
from lbtf.train import TrainConfig


def test_remedy_flags_reach_the_training_configuration():
    cfg = parse(["--lr_scaling=sqrt", "--regime_adaptation", "--max_epochs=10", "--patience=3",
                 "--lr_milestones=4", "--clip_norm=5", "--measure_every=2"])
    config = training_config(cfg, 1024)
    # B / B_ref = 4: epochs, patience, milestones and the measuring interval x 4, the learning
    # rate x sqrt(4).
    assert (config.max_epochs, config.patience, config.lr_milestones) == (40, 12, (16,))
    assert config.measure_every == 8
    assert config.learning_rate == pytest.approx(2e-3) and config.remedies.clip_norm == 5.0
    sb = training_config(override(cfg, lr_scaling="none", regime_adaptation=False), 256)
    assert (sb.max_epochs, sb.learning_rate, sb.lr_milestones) == (10, 1e-3, (4,))
    assert sb.measure_every == 2
    assert training_config(cfg, 1024, max_epochs=2).max_epochs == 2  # fields set last


# Training flags an experiment uses itself, not the trainer: how many trials, which batches.
EXPERIMENT_LEVEL = {"trials", "sb_batch_size", "lb_batch_size", "batch_size"}


def test_every_training_setting_has_one_home_and_reaches_the_trainer():
    """Every field of the training group is a TrainConfig field or used by the experiments
    (EXPERIMENT_LEVEL), and every TrainConfig field is copied by name from the Config or derived
    by the regime: a new training flag cannot silently stop at the Config."""
    trainer_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    training_fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    assert training_fields - trainer_fields == EXPERIMENT_LEVEL - {"batch_size"}
    for name in trainer_fields - DERIVED:
        field_group(name)  # raises for a TrainConfig field no Config group holds


def test_every_copied_field_arrives_with_its_value():
    """Each copied field set to a value unlike its default arrives unchanged."""
    changed = {"min_delta": 0.5, "steps_per_loop": 7, "eval_batch_size": 99, "jit_compile": False,
               "checkpoint_every": 3, "resume_interval": 1.5, "optimizer": "sgd", "momentum": 0.7,
               "weight_decay": 0.01, "lr_decay": 0.3, "crop_flip_pad": 2, "bn_eval": "moving",
               "bn_eval_examples": 123, "seed": 9}
    copied = {f.name for f in dataclasses.fields(TrainConfig)} - DERIVED
    assert set(changed) == copied  # a new copied field must be added here, with its own value
    config = training_config(override(parse([]), **changed), 64)
    assert {k: getattr(config, k) for k in changed} == changed


def test_every_trainer_setting_is_read_by_the_trainer():
    """Each TrainConfig field is read somewhere in the training engine (config.<name>)."""
    engine = "".join((REPO / "lbtf" / f).read_text() for f in ("train.py", "step.py",
                                                                  "evaluation.py"))
    unread = [f.name for f in dataclasses.fields(TrainConfig)
              if not re.search(rf"(config|cfg)\.{f.name}\b", engine)]
    assert not unread
