"""Tiny networks and data with known answers, shared by several test files."""

import keras
import numpy as np

from lbtf.data import load_synthetic

N = 6


def one_hot_linear(seed=0):
    """f(w) = (1/N) sum_i (w_i - t_i)^2: a linear model without bias on one-hot inputs, MSE."""
    rng = np.random.default_rng(seed)
    x = np.eye(N, dtype=np.float32)
    t = rng.normal(size=(N, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((N,)), keras.layers.Dense(1, use_bias=False)])
    w = rng.normal(size=(N, 1)).astype(np.float32)
    model.set_weights([w])
    return model, x, t, w[:, 0].astype(np.float64), t[:, 0].astype(np.float64)


def small_net(seed=0, dropout=0.0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                             keras.layers.ReLU(), keras.layers.Dropout(dropout),
                             keras.layers.Dense(3, activation="softmax")])


def small_data(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


DATA = load_synthetic(shape=(12,), num_classes=3, num_train=256, num_test=64, seed=3)


def mlp(seed=0, bn=False):
    """A small network; without BN or dropout its result cannot depend on how a batch is split."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((12,)), keras.layers.Dense(16, activation="relu")]
    if bn:
        layers.append(keras.layers.BatchNormalization())
    return keras.Sequential(layers + [keras.layers.Dense(3, activation="softmax")])


def values(model):
    return [v.numpy().copy() for v in model.trainable_variables]
