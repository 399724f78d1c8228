"""Distribution (lbtf.distribute): two replicas train like one device, batches split over replicas."""

import numpy as np
import pytest
import tensorflow as tf
from nets import DATA, mlp, values

from lbtf.distribute import describe, is_chief, per_replica_batch, worker
from lbtf.errors import UsageError
from lbtf.train import TrainConfig, Trainer, fit


def test_mirrored_two_replicas_equal_one_device():
    """Same global batch on 1 and 2 replicas: gradients are summed over replicas and the loss is
    divided by the global batch, so the weights must agree (a network without BN or dropout)."""
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(cpus) == 2
    mirrored = tf.distribute.MirroredStrategy(cpus)
    config = TrainConfig(batch_size=64, max_epochs=3, patience=10, jit_compile=False)
    results = []
    for strategy in (tf.distribute.get_strategy(), mirrored):
        trainer = Trainer(lambda: mlp(7), DATA, config, strategy=strategy)
        history = fit(trainer, seed=0, log=lambda s: None).history
        results.append((values(trainer.model), history[-1]["train_loss"]))
    (w1, l1), (w2, l2) = results
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert not np.allclose(w1[0], mlp(7).get_weights()[0])  # it did train


def test_batch_must_split_over_replicas_and_the_split_is_logged():
    mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    assert per_replica_batch(mirrored, 64) == 32
    with pytest.raises(UsageError, match="multiple of 2"):
        per_replica_batch(mirrored, 63)
    assert worker(mirrored) == (0, 1) and is_chief(mirrored)
    head, sb, lb = describe(mirrored, {"SB": 256, "LB": 6000}, bn="standard", ghost_batch_size=128)
    assert "2 replica(s) on 1 worker(s)" in head
    assert sb.startswith("  SB: global batch 256 = 2 x 128 per replica") and "ghost batches of 128" in sb
    assert "ghost batches of 3000 (--bn_layer=sync for statistics over all 6000)" in lb
    _, lb = describe(mirrored, {"LB": 6000}, bn="sync", ghost_batch_size=128)
    assert "over the whole global batch of 6000" in lb
    _, one = describe(tf.distribute.get_strategy(), {"SB": 256}, bn="ghost", ghost_batch_size=128)
    assert "256 = 1 x 256 per replica; ghost BN over 128 examples" in one
