"""A user's classifier and data as measurement code takes them, checked before any work.

Any Keras classifier (Sequential, functional or subclassed; ending in a softmax or in logits) and
its data (NumPy arrays or a finite `tf.data.Dataset`; class ids or one-hot labels) become plain
arrays, class ids and a `from_logits` flag; whatever does not fit is refused with one ValueError
line that says what to pass. Measurement code knows nothing of how the model was trained.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

PROBE = 256  # examples whose outputs decide between probabilities and logits


def dataset_arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a finite dataset of (x, y) pairs, batched or not."""
    if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the tf.data.Dataset is infinite (a .repeat()?); pass a finite one, "
                         "e.g. ds.take(n)")
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError("the tf.data.Dataset must yield (x, y) pairs; map it to two tensors")
    xs, ys = [], []
    for xb, yb in ds.as_numpy_iterator():
        xs.append(np.asarray(xb))
        ys.append(np.asarray(yb))
    if not xs:
        raise ValueError("the tf.data.Dataset is empty; pass one holding the training examples")
    batched = xs[0].ndim > 0 and ys[0].ndim >= 1 and len(ys[0]) == len(xs[0]) and (
        len(spec[0].shape) >= 1 and spec[0].shape[0] is None)
    if batched:
        return np.concatenate(xs), np.concatenate(ys)
    return np.stack(xs), np.stack(ys)


def as_arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
    """float32 inputs and raw labels from arrays, or from a dataset passed as `x` (y None)."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("pass y=None with a tf.data.Dataset: its elements hold the labels")
        x, y = dataset_arrays(x)
    if y is None:
        raise ValueError("labels y are missing; pass measure_model(model, x, y) or a dataset "
                         "of (x, y) pairs")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x holds {len(x)} examples but y {len(y)}; pass one label per example")
    if not len(x):
        raise ValueError("x is empty; pass the training examples to measure on")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"x has dtype {x.dtype}; pass numeric inputs")
    return np.ascontiguousarray(x, np.float32), y


def class_ids(y: np.ndarray, num_classes: int) -> np.ndarray:
    """int32 class ids from class ids ([n] or [n, 1]) or one-hot rows ([n, num_classes])."""
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        if not (np.isin(y, (0, 1)).all() and (y.sum(1) == 1).all()):
            raise ValueError("y looks one-hot ([n, classes]) but its rows are not one 1 and "
                         "zeros (soft labels?); pass class ids or one-hot rows")
        return np.argmax(y, 1).astype(np.int32)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y has shape {y.shape}; pass class ids [n] or one-hot rows "
                         f"[n, {num_classes}]")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(y == np.round(y)):
        raise ValueError("y holds non-integer values; pass class ids in [0, classes)")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y holds class ids in [{int(y.min())}, {int(y.max())}] but the model "
                         f"has {num_classes} outputs; pass ids in [0, {num_classes})")
    return y.astype(np.int32)


def check_built(model: keras.Model) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"expected a keras.Model, got {type(model).__name__}")
    if not model.built or not model.trainable_variables:
        raise ValueError("the model has no weights yet; call it once on a batch (model(x[:1])) or "
                         "load its weights before measuring")


def output_is_logits(model: keras.Model, x: np.ndarray,
                     from_logits: bool | None) -> tuple[bool, int]:
    """(whether the model ends in logits, its class count): `from_logits` when given (checked
    against its outputs), otherwise decided from the outputs of the first examples (rows of
    probabilities: in [0, 1] and summing to 1)."""
    out = keras.ops.convert_to_numpy(model(x[:PROBE], training=False))
    if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"the model's output has shape {tuple(out.shape)}; measure_model takes a "
                         "classifier with one output of [batch, classes >= 2]")
    probabilities = bool((out >= 0).all() and (out <= 1).all()
                         and np.allclose(out.sum(1), 1.0, atol=1e-3))
    if from_logits is None:
        if not probabilities and (out >= 0).all() and (out <= 1).all():
            raise ValueError("the model's outputs lie in [0, 1] but do not sum to 1 (a sigmoid?); "
                             "end it in a softmax, or pass from_logits=True if they are logits")
        return not probabilities, out.shape[1]
    if not from_logits and not probabilities:
        raise ValueError("from_logits=False but the model's outputs are not probabilities (rows "
                         "in [0, 1] summing to 1); pass from_logits=True")
    return bool(from_logits), out.shape[1]
