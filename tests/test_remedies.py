"""Remedies: ghost BN against NumPy, scaling rules, regime adaptation, the proximal term, FGSM,
a SAM step computed by hand, the diffusion fit and Appendix C's model."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from lbtf import remedies
from lbtf.data import Dataset
from lbtf.experiments.config import override
from lbtf.experiments.flags import parse
from lbtf.experiments.training import training_config
from lbtf.layers import GhostBatchNormalization, norm_layer
from lbtf.remedies import Remedies
from lbtf.train import TrainConfig, Trainer

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
    x = RNG.normal(1, 2, size=(16, 6)).astype(np.float32)
    ghost, standard = GhostBatchNormalization(virtual_batch_size=16), keras.layers.BatchNormalization()
    np.testing.assert_allclose(ghost(x, training=True), standard(x, training=True), atol=1e-5)
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


def test_learning_rate_scaling_and_regime_adaptation():
    assert remedies.scaled_learning_rate(1e-3, 1024, reference=256, rule="sqrt") == pytest.approx(2e-3)
    assert remedies.scaled_learning_rate(1e-3, 1024, reference=256, rule="linear") == pytest.approx(4e-3)
    assert remedies.scaled_learning_rate(1e-3, 1024, reference=256, rule="none") == 1e-3
    assert remedies.adapted_epochs(10, 1024, 256) == 40
    assert remedies.adapted_epochs(10, 384, 256) == 15
    assert remedies.adapted_milestones([30, 60], 1024, 256) == [120, 240]
    # The flags reach the training configuration.
    cfg = parse(["--lr_scaling=sqrt", "--regime_adaptation", "--max_epochs=10", "--patience=3",
                 "--lr_milestones=4", "--clip_norm=5"])
    config = training_config(cfg, 1024)
    assert (config.max_epochs, config.patience, config.lr_milestones) == (40, 12, (16,))
    assert config.learning_rate == pytest.approx(2e-3) and config.remedies.clip_norm == 5.0
    sb = training_config(override(cfg, lr_scaling="none", regime_adaptation=False), 256)
    assert (sb.max_epochs, sb.learning_rate) == (10, 1e-3)


def test_proximal_term_and_its_gradient():
    w = [tf.Variable(RNG.normal(size=(3, 2))), tf.Variable(RNG.normal(size=2))]
    anchors = [tf.Variable(RNG.normal(size=(3, 2))), tf.Variable(RNG.normal(size=2))]
    with tf.GradientTape() as tape:
        value = remedies.proximal_term(w, anchors, 1e-3)
    grads = tape.gradient(value, w)
    flat = np.concatenate([(a.numpy() - b.numpy()).ravel() for a, b in zip(w, anchors, strict=True)])
    assert float(value) == pytest.approx(0.5e-3 * flat @ flat)
    for g, a, b in zip(grads, w, anchors, strict=True):
        np.testing.assert_allclose(g, 1e-3 * (a.numpy() - b.numpy()), rtol=1e-6)


def test_fgsm_moves_each_input_by_eps_up_the_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    x = tf.constant(RNG.normal(size=(8, 5)).astype(np.float32))
    y = tf.constant(RNG.integers(0, 3, size=8))
    loss = lambda xb: tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(xb)))  # noqa: E731
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(x)
    gx = tape.gradient(value, x)
    adv = remedies.fgsm_examples(x, gx, 0.05)
    np.testing.assert_allclose(np.abs(adv - x), 0.05, rtol=1e-5)  # max-norm step of size eps
    np.testing.assert_array_equal(np.sign(adv - x), np.sign(gx))  # in the gradient's sign
    assert float(loss(adv)) > float(value)


def test_label_smoothing_matches_the_smoothed_targets_and_reaches_the_trainer():
    probs = RNG.dirichlet(np.ones(4), size=6).astype(np.float32)
    y = RNG.integers(0, 4, size=6)
    s = 0.1
    # -sum_k q_k log p_k with q = (1 - s) one-hot + s / K, written out per example.
    expected = [-((1 - s) * np.log(p[t]) + s / 4 * np.log(p).sum()) for p, t in zip(probs, y, strict=True)]
    got = remedies.smoothed_cross_entropy(tf.constant(y), tf.constant(probs), s)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The trainer's loss on a batch is the mean of the smoothed losses of its examples.
    data = Dataset("tiny", RNG.normal(size=(16, 5)).astype(np.float32),
                   RNG.integers(0, 3, 16).astype(np.int32),
                   RNG.normal(size=(4, 5)).astype(np.float32),
                   RNG.integers(0, 3, 4).astype(np.int32), 3)

    def build():
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])

    trainer = Trainer(build, data, TrainConfig(batch_size=16, bn_eval="moving",
                                               remedies=Remedies(label_smoothing=s)))
    p = trainer.model(data.x_train).numpy().astype(np.float64)
    manual = np.mean([-((1 - s) * np.log(q[t]) + s / 3 * np.log(q).sum())
                      for q, t in zip(p, data.y_train, strict=True)])
    assert float(trainer._loss(tf.constant(data.x_train), tf.constant(data.y_train))) == (
        pytest.approx(manual, rel=1e-5))


def test_sam_perturbation_on_a_quadratic():
    a = np.diag([1.0, 4.0])
    w = np.array([1.0, 1.0])
    g = a @ w
    (e,) = remedies.sam_perturbation([tf.constant(g)], 0.1)
    np.testing.assert_allclose(e, 0.1 * g / np.linalg.norm(g))
    sam_grad = a @ (w + e.numpy())  # SAM descends along the gradient at w + e
    np.testing.assert_allclose(sam_grad, [1 + 0.1 / np.sqrt(17), 4 + 1.6 / np.sqrt(17)])


def _softmax_grad(x, y, w, b):
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return x.T @ p / len(y), p.mean(0)


def test_one_sam_training_step_matches_a_hand_computed_step():
    """Full-batch step of the trainer with SAM on a linear softmax model, against NumPy: gradient
    g at w, e = rho g / ||g||, gradient g' at w + e, then Adam's first step w - lr g'/(|g'| + eps')."""
    x = RNG.normal(size=(32, 4)).astype(np.float32)
    y = RNG.integers(0, 3, size=32).astype(np.int32)
    data = Dataset("toy", x, y, x, y, 3)

    def build():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))

    trainer = Trainer(build, data, TrainConfig(batch_size=32, learning_rate=0.01,
                                               remedies=Remedies(sam_rho=0.3)))
    w0, b0 = (v.numpy().astype(np.float64) for v in trainer.model.trainable_variables)
    trainer.train_epoch(np.random.default_rng(0))
    gw, gb = _softmax_grad(x.astype(np.float64), y, w0, b0)
    scale = 0.3 / np.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2))
    gw2, gb2 = _softmax_grad(x.astype(np.float64), y, w0 + scale * gw, b0 + scale * gb)
    eps = 1e-7 / np.sqrt(1 - 0.999)  # Adam's first step: lr g / (|g| + eps / sqrt(1 - beta2))
    w1, b1 = (v.numpy() for v in trainer.model.trainable_variables)
    np.testing.assert_allclose(w1, w0 - 0.01 * gw2 / (np.abs(gw2) + eps), atol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.01 * gb2 / (np.abs(gb2) + eps), atol=1e-6)


def test_diffusion_fit_and_recording():
    t = np.array([10, 100, 1000, 10000])
    fit = remedies.diffusion_fit(t, 2.0 * np.log(t) + 1.0)
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0)
    x = RNG.normal(size=(40, 4)).astype(np.float32)
    y = RNG.integers(0, 3, size=40).astype(np.int32)

    def build():
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))

    trainer = Trainer(build, Dataset("toy", x, y, x, y, 3),
                      TrainConfig(batch_size=8,
                                  remedies=Remedies(diffusion_every=2, clip_norm=5.0)))
    assert trainer.optimizer.global_clipnorm == 5.0
    w0 = [v.numpy() for v in trainer.model.trainable_variables]
    trainer.train_epoch(np.random.default_rng(0))
    assert [s for s, _ in trainer.diffusion] == [2, 4, 5]  # 5 steps, recorded every 2 and at the end
    last = np.sqrt(sum(np.sum((v.numpy() - a) ** 2)
                       for v, a in zip(trainer.model.trainable_variables, w0, strict=True)))
    assert trainer.diffusion[-1][1] == pytest.approx(last, rel=1e-5)


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


@pytest.mark.parametrize("bn,one_device", [("sync", "standard"), ("standard", "ghost")])
def test_bn_across_two_replicas(bn, one_device):
    """F1 (with BN) on 2 logical CPUs at global batch 64 against one device: synchronised BN is
    full-batch BN; Keras' default per-replica BN trains like ghost BN with ghosts of the
    per-replica 32 (their moving statistics differ: replicas average one update, ghosts chain
    two). A fresh process each: collectives of two strategies in one process can collide."""
    import json
    import subprocess
    import sys

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
    if bn == "sync":
        # Those weights move the output probabilities by at most 1.4e-4 here; per-replica BN
        # in place of sync BN moves them by up to 0.34 (0.05 on average).
        np.testing.assert_allclose(mirrored["outputs"], single["outputs"], atol=1e-3)


def test_sam_updates_bn_statistics_once_per_step():
    """The moving statistics after a SAM step are those of a plain step: the second (perturbed)
    pass leaves them alone."""
    from lbtf.models import build_model

    x = RNG.normal(size=(32, 6)).astype(np.float32)
    y = RNG.integers(0, 3, size=32).astype(np.int32)
    data = Dataset("toy", x, y, x, y, 3)
    stats = []
    for rho in (0.0, 0.5):
        def build():
            keras.utils.set_random_seed(2)
            return build_model("F1", input_shape=(6,), num_classes=3)
        trainer = Trainer(build, data, TrainConfig(batch_size=32, remedies=Remedies(sam_rho=rho)))
        trainer.train_epoch(np.random.default_rng(0))
        stats.append([v.numpy() for v in trainer.model.non_trainable_variables
                      if "moving_" in v.path])
    for a, b in zip(*stats, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(stats[0][1], 1.0)  # the statistics did move


def test_augmentation_changes_images_only_in_training():
    from lbtf.data import load_digits

    data = load_digits()
    augment = remedies.augmentation(seed=0)
    x = data.x_train[:16]
    assert augment(x, training=True).shape == x.shape
    assert not np.allclose(augment(x, training=True), x)
    np.testing.assert_array_equal(augment(x, training=False), x)
