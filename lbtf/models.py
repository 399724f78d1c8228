"""The six networks of Keskar et al. (2017), Appendix B, and the two residual networks of Hoffer et
al. (2017), Table 1, as Keras 3 builders.

Two readings are offered (`variant`):
- "paper": the text of Appendix B. C1/C3: 2 x [conv 64 5x5 stride 2 'same' -> BN -> ReLU ->
  MaxPool(3) (stride 3, 'same')], dense 384 and 192 (BN, ReLU, Dropout 0.5), softmax output.
  C2/C4: VGG stacks 2x64, 2x128, 3x256, 3x512, 3x512 of 3x3 convs (BN, ReLU), MaxPool(2) after each
  stack, dense 512 (BN, ReLU, Dropout 0.5), softmax output.
- "reference": the authors' released Keras code as described in shared/REFERENCE.md. C1/C3 use
  stride-1 5x5 convolutions each followed by MaxPool(3x3, stride 2, 'same'); C2/C4 add Dropout 0.3
  (first stack) / 0.4 (later stacks) after every convolution except the last of a stack, and
  Dropout 0.5 before and after the dense 512 layer. Their Keras-1 BN (mode=2) used batch statistics
  at test time; lbtf always uses moving statistics at inference, in both variants.
F1 and F2 are the same in both variants. Pooling uses 'same' padding so that small images (8x8
digits) pass through every network. Layer order is always conv/dense -> BN -> ReLU (-> Dropout).

resnet44 (He et al.'s CIFAR ResNet, as Hoffer et al.'s code builds it): a 3x3 stem of 16 channels,
three stages of 7 post-activation basic blocks (conv-BN-ReLU-conv-BN, add, ReLU) of widths 16, 32,
64 and strides 1, 2, 2, a 1x1 conv + BN shortcut where the shape changes, global average pooling.
wrn16_4: the same blocks, 2 per stage, widths 64, 128, 256; its stem has 16 channels in "paper"
(Zagoruyko and Komodakis) and 64 in "reference" (Hoffer et al.'s code). Convolutions have no bias
(BN follows) and He-normal weights over the fan-out, as in both codes.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import keras
import numpy as np
from keras import layers

from lbtf.choices import HOFFER_NETWORKS, KESKAR_NETWORKS, NETWORKS, VARIANTS  # noqa: F401
from lbtf.errors import UsageError
from lbtf.layers import ReplicaDropout

# The dataset each network is trained on in the paper (Table 1).
PAPER_DATASET = {"F1": "mnist", "F2": "timit", "C1": "cifar10", "C2": "cifar10",
                 "C3": "cifar100", "C4": "cifar100", "resnet44": "cifar10", "wrn16_4": "cifar100"}
IMAGE_NETWORKS = ("C1", "C2", "C3", "C4", *HOFFER_NETWORKS)
# (blocks per stage, widths, stem channels per variant) of the residual networks.
RESIDUAL = {"resnet44": (7, (16, 32, 64), {"paper": 16, "reference": 16}),
            "wrn16_4": (2, (64, 128, 256), {"paper": 16, "reference": 64})}
VGG_STACKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

NormFactory = Callable[[], layers.Layer]


def _bn_relu(x, norm: NormFactory):
    return layers.ReLU()(norm()(x))


def _dense_block(x, units: int, norm: NormFactory, dropout: float = 0.0):
    x = _bn_relu(layers.Dense(units)(x), norm)
    return ReplicaDropout(dropout)(x) if dropout else x


def _fully_connected(x, depth: int, norm: NormFactory):
    """F1 (depth 5) and F2 (depth 7): batch-normalised ReLU layers of 512 units on flattened input."""
    x = layers.Flatten()(x)
    for _ in range(depth):
        x = _dense_block(x, 512, norm)
    return x


def _shallow_conv(x, variant: str, norm: NormFactory):
    """C1 / C3, the AlexNet-like network."""
    for _ in range(2):
        if variant == "paper":
            x = _bn_relu(layers.Conv2D(64, 5, strides=2, padding="same")(x), norm)
            x = layers.MaxPooling2D(3, padding="same")(x)
        else:
            x = _bn_relu(layers.Conv2D(64, 5, strides=1, padding="same")(x), norm)
            x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = _dense_block(x, 384, norm, dropout=0.5)
    return _dense_block(x, 192, norm, dropout=0.5)


def _deep_conv(x, variant: str, norm: NormFactory):
    """C2 / C4, the VGG-like network."""
    for s, (n, filters) in enumerate(VGG_STACKS):
        for i in range(n):
            x = _bn_relu(layers.Conv2D(filters, 3, padding="same")(x), norm)
            if variant == "reference" and i < n - 1:
                x = ReplicaDropout(0.3 if s == 0 else 0.4)(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    if variant == "reference":
        x = ReplicaDropout(0.5)(x)
    return _dense_block(x, 512, norm, dropout=0.5)


def _conv(filters: int, kernel: int, strides: int = 1):
    # He et al.'s initialisation over the fan-out, untruncated, as both residual codes draw it.
    init = keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                         kernel_initializer=init)


def _basic_block(x, filters: int, strides: int, norm: NormFactory):
    """conv-BN-ReLU-conv-BN plus the shortcut (1x1 conv + BN where the shape changes), ReLU."""
    y = _bn_relu(_conv(filters, 3, strides)(x), norm)
    y = norm()(_conv(filters, 3)(y))
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = norm()(_conv(filters, 1, strides)(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _residual(x, name: str, variant: str, norm: NormFactory):
    """resnet44 / wrn16_4: stem, three stages of basic blocks, global average pooling."""
    blocks, widths, stem = RESIDUAL[name]
    x = _bn_relu(_conv(stem[variant], 3)(x), norm)
    for stage, filters in enumerate(widths):
        for b in range(blocks):
            x = _basic_block(x, filters, 2 if stage and not b else 1, norm)
    return layers.GlobalAveragePooling2D()(x)


def is_user_network(name: str) -> bool:
    """A researcher's own network, named as `package.module:builder`."""
    return ":" in name


def user_builder(spec: str) -> Callable[..., keras.Model]:
    """The builder `package.module:function` names (importable from the working directory)."""
    module, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise UsageError(f"--network={spec}: cannot import {module} ({e}); put it on PYTHONPATH "
                         "or in the working directory") from None
    except AttributeError:
        raise UsageError(f"--network={spec}: module {module} has no {attr}; name a function "
                         "taking input_shape and num_classes (and norm)") from None
    if not callable(found):
        raise UsageError(f"--network={spec}: {attr} is not callable; name a builder function")
    return found


def takes_norm(builder: Callable) -> bool:
    """Whether a user's builder takes lbtf's normalisation factory (`norm=`), through which BN
    treatments, ghost BN and --bn_layer=none reach its layers."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "norm" or p.kind is p.VAR_KEYWORD for p in params)


def _build_user(spec: str, input_shape, num_classes: int, norm: NormFactory | None) -> keras.Model:
    builder = user_builder(spec)
    extra = {"norm": norm or layers.BatchNormalization} if takes_norm(builder) else {}
    model = builder(input_shape=tuple(input_shape), num_classes=num_classes, **extra)
    if not isinstance(model, keras.Model):
        raise UsageError(f"--network={spec} returned {type(model).__name__}, not a keras.Model")
    out = model(np.zeros((2, *input_shape), np.float32), training=False)
    probs = keras.ops.convert_to_numpy(out)
    if probs.shape != (2, num_classes) or not np.allclose(probs.sum(1), 1.0, atol=1e-3) or (
            probs < 0).any():  # lbtf trains on the cross-entropy of probabilities
        raise UsageError(f"--network={spec} must output softmax probabilities of shape (batch, "
                         f"{num_classes}), got outputs of shape {probs.shape} that are not; end "
                         "the model in a softmax")
    return model


def check_compatible(name: str, input_shape: tuple[int, ...]) -> None:
    """Raises a UsageError when `name` is unknown or cannot take inputs of `input_shape`."""
    if is_user_network(name):
        return  # checked when built (`_build_user`)
    if name not in NETWORKS:
        raise UsageError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    if name in IMAGE_NETWORKS and len(input_shape) != 3:
        raise UsageError(f"network {name} needs image inputs (height, width, channels) but the "
                         f"dataset's inputs have shape {tuple(input_shape)}; use F1/F2 or an image "
                         "dataset (cluttered_digits, digits, mnist, cifar10, cifar100)")


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int,
                variant: str = "paper", norm: NormFactory | None = None) -> keras.Model:
    """Builds network `name` (F1..C4, resnet44, wrn16_4) for the given input shape and class count.

    `norm` makes the normalisation layer (default: Keras BatchNormalization); the output layer is a
    dense softmax, never normalised. Weights are drawn from Keras' global seed
    (`keras.utils.set_random_seed`).
    """
    check_compatible(name, input_shape)
    if is_user_network(name):
        return _build_user(name, input_shape, num_classes, norm)
    if variant not in VARIANTS:
        raise UsageError(f"unknown arch_variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    norm = norm or layers.BatchNormalization
    inputs = keras.Input(shape=tuple(input_shape))
    if name in ("F1", "F2"):
        x = _fully_connected(inputs, 5 if name == "F1" else 7, norm)
    elif name in ("C1", "C3"):
        x = _shallow_conv(inputs, variant, norm)
    elif name in ("C2", "C4"):
        x = _deep_conv(inputs, variant, norm)
    else:
        x = _residual(inputs, name, variant, norm)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"{name}_{variant}")


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """Trainable and total (trainable + BN moving statistics) parameter counts."""
    trainable = sum(int(v.numpy().size) for v in model.trainable_variables)
    total = sum(int(v.numpy().size) for v in model.weights)
    return {"trainable": trainable, "total": total}
