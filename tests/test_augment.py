"""Augmentation in the training step (lbtf.augment): Appendix E's and the CIFAR crop-flip, only
in training, seeded."""

import numpy as np
import pytest

from lbtf import augment

RNG = np.random.default_rng(0)


def test_keskar_augmentation_changes_images_only_in_training():
    from lbtf.data import load_digits

    x = load_digits().x_train[:16]
    aug = augment.pipeline(keskar=True, seed=0)
    assert aug(x, training=True).shape == x.shape
    assert not np.allclose(aug(x, training=True), x)
    np.testing.assert_array_equal(aug(x, training=False), x)
    assert not augment.jit_compatible(aug)


def test_keskar_reflections_are_exact_mirror_images_of_about_half_the_images():
    """Appendix E's pipeline with its rotation and translation set to zero: each image comes out
    as itself or its exact left-right mirror, about half of them mirrored; the zero rotation and
    translation leave every pixel in place."""
    import keras

    x = RNG.uniform(0.1, 1, size=(64, 6, 6, 1)).astype(np.float32)
    steps = augment.keskar_augmentation(rotation_degrees=0.0, translation=0.0, seed=3)
    out = np.asarray(keras.Sequential(steps)(x, training=True))
    mirrored = [bool(np.array_equal(o, xi[:, ::-1])) for o, xi in zip(out, x, strict=True)]
    same = [bool(np.allclose(o, xi, atol=1e-6)) for o, xi in zip(out, x, strict=True)]
    assert all(a != b for a, b in zip(mirrored, same, strict=True))  # one or the other, each
    assert 16 < sum(mirrored) < 48


def _as_crop_of_padded(out: np.ndarray, x: np.ndarray, pad: int) -> tuple[int, int, bool] | None:
    """(dy, dx, flipped) such that `out` is the window at (dy, dx) of x zero-padded by `pad`,
    flipped left-right or not; None when no window matches."""
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[:2]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[dy:dy + h, dx:dx + w]
            for flipped, candidate in ((False, window), (True, window[:, ::-1])):
                if np.array_equal(out, candidate):
                    return dy, dx, flipped
    return None


def test_crop_flip_is_a_padded_window_maybe_flipped_seeded_and_only_in_training():
    x = RNG.uniform(0.1, 1, size=(32, 8, 8, 3)).astype(np.float32)
    aug = augment.pipeline(crop_flip_pad=4, seed=5)
    out = np.asarray(aug(x, training=True))
    assert out.shape == x.shape
    found = [_as_crop_of_padded(o, xi, 4) for o, xi in zip(out, x, strict=True)]
    assert all(f is not None for f in found)
    # Offsets spread over the 9 x 9 windows and about half the images are flipped.
    assert len({f[:2] for f in found}) > 8 and 4 < sum(f[2] for f in found) < 28
    again = augment.pipeline(crop_flip_pad=4, seed=5)
    np.testing.assert_array_equal(np.asarray(again(x, training=True)), out)  # seeded
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)
    assert augment.jit_compatible(aug)


@pytest.mark.parametrize("keskar", [False, True])
def test_no_augmentation_is_none(keskar):
    aug = augment.pipeline(keskar=keskar)
    assert (aug is None) == (not keskar)
