"""On-the-fly augmentation in the training step (Keras preprocessing layers, seeded): Keskar et
al.'s Appendix E and the CIFAR pipeline of Hoffer et al.'s code. Applied only to training batches;
evaluation and measurements see the data as loaded.

Every random draw is made for the whole global batch and each replica keeps its own rows
(`lbtf.layers.replica_slot`): replicas transform their images differently, reproducibly, and as
one device would transform the same rows."""

from __future__ import annotations

import keras
import tensorflow as tf

from lbtf.layers import replica_slot

# Keras' image transforms (ImageProjectiveTransform) have no XLA kernel; cropping and flipping do.
_NO_XLA = (keras.layers.RandomRotation, keras.layers.RandomTranslation)  # and lbtf's subclasses


def _rows(value, batch, replicas: int, r):
    """Replica r's rows of a draw made for `replicas` x `batch` rows; other values unchanged."""
    if tf.is_tensor(value) and value.shape.rank and value.shape[0] is not None \
            and value.shape[0] == batch * replicas:
        return value[r * batch:(r + 1) * batch]
    return value


class _GlobalDraw:
    """A Keras image preprocessing layer whose random transformation is drawn for the global batch
    (an all-zero stand-in of R x the rows) and cut to this replica's rows."""

    def get_random_transformation(self, data, training=True, seed=None):
        replicas, r = replica_slot()
        if replicas == 1 or data.shape[0] is None:
            return super().get_random_transformation(data, training=training, seed=seed)
        b = data.shape[0]
        stand_in = tf.zeros([b * replicas, *data.shape[1:]], data.dtype)
        drawn = super().get_random_transformation(stand_in, training=training, seed=seed)
        return tf.nest.map_structure(lambda v: _rows(v, b, replicas, r), drawn)


class RandomRotation(_GlobalDraw, keras.layers.RandomRotation):
    pass


class RandomTranslation(_GlobalDraw, keras.layers.RandomTranslation):
    pass


class RandomFlip(_GlobalDraw, keras.layers.RandomFlip):
    pass


def keskar_augmentation(*, rotation_degrees: float = 10.0, translation: float = 0.1,
                        flip: bool = True, seed: int = 0) -> list[keras.layers.Layer]:
    """Appendix E: random rotations, translations and horizontal reflections."""
    layers = [RandomRotation(rotation_degrees / 360.0, fill_mode="constant", seed=seed),
              RandomTranslation(translation, translation, fill_mode="constant", seed=seed + 1)]
    return layers + ([RandomFlip("horizontal", seed=seed + 2)] if flip else [])


class RandomPadCrop(keras.layers.Layer):
    """Zero-pads each image by `pad` pixels and crops a window of its original size at an offset
    drawn per image (torchvision's RandomCrop(size, padding), which Hoffer et al.'s data loader
    applies image by image). Keras' RandomCrop draws one offset per batch, so it is not used."""

    def __init__(self, pad: int, *, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training:
            return x
        p, (h, w) = self.pad, x.shape[1:3]
        padded = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        replicas, r = replica_slot()
        b = tf.shape(x)[0]
        offsets = keras.random.randint((b * replicas, 2), 0, 2 * p + 1,
                                       seed=self.seed_generator, dtype="int32")
        if replicas > 1:  # drawn for the global batch: this replica's rows
            offsets = offsets[r * b:(r + 1) * b]
        rows = offsets[:, :1] + tf.range(h)[None]  # [n, h]: the rows each image keeps
        cols = offsets[:, 1:] + tf.range(w)[None]
        return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def crop_flip(*, pad: int = 4, seed: int = 0) -> list[keras.layers.Layer]:
    """The CIFAR pipeline: pad by `pad` pixels and crop back at a random offset, flip horizontally
    with probability 1/2; both drawn per image."""
    return [RandomPadCrop(pad, seed=seed + 3), RandomFlip("horizontal", seed=seed + 4)]


class TrainingOnly(keras.layers.Layer):
    """Applies `steps` to training batches only; any other call returns its input unchanged (the
    crop-flip's padding would otherwise change the shape at inference)."""

    def __init__(self, steps: list[keras.layers.Layer], **kwargs):
        super().__init__(**kwargs)
        self.steps = keras.Sequential(steps)

    def call(self, x, training=None):
        return self.steps(x, training=True) if training else x


def pipeline(*, keskar: bool = False, crop_flip_pad: int = 0,
             seed: int = 0) -> TrainingOnly | None:
    """The training-step augmentation (Appendix E's, then the CIFAR crop-flip when
    `crop_flip_pad` > 0), or None when none is on."""
    layers = (keskar_augmentation(seed=seed) if keskar else []) + (
        crop_flip(pad=crop_flip_pad, seed=seed) if crop_flip_pad else [])
    return TrainingOnly(layers, name="augmentation") if layers else None


def jit_compatible(augmentation: TrainingOnly | None) -> bool:
    """Whether a training loop with this augmentation can be XLA-compiled."""
    return augmentation is None or not any(isinstance(la, _NO_XLA)
                                           for la in augmentation.steps.layers)
