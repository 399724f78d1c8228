"""Normalisation layers (lbtf.layers): ghost BN against NumPy, across replicas, and the layer choices."""

import json
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbtf.layers import GhostBatchNormalization, norm_layer

RNG = np.random.default_rng(0)


def numpy_ghost_bn(x: np.ndarray, v: int, momentum=0.99, eps=1e-3):
    """Reference: each run of v examples normalised by its own statistics; the moving statistics
    updated once per ghost batch, in order."""
    out = np.empty_like(x, dtype=np.float64)
    axes = tuple(range(x.ndim - 1))
    mm, mv = np.zeros(x.shape[-1]), np.ones(x.shape[-1])
    for s in range(0, len(x), v):
        c = x[s:s + v].astype(np.float64)
        mu, var = c.mean(axes), c.var(axes)
        out[s:s + v] = (c - mu) / np.sqrt(var + eps)
        mm, mv = momentum * mm + (1 - momentum) * mu, momentum * mv + (1 - momentum) * var
    return out, mm, mv


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("shape,v", [((10, 4), 4), ((11, 3, 3, 2), 5), ((8, 5), 8)])
def test_ghost_bn_matches_numpy(shape, v, dynamic):
    x = RNG.normal(2, 3, size=shape).astype(np.float32)
    layer = GhostBatchNormalization(virtual_batch_size=v)
    # A static batch takes the reshape path, an unknown one the segment-sum path.
    spec = [tf.TensorSpec([None, *shape[1:]])] if dynamic else None
    out = tf.function(lambda t: layer(t, training=True), jit_compile=not dynamic,
                      input_signature=spec)(x).numpy()
    ref, mm, mv = numpy_ghost_bn(x, v)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), mm, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), mv, atol=1e-5)


def test_ghost_bn_is_standard_bn_when_the_ghost_holds_the_batch():
    """Same outputs, gradients (input, gamma, beta) and moving statistics as Keras' BN, with a
    scale and offset that are not the identity."""
    x = tf.constant(RNG.normal(1, 2, size=(16, 6)).astype(np.float32))
    ghost, standard = GhostBatchNormalization(virtual_batch_size=16), keras.layers.BatchNormalization()
    gamma, beta = RNG.normal(1, 0.5, size=6), RNG.normal(0, 1, size=6)
    weights = tf.reshape(tf.range(1.0, 97.0), (16, 6))  # a loss whose gradient is not zero
    outs, grads = [], []
    for layer in (ghost, standard):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, training=True)
            loss = tf.reduce_sum(out * weights)
        outs.append(out.numpy())
        grads.append([g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    for g_ghost, g_standard in zip(*grads, strict=True):
        np.testing.assert_allclose(g_ghost, g_standard, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ghost.moving_variance, standard.moving_variance, rtol=1e-6)
    np.testing.assert_allclose(ghost.moving_mean, standard.moving_mean, atol=1e-7)


def test_ghost_bn_inference_uses_moving_statistics_for_any_batch(tmp_path):
    layer = GhostBatchNormalization(virtual_batch_size=4)
    x = RNG.normal(size=(12, 3)).astype(np.float32)
    layer(x, training=True)
    for n in (1, 5, 12):  # no splitting at inference, whatever the batch
        expect = (x[:n] - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-3)
        np.testing.assert_allclose(layer(x[:n], training=False), expect, atol=1e-5)
    # It saves and loads with the model, config included.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    again = next(lay for lay in loaded.layers if isinstance(lay, GhostBatchNormalization))
    assert again.virtual_batch_size == 4
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        GhostBatchNormalization(virtual_batch_size=0)


def test_norm_layer_choices():
    assert isinstance(norm_layer("ghost", virtual_batch_size=7)(), GhostBatchNormalization)
    assert norm_layer("sync")().synchronized
    assert type(norm_layer("standard")()) is keras.layers.BatchNormalization
    assert not norm_layer("standard")().synchronized  # one device: plain BN, bit for bit
    assert norm_layer("per_replica")().virtual_batch_size is None


REPLICA_SCRIPT = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from lbtf.data import load_synthetic
from lbtf.layers import norm_layer
from lbtf.models import build_model
from lbtf.train import TrainConfig, Trainer
bn, one_device = sys.argv[1:3]
data = load_synthetic(shape=(12,), num_classes=3, num_train=256, num_test=64, seed=3)
mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
out = []
for strategy, kind in ((mirrored, bn), (tf.distribute.get_strategy(), one_device)):
    def build(kind=kind):
        keras.utils.set_random_seed(5)
        return build_model("F1", input_shape=(12,), num_classes=3,
                           norm=norm_layer(kind, virtual_batch_size=32))
    trainer = Trainer(build, data, TrainConfig(batch_size=64, jit_compile=False), strategy=strategy)
    trainer.train_epoch(np.random.default_rng(0))
    trainer.measure()  # BN statistics re-estimated under the strategy
    v = trainer.model.trainable_variables
    # Biases feeding BN get zero gradient up to round-off (BN removes the mean), which Adam
    # magnifies into noise-driven steps of size lr: they are left out.
    out.append({"weights": [x.numpy().tolist() for x in v[:-1] if "bias" not in x.path]
                + [v[-1].numpy().tolist()],
                "outputs": trainer.model(data.x_test, training=False).numpy().tolist()})
print(json.dumps(out))
"""


@pytest.mark.parametrize("bn,one_device", [("sync", "standard"), ("standard", "standard"),
                                           ("per_replica", "ghost")])
def test_bn_across_two_replicas(bn, one_device):
    """F1 (with BN) on 2 logical CPUs at global batch 64 against one device: synchronised BN and
    lbtf's standard BN are full-batch BN; per-replica BN, chosen on purpose, trains like ghost BN
    with ghosts of the per-replica 32. A fresh process each: collectives of two strategies in one
    process can collide."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", REPLICA_SCRIPT, bn, one_device],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mirrored, single = json.loads(proc.stdout.strip().splitlines()[-1])
    # Adam's step is about lr * sign(g) wherever |g| >> its epsilon, so a weight whose gradient is
    # round-off (summed in another order on 2 replicas) can move by up to lr = 1e-3 either way.
    # Measured here: 74 of 1.3M weights differ by more than 2e-5 (at most 1.7e-4); pairing the
    # wrong BN (per-replica against whole-batch) moves 75% of them, by up to 8e-3. So: every
    # weight within one step, and at most 1 in 1000 of each array beyond 2e-5.
    for a, b in zip(mirrored["weights"], single["weights"], strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, atol=1e-3)
        off = ~np.isclose(a, b, rtol=1e-4, atol=2e-5)
        assert off.sum() <= max(1, off.size // 1000), (off.sum(), off.size)
    if bn != "per_replica":
        # Those weights move the output probabilities by at most 1.4e-4 here; per-replica BN
        # in place of sync BN moves them by up to 0.34 (0.05 on average).
        np.testing.assert_allclose(mirrored["outputs"], single["outputs"], atol=1e-3)


def _halves(strategy, x: np.ndarray):
    """x distributed as replica r's rows [r n/2, (r + 1) n/2)."""
    half = len(x) // 2
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group * half:][:half]))


# Channel mean/std 0, 30, 300 and 3000 (std 1): E[x^2] - E[x]^2 in float32 loses the variance of
# the last ones (11-15% off at 3000, measured with Keras' synchronized moments).
X_FAR = (np.random.default_rng(4).normal(size=(128, 2, 4)) + [0.0, 30.0, 300.0, 3000.0]
         ).astype(np.float32)


def check_synchronized_moments_are_two_pass_accurate(two_cpus):
    from lbtf.layers import sync_moments

    want_var = X_FAR.astype(np.float64).var(axis=(0, 1))
    m64 = X_FAR.astype(np.float64)
    # The one-pass formula in float32, as Keras computes it: this test could tell it apart.
    x32 = X_FAR.reshape(-1, 4)
    one_pass = (x32 * x32).mean(0, dtype=np.float32) - x32.mean(0, dtype=np.float32) ** 2
    assert abs(one_pass[3] / want_var[3] - 1) > 0.01
    run = tf.function(lambda p: two_cpus.run(lambda x: sync_moments(x, [0, 1]), (p,)))
    means, variances = (two_cpus.experimental_local_results(t) for t in run(_halves(two_cpus, X_FAR)))
    for mean, var in zip(means, variances, strict=True):
        np.testing.assert_allclose(mean, m64.mean(axis=(0, 1)), rtol=1e-6)
        np.testing.assert_allclose(var, want_var, rtol=1e-4)


def numpy_bn_step(x: np.ndarray, w: np.ndarray, momentum: float, eps: float = 1e-3):
    """Reference in float64: BN's output, d(sum(out * w))/dx, d/dgamma, d/dbeta (gamma 1, beta 0)
    and the moving statistics after one update from (0, 1)."""
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    mu, var = x.mean(axes), x.var(axes)
    xhat = (x - mu) / np.sqrt(var + eps)
    g = np.broadcast_to(w, x.shape)
    dx = (g - g.mean(axes) - xhat * (g * xhat).mean(axes)) / np.sqrt(var + eps)
    return (xhat, dx, (g * xhat).sum(axes), g.sum(axes),
            (1 - momentum) * mu, momentum + (1 - momentum) * var)


def _bn_step(layer, x, w):
    """Output of a training call and the gradients of sum(output * w) by x, gamma and beta."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, training=True)
        loss = tf.reduce_sum(out * w)  # summed over replicas: the whole batch's loss
    return (out, *tape.gradient(loss, [x, layer.gamma, layer.beta]))


def check_synchronized_bn_is_as_accurate_as_one_device(two_cpus):
    """SyncBatchNormalization on 2 replicas (half the batch each) and Keras BN on the whole batch
    on one device, both against float64 NumPy at channel means up to 3000 std: outputs and input
    and weight gradients no further off than one device's (float32's own limit at such means),
    moving statistics within 1e-4 (Keras' synchronized BN: 11-15% off)."""
    from lbtf.layers import SyncBatchNormalization

    w = np.random.default_rng(5).normal(size=X_FAR.shape[1:]).astype(np.float32)
    ref = numpy_bn_step(X_FAR, w, momentum=0.9)
    one = keras.layers.BatchNormalization(momentum=0.9)
    alone = [t.numpy() for t in _bn_step(one, tf.constant(X_FAR), w)]
    strategy = two_cpus
    with strategy.scope():
        layer = SyncBatchNormalization(momentum=0.9)
        layer.build(X_FAR.shape)
    run = tf.function(lambda p: strategy.run(lambda x: _bn_step(layer, x, w), (p,)))
    got = run(_halves(strategy, X_FAR))
    local = strategy.experimental_local_results
    got = [np.concatenate([t.numpy() for t in local(g)]) for g in got[:2]] + [
        sum(t.numpy() for t in local(g)) for g in got[2:]]  # weight gradients: replicas summed
    for ours, theirs, want in zip(got, alone, ref[:4], strict=True):
        # float32 summation order alone: a few ulps of the largest value
        floor = 2e-6 * (np.abs(want).max() + 1)
        assert np.abs(ours - want).max() <= max(2 * np.abs(theirs - want).max(), floor)
    for r in range(2):
        np.testing.assert_allclose(local(layer.moving_mean.value)[r].numpy(), ref[4], rtol=1e-6)
        np.testing.assert_allclose(local(layer.moving_variance.value)[r].numpy(), ref[5],
                                   rtol=1e-4)


SYNC_SCRIPT = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
import test_layers
strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
getattr(test_layers, sys.argv[2])(strategy)
"""


@pytest.mark.parametrize("check", ["check_synchronized_moments_are_two_pass_accurate",
                                   "check_synchronized_bn_is_as_accurate_as_one_device"])
def test_synchronized_statistics(check):
    """The two checks above on 2 logical CPUs, in a fresh process each: a second MirroredStrategy
    in the suite's process can reuse another's collective keys (a shape-mismatch abort seen in
    test_placement when both ran in one worker)."""
    import subprocess
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", SYNC_SCRIPT, str(Path(__file__).parent), check],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
