"""Optimizers (lbtf.optim) as the papers ran them: momentum SGD with L2 weight decay against a
NumPy reference, step schedules at their milestones, clipping of the global gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from nets import DATA, mlp, values

from lbtf.optim import learning_rate_schedule
from lbtf.remedies import Remedies
from lbtf.train import TrainConfig, Trainer


def _full_gradient(model) -> list[np.ndarray]:
    """The gradient of the mean training loss over DATA, by a tape (the reference's input)."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            DATA.y_train, model(DATA.x_train, training=True)))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def test_two_sgd_steps_with_momentum_and_weight_decay_match_numpy():
    lr, mu, wd = 0.1, 0.9, 0.01
    config = TrainConfig(batch_size=DATA.num_train, optimizer="sgd", momentum=mu,
                         weight_decay=wd, learning_rate=lr, jit_compile=False, bn_eval="moving")
    trainer = Trainer(lambda: mlp(3), DATA, config)
    ref = mlp(3)  # the same initial weights, stepped by hand
    w = values(ref)
    buffers = [np.zeros_like(v) for v in w]
    for _ in range(2):  # one batch per epoch: the whole training set, permuted
        trainer.train_epoch(np.random.default_rng(0))
        grads = _full_gradient(ref)
        # PyTorch's SGD: b <- mu b + (g + wd w); w <- w - lr b.
        buffers = [mu * b + g + wd * v for b, g, v in zip(buffers, grads, w, strict=True)]
        w = [v - lr * b for v, b in zip(w, buffers, strict=True)]
        ref.set_weights(w)
    for got, want in zip(values(trainer.model), w, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_sgd_steps_across_a_milestone_follow_pytorch():
    """Four full-batch epochs, momentum 0.9, lr 0.1 then 0.01 after epoch 2, by hand in PyTorch's
    convention (MultiStepLR stepped each epoch, torch.optim.SGD): b <- mu b + g + wd w, w <- w -
    lr_t b. Keras' SGD (velocity in lr units) and its one-step-late boundary both miss it: the
    first step after the milestone moves by mu (lr_0 - lr_1) b more in Keras' convention."""
    lr0, lr1, mu, wd = 0.1, 0.01, 0.9, 0.01
    config = TrainConfig(batch_size=DATA.num_train, optimizer="sgd", momentum=mu, weight_decay=wd,
                         learning_rate=lr0, lr_milestones=(2,), lr_values=(lr1,),
                         jit_compile=False, bn_eval="moving")
    trainer = Trainer(lambda: mlp(3), DATA, config)
    ref = mlp(3)
    w = values(ref)
    buffers = [np.zeros_like(v) for v in w]
    for epoch in range(4):
        trainer.train_epoch(np.random.default_rng(epoch))
        lr = lr0 if epoch < 2 else lr1
        grads = _full_gradient(ref)
        buffers = [mu * b + g + wd * v for b, g, v in zip(buffers, grads, w, strict=True)]
        w = [v - lr * b for v, b in zip(w, buffers, strict=True)]
        ref.set_weights(w)
        for got, want in zip(values(trainer.model), w, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6, err_msg=f"epoch {epoch}")


def test_step_schedule_changes_at_its_milestones():
    sched = learning_rate_schedule(0.1, milestones=(2, 5), values=(0.02, 0.004),
                                   steps_per_epoch=10)
    lr = lambda step: float(sched(step))  # noqa: E731
    # Evaluated at the steps already taken: step 20 is the first of epoch 3, after 2 epochs.
    assert [lr(0), lr(19), lr(20), lr(49), lr(50)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.02, 0.004])
    decayed = learning_rate_schedule(1.0, milestones=(1,), decay=0.5, steps_per_epoch=4)
    assert float(decayed(3)) == 1.0 and float(decayed(4)) == 0.5
    assert learning_rate_schedule(0.3, milestones=(), steps_per_epoch=4) == 0.3
    with pytest.raises(ValueError, match="one per milestone"):
        learning_rate_schedule(0.1, milestones=(2, 5), values=(0.02,), steps_per_epoch=10)


def test_conservative_training_counts_milestones_in_batches_not_iterations():
    config = TrainConfig(batch_size=64, lr_milestones=(1,), lr_decay=0.1, learning_rate=1.0,
                         remedies=Remedies(conservative_lambda=1e-3, conservative_steps=3),
                         bn_eval="moving", jit_compile=False)
    schedule = Trainer(lambda: mlp(0), DATA, config)._learning_rate()
    # 256 / 64 = 4 batches an epoch, 3 optimizer iterations each: epoch 1 is iterations 0-11.
    assert float(schedule(11)) == 1.0 and float(schedule(12)) == pytest.approx(0.1)


@pytest.mark.parametrize("replicas", [1, 2])
def test_clipping_acts_on_the_global_gradient(replicas):
    """One plain SGD step clipped at 1e-3 moves the weights by lr x 1e-3, on 1 or 2 replicas
    (Keras' own clipping, per replica, moved them 0.00148 on 2 logical CPUs)."""
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = (tf.distribute.MirroredStrategy(cpus) if replicas == 2
                else tf.distribute.get_strategy())
    config = TrainConfig(batch_size=DATA.num_train, optimizer="sgd", learning_rate=1.0,
                         remedies=Remedies(clip_norm=1e-3), jit_compile=False, bn_eval="moving")
    trainer = Trainer(lambda: mlp(5), DATA, config, strategy=strategy)
    before = values(trainer.model)
    trainer.train_epoch(np.random.default_rng(0))
    moved = np.sqrt(sum(np.sum((a - b) ** 2)
                        for a, b in zip(values(trainer.model), before, strict=True)))
    assert moved == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("replicas", [1, 2])
def test_two_sgd_steps_with_clipping_then_weight_decay_match_numpy(replicas):
    """PyTorch's order (clip_grad_norm_ on the gradient, then SGD adds wd w inside its step):
    b <- mu b + (clip(g) + wd w); w <- w - lr b, by hand, on 1 or 2 replicas. The clip binds
    (||g|| is over 10x the norm) and the decay is large, so the other order is far off."""
    lr, mu, wd, clip = 0.1, 0.9, 0.05, 0.02
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = (tf.distribute.MirroredStrategy(cpus) if replicas == 2
                else tf.distribute.get_strategy())
    config = TrainConfig(batch_size=DATA.num_train, optimizer="sgd", momentum=mu,
                         weight_decay=wd, learning_rate=lr, remedies=Remedies(clip_norm=clip),
                         jit_compile=False, bn_eval="moving")
    trainer = Trainer(lambda: mlp(3), DATA, config, strategy=strategy)
    ref = mlp(3)
    w = values(ref)
    buffers = [np.zeros_like(v) for v in w]
    other = [v.copy() for v in w]  # decay first, then clip: the order this test rules out
    for _ in range(2):
        trainer.train_epoch(np.random.default_rng(0))
        grads = _full_gradient(ref)
        norm = np.sqrt(sum(np.sum(g.astype("f8") ** 2) for g in grads))
        assert norm > 10 * clip
        clipped = [g * clip / norm for g in grads]
        buffers = [mu * b + g + wd * v for b, g, v in zip(buffers, clipped, w, strict=True)]
        w = [v - lr * b for v, b in zip(w, buffers, strict=True)]
        ref.set_weights(w)
    for got, want in zip(values(trainer.model), w, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
    # The other order, one step from the start: it moves the weights differently by far more
    # than the tolerance above.
    ref.set_weights(other)
    grads = _full_gradient(ref)
    decayed = [g + wd * v for g, v in zip(grads, other, strict=True)]
    n = np.sqrt(sum(np.sum(d.astype("f8") ** 2) for d in decayed))
    first_other = [v - lr * d * min(1.0, clip / n) for v, d in zip(other, decayed, strict=True)]
    first_ours = [v - lr * (g * clip / np.sqrt(sum(np.sum(x.astype("f8") ** 2) for x in grads))
                            + wd * v) for v, g in zip(other, grads, strict=True)]
    gap = max(np.max(np.abs(a - b)) for a, b in zip(first_other, first_ours, strict=True))
    assert gap > 1e-4
