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
    assert sb == "  SB: global batch 256 = 2 x 128 per replica; BN statistics over the global " \
                 "batch of 256 (all-reduced over 2 replicas)"
    assert "over the global batch of 6000 (all-reduced over 2 replicas)" in lb
    _, sb, lb = describe(mirrored, {"SB": 128, "LB": 6000}, bn={"SB": "ghost", "LB": "per_replica"},
                         ghost_batch_size=128)
    assert sb.endswith("ghost BN over ghost batches of 128, all-reduced over 2 replicas")
    assert lb.endswith("BN statistics over each replica's 3000 examples (--bn_layer=per_replica)")
    _, one = describe(tf.distribute.get_strategy(), {"SB": 256}, bn="ghost", ghost_batch_size=128)
    assert one == "  SB: global batch 256 = 1 x 256 per replica; ghost BN over ghost batches of 128"
