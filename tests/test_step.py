"""lbtf.step: one optimizer step equals plain SGD on the mean loss written out in NumPy, and the
loss is divided by the global batch (not the replica's) so replica counts cannot change an update."""

import keras
import numpy as np
import tensorflow as tf
from nets import DATA, mlp, values

from lbtf.remedies import Remedies
from lbtf.step import TrainStep


def sgd_step(batch_size: int, ids: np.ndarray, lr: float = 0.5) -> list[np.ndarray]:
    model = mlp()
    step = TrainStep(model, keras.optimizers.SGD(lr), batch_size=batch_size, remedy=Remedies(),
                     weight_decay=0.0, crop_flip_pad=0, seed=0,
                     strategy=tf.distribute.get_strategy(), xla=False)
    x, y = tf.constant(DATA.x_train), tf.constant(DATA.y_train)
    loss = step.run_steps(x, y, tf.constant(ids[None, :]), 1)
    want = np.mean(keras.losses.sparse_categorical_crossentropy(
        DATA.y_train[ids], mlp()(DATA.x_train[ids])).numpy()) * len(ids) / batch_size
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    return values(model)


def reference(ids: np.ndarray, lr: float, scale: float = 1.0) -> list[np.ndarray]:
    """w - lr * scale * grad of the mean cross-entropy over examples `ids`, by tape on a twin."""
    ref = mlp()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            DATA.y_train[ids], ref(DATA.x_train[ids], training=True)))
    grads = tape.gradient(loss, ref.trainable_variables)
    return [w - lr * scale * g.numpy() for w, g in zip(values(ref), grads, strict=True)]


def test_one_step_is_sgd_on_the_mean_loss_of_its_batch():
    ids = np.random.default_rng(0).permutation(len(DATA.x_train))[:32]
    for got, want in zip(sgd_step(32, ids), reference(ids, 0.5), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_loss_is_divided_by_the_global_batch():
    """A replica holding 32 of a global batch of 64 contributes half its mean-loss gradient: the
    optimizer sums over replicas, so two such replicas make the one-device mean."""
    ids = np.arange(32)
    for got, want in zip(sgd_step(64, ids), reference(ids, 0.5, scale=0.5), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
