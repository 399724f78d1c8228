"""Training runs from a Config (lbtf.experiments.training): the TrainConfig a regime gets."""

import pytest

from lbtf.experiments.config import override
from lbtf.experiments.flags import parse
from lbtf.experiments.training import training_config


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
