"""Training runs from a Config (lbtf.experiments.training): the TrainConfig a regime gets."""

import dataclasses
import re

import pytest
from absl import flags
from conftest import REPO

from lbtf.experiments.config import TrainingConfig, field_group, override
from lbtf.experiments.flags import parse
from lbtf.experiments.training import DERIVED, at_point, training_config
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


def record(losses: list[float], stop: str = "converged") -> dict:
    history = [{"epoch": e, "train_loss": v, "train_acc": 0.9, "test_loss": 2 * v,
                "test_acc": 0.8} for e, v in enumerate(losses, start=1)]
    return {"history": history, "stop_reason": stop, "checkpoint_dir": "ckpt"}


def test_at_loss_measures_the_first_epoch_at_or_below_it():
    run = record([1.0, 0.5, 0.2, 0.05, 0.01, 0.02])
    assert at_point(run, "best")["measured_epoch"] == 5
    point = at_point(run, "best", at_loss=0.2)
    assert point["measured_epoch"] == 3 and point["reached_loss"] is True
    assert point["train_loss"] == 0.2 and point["checkpoint"].endswith("weights-3")
    missed = at_point(run, "best", at_loss=0.001)  # never reached: its lowest loss, marked
    assert missed["measured_epoch"] == 5 and missed["reached_loss"] is False
    assert "reached_loss" not in at_point(run, "last")


def test_at_loss_needs_every_epochs_weights():
    with pytest.raises(flags.IllegalFlagValueError, match="--checkpoint_every=1"):
        parse(["--measure_at_loss=0.01"])
    assert parse(["--measure_at_loss=0.01", "--checkpoint_every=1"]).measure.measure_at_loss == 0.01
