"""The training engine: steps, stopping, checkpoints, seeds, evaluation, distribution."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from nets import DATA, mlp, values

from lbtf.checkpoints import checkpoint_at, kept_weights
from lbtf.models import build_model
from lbtf.remedies import Remedies
from lbtf.train import (
    TrainConfig,
    Trainer,
    epoch_indices,
    fit,
    restore_weights,
    should_stop,
)


def test_should_stop():
    assert not should_stop([3, 2, 1], patience=2, min_delta=0)
    assert should_stop([3, 1, 1.5, 1.2], patience=2, min_delta=0)
    assert not should_stop([3, 1, 1.5, 0.9], patience=2, min_delta=0)
    # An improvement smaller than min_delta does not count.
    assert should_stop([3, 1, 0.99, 0.995], patience=2, min_delta=0.05)
    assert not should_stop([1.0] * 3, patience=3, min_delta=0)  # too few epochs to judge


def test_should_stop_counts_patience_in_epochs_when_measuring_every_n():
    # Measured after epochs 2, 4, 6, 8; patience 3 epochs -> the last 2 measurements (epochs 5-8)
    # must fail: epoch 4's 1.0 is the best, epochs 6 and 8 do not beat it.
    assert should_stop([2.0, 1.0, 1.2, 1.1], patience=3, min_delta=0, every=2)
    # One measurement (epoch 8 alone) spans only 2 epochs: not enough.
    assert not should_stop([2.0, 1.0, 1.2, 0.9], patience=3, min_delta=0, every=2)
    assert not should_stop([2.0, 1.0, 0.9, 1.1], patience=3, min_delta=0, every=2)
    # patience 4 at every 2: again 2 measurements; at every 5: 1 measurement.
    assert should_stop([2.0, 1.0, 1.2, 1.1], patience=4, min_delta=0, every=2)
    assert should_stop([2.0, 1.0, 1.2], patience=4, min_delta=0, every=5)


def test_epoch_indices_are_a_permutation_cut_into_batches():
    idx = epoch_indices(np.random.default_rng(0), 10, 3)
    assert idx.shape == (3, 3) and len(set(idx.ravel().tolist())) == 9
    assert set(idx.ravel().tolist()) <= set(range(10))


def test_two_adam_steps_match_numpy():
    """Full-batch steps (256 examples, one step an epoch) against Keras' Adam written out in
    NumPy from gradients taken at the reference's own weights: lr_t = lr sqrt(1 - b2^t) /
    (1 - b1^t), w <- w - lr_t m / (sqrt(v) + eps)."""
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-7
    trainer = Trainer(mlp, DATA, TrainConfig(batch_size=256, learning_rate=lr, jit_compile=False,
                                             bn_eval="moving"))
    ref = mlp()
    w = [v.astype(np.float64) for v in values(ref)]
    m = [np.zeros_like(v) for v in w]
    s2 = [np.zeros_like(v) for v in w]
    for t in (1, 2):
        _, steps = trainer.train_epoch(np.random.default_rng(t))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                DATA.y_train, ref(DATA.x_train, training=True)))
        grads = [g.numpy().astype(np.float64) for g in tape.gradient(loss, ref.trainable_variables)]
        m = [b1 * a + (1 - b1) * g for a, g in zip(m, grads, strict=True)]
        s2 = [b2 * a + (1 - b2) * g * g for a, g in zip(s2, grads, strict=True)]
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        w = [v - lr_t * a / (np.sqrt(b) + eps) for v, a, b in zip(w, m, s2, strict=True)]
        ref.set_weights([v.astype(np.float32) for v in w])
        assert steps == 1
        for got, want in zip(values(trainer.model), w, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_fit_checkpoints_every_epoch_and_the_last_is_final(tmp_path):
    trainer = Trainer(mlp, DATA, TrainConfig(batch_size=32, max_epochs=3, patience=10,
                                             checkpoint_every=1))
    start = values(trainer.model)
    result = fit(trainer, checkpoint_dir=tmp_path, log=lambda s: None)
    assert result.stop_reason == "max_epochs" and len(result.history) == 3
    assert [h["steps"] for h in result.history] == [8, 8, 8]
    kept = kept_weights(tmp_path)
    assert list(kept) == [0, 1, 2, 3] and checkpoint_at(tmp_path) == kept[3]
    ckpts = list(kept.values())
    model = mlp(seed=99)
    restore_weights(model, ckpts[-1])
    for a, b in zip(values(model), values(trainer.model), strict=True):
        np.testing.assert_array_equal(a, b)
    restore_weights(model, ckpts[0])
    for a, b in zip(values(model), start, strict=True):
        np.testing.assert_array_equal(a, b)


def test_best_epoch_is_the_lowest_finite_training_loss():
    from lbtf.train import best_epoch

    losses = [0.5, 0.1, 0.3, 0.1, float("nan")]
    assert best_epoch([{"epoch": i + 1, "train_loss": v} for i, v in enumerate(losses)]) == 2


def test_fit_keeps_only_the_start_the_best_and_the_last_epoch(tmp_path):
    """checkpoint_every=0 (the default) keeps the start, the epoch of lowest training loss (the
    measured point) and the last epoch; a superseded lowest-loss epoch is deleted, and the resume
    checkpoint goes once the run is recorded."""
    from lbtf.checkpoints import remove_resume
    from lbtf.experiments.training import at_point

    trainer = Trainer(mlp, DATA, TrainConfig(batch_size=32, max_epochs=6, patience=10,
                                             learning_rate=0.3))
    result = fit(trainer, checkpoint_dir=tmp_path, log=lambda s: None)
    losses = [h["train_loss"] for h in result.history]
    assert set(kept_weights(tmp_path)) == {0, 1 + int(np.argmin(losses)), 6}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("weights-")) == [
        "resume"]
    remove_resume(tmp_path)
    assert not (tmp_path / "resume").exists()
    record = {"history": result.history, "stop_reason": result.stop_reason,
              "checkpoint_dir": str(tmp_path)}
    best = at_point(record, "best")
    assert best["measured_epoch"] == 1 + int(np.argmin(losses))
    assert best["train_loss"] == min(losses) and best["checkpoint"].endswith(
        f"weights-{best['measured_epoch']}")
    assert at_point(record, "last")["measured_epoch"] == 6


def test_fit_stops_when_the_loss_stops_improving():
    trainer = Trainer(mlp, DATA, TrainConfig(batch_size=32, max_epochs=200, patience=2,
                                             min_delta=10.0))  # nothing improves by 10
    result = fit(trainer, log=lambda s: None)
    assert result.stop_reason == "converged" and len(result.history) == 3


def test_measuring_every_n_epochs_trains_the_same_weights(tmp_path):
    """Measuring is not training: rows at epochs 3, 6 and the last (7), each with the steps since
    the row before, and the same trainable weights as measuring after every epoch."""
    def run(every, folder):
        cfg = TrainConfig(batch_size=32, max_epochs=7, patience=10, measure_every=every,
                          jit_compile=False)
        trainer = Trainer(lambda: mlp(0, bn=True), DATA, cfg)
        result = fit(trainer, seed=2, checkpoint_dir=tmp_path / folder, log=lambda s: None)
        return result, [v.numpy() for v in trainer.model.trainable_variables]
    each, w_each = run(1, "a")
    sparse, w_sparse = run(3, "b")
    per_epoch = DATA.num_train // 32
    assert [r["epoch"] for r in sparse.history] == [3, 6, 7]
    assert [r["steps"] for r in sparse.history] == [3 * per_epoch, 3 * per_epoch, per_epoch]
    assert sparse.stop_reason == "max_epochs" and sparse.final["epoch"] == 7
    assert sparse.history[1]["minibatch_loss"] == pytest.approx(each.history[5]["minibatch_loss"],
                                                                rel=1e-5)
    for x, y in zip(w_each, w_sparse, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # Only measured epochs can be kept: the start and the lowest loss and the last among 3, 6, 7.
    assert set(kept_weights(tmp_path / "b")) <= {0, 3, 6, 7} and 7 in kept_weights(tmp_path / "b")


def test_diverged_run_is_marked():
    trainer = Trainer(mlp, DATA, TrainConfig(batch_size=32, max_epochs=5, learning_rate=1e30))
    result = fit(trainer, log=lambda s: None)
    assert result.stop_reason == "diverged" and len(result.history) < 5
    # Measured every 4 epochs, a run is still measured (and stopped) in the epoch it diverges.
    trainer = Trainer(mlp, DATA, TrainConfig(batch_size=32, max_epochs=5, learning_rate=1e30,
                                             measure_every=4))
    assert fit(trainer, log=lambda s: None).history[-1]["epoch"] < 4


def train_weights(seed, build_seed=None, epochs=2, bn=True):
    trainer = Trainer(lambda: mlp(seed if build_seed is None else build_seed, bn=bn), DATA,
                      TrainConfig(batch_size=32, max_epochs=epochs, patience=10))
    fit(trainer, seed=seed, log=lambda s: None)
    return values(trainer.model)


def test_seeds_differ_and_reproduce():
    a, b, c = train_weights(0), train_weights(0), train_weights(1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert not np.allclose(a[0], c[0])
    assert not np.allclose(mlp(0).get_weights()[0], mlp(1).get_weights()[0])


def test_reset_reproduces_a_fresh_trainer():
    """Reusing a compiled trainer across trials must give exactly what a new one gives."""
    trainer = Trainer(lambda: mlp(5, bn=True), DATA, TrainConfig(batch_size=32, max_epochs=2))
    fit(trainer, seed=1, log=lambda s: None)  # dirty weights and Adam state
    trainer.reset([v.numpy() for v in mlp(0, bn=True).variables])
    fit(trainer, seed=0, log=lambda s: None)
    for x, y in zip(values(trainer.model), train_weights(0, build_seed=0), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_paper_network_trains_on_a_tiny_set():
    data = DATA.subset(128, 32)
    trainer = Trainer(lambda: build_model("F1", input_shape=(12,), num_classes=3), data,
                      TrainConfig(batch_size=32, learning_rate=1e-3, max_epochs=5, patience=10))
    result = fit(trainer, log=lambda s: None)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_results_json_is_strict(tmp_path):
    import json

    from lbtf.runs import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"loss": np.float32(np.nan), "acc": np.float64(0.5),
                                            "w": np.arange(2), "pair": (1, float("inf"))})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == {"loss": None, "acc": 0.5, "w": [0, 1], "pair": [1, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def dropout_bn_net(seed=0):
    """BN, dropout and a learning-rate schedule: everything a resumed run must restore."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.BatchNormalization(), keras.layers.Dropout(0.3),
                             keras.layers.Dense(3, activation="softmax")])


class Interrupt(Exception):
    pass


def test_an_interrupted_fit_resumes_to_the_same_result(tmp_path):
    cfg = TrainConfig(batch_size=32, max_epochs=5, patience=10, lr_milestones=(3,),
                      remedies=Remedies(diffusion_every=4), resume_interval=0)
    full = fit(Trainer(dropout_bn_net, DATA, cfg), seed=3, checkpoint_dir=tmp_path / "a",
               log=lambda s: None)

    def crash_in_epoch_3(line):
        if "epoch   3" in line:  # after training epoch 3, before its checkpoint
            raise Interrupt
    with pytest.raises(Interrupt):
        fit(Trainer(dropout_bn_net, DATA, cfg), seed=3, checkpoint_dir=tmp_path / "b",
            log=crash_in_epoch_3)
    lines = []
    fresh = Trainer(lambda: dropout_bn_net(seed=9), DATA, cfg)  # other weights: all restored
    resumed = fit(fresh, seed=3, checkpoint_dir=tmp_path / "b", log=lines.append)
    assert resumed.resumed_from == 2 and "resumed after epoch 2" in lines[0]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]
    drop = ("seconds",)
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert resumed.diffusion == full.diffusion and resumed.stop_reason == full.stop_reason
    a = tf.train.load_checkpoint(str(tmp_path / "a" / "weights-5"))
    b = tf.train.load_checkpoint(str(tmp_path / "b" / "weights-5"))
    for name in a.get_variable_to_shape_map():
        if name.endswith("VARIABLE_VALUE") and "save_counter" not in name:
            np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)
    # A finished run is not trained again.
    again = fit(Trainer(dropout_bn_net, DATA, cfg), seed=3, checkpoint_dir=tmp_path / "b",
                log=lambda s: None)
    assert again.resumed_from == 5 and strip(again.history) == strip(full.history)


def test_resume_checkpoints_are_written_every_interval_and_a_restart_clears_later_weights(tmp_path):
    """With a long resume_interval only the end of a run writes a resume checkpoint: a run killed
    before it starts again from scratch, and the weights its first start left are deleted."""
    cfg = TrainConfig(batch_size=32, max_epochs=4, patience=10, resume_interval=1e9,
                      learning_rate=0.3, checkpoint_every=2)

    def crash_in_epoch_3(line):
        if "epoch   3" in line:
            raise Interrupt
    with pytest.raises(Interrupt):
        fit(Trainer(mlp, DATA, cfg), checkpoint_dir=tmp_path, log=crash_in_epoch_3)
    assert not (tmp_path / "resume").exists() and 2 in kept_weights(tmp_path)
    (tmp_path / "weights-3.index").write_bytes(b"left by the killed start")
    result = fit(Trainer(mlp, DATA, cfg), checkpoint_dir=tmp_path, log=lambda s: None)
    losses = [h["train_loss"] for h in result.history]
    assert result.resumed_from == 0 and len(losses) == 4
    assert set(kept_weights(tmp_path)) == {0, 2, 4, 1 + int(np.argmin(losses))}
    assert tf.train.latest_checkpoint(str(tmp_path / "resume")).endswith("ckpt-4")


def test_a_diverged_run_stops_and_keeps_its_finite_checkpoints(tmp_path):
    # Two sane epochs, then a learning rate of 1e37 overflows the weights.
    cfg = TrainConfig(batch_size=32, max_epochs=6, patience=10, learning_rate=1e-3,
                      lr_milestones=(2,), lr_decay=1e40)
    lines = []
    result = fit(Trainer(mlp, DATA, cfg), checkpoint_dir=tmp_path, log=lines.append)
    assert result.stop_reason == "diverged" and len(result.history) == 3
    assert "DIVERGED" in lines[-1] and np.isfinite(result.history[1]["train_loss"])
    assert checkpoint_at(tmp_path).endswith("weights-2") and max(kept_weights(tmp_path)) == 2
    model = mlp()
    restore_weights(model, str(tmp_path / "weights-2"))
    assert all(np.isfinite(v).all() for v in values(model))
