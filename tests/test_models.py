"""The eight networks: exact parameter counts (derived by hand below), output shapes, bad input."""

import keras
import pytest

from lbtf.errors import UsageError
from lbtf.models import NETWORKS, build_model, parameter_counts


def dense(i, o):
    return i * o + o


def conv(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def bn(c):  # (trainable gamma+beta, moving mean+variance)
    return 2 * c, 2 * c


def fc_counts(inputs, depth, classes):
    trainable = dense(inputs, 512) + (depth - 1) * dense(512, 512) + depth * bn(512)[0]
    trainable += dense(512, classes)
    return trainable, trainable + depth * bn(512)[1]


def shallow_counts(channels, classes, flat):
    layers = [conv(5, channels, 64), conv(5, 64, 64), dense(flat, 384), dense(384, 192)]
    norm = [64, 64, 384, 192]
    trainable = sum(layers) + sum(2 * c for c in norm) + dense(192, classes)
    return trainable, trainable + sum(2 * c for c in norm)


def vgg_counts(channels, classes, flat):
    filters = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    ins = [channels] + filters[:-1]
    trainable = sum(conv(3, i, o) for i, o in zip(ins, filters, strict=True))
    norm = filters + [512]
    trainable += dense(flat, 512) + sum(2 * c for c in norm) + dense(512, classes)
    return trainable, trainable + sum(2 * c for c in norm)


def residual_counts(blocks, widths, stem, channels, classes):
    """Bias-free 3x3 convs, a BN after each, 1x1 conv + BN shortcuts where the width or the
    resolution changes, global average pooling, dense softmax."""
    convs = [3 * 3 * channels * stem]
    norm = [stem]
    c_in = stem
    for stage, w in enumerate(widths):
        for b in range(blocks):
            convs += [3 * 3 * c_in * w, 3 * 3 * w * w]
            norm += [w, w]
            if c_in != w or (stage and not b):
                convs.append(c_in * w)
                norm.append(w)
            c_in = w
    trainable = sum(convs) + sum(2 * c for c in norm) + dense(widths[-1], classes)
    return trainable, trainable + sum(2 * c for c in norm)


# Paper datasets. Paper C1 on 32x32: conv s2 -> 16, pool 3 -> 6, conv s2 -> 3, pool 3 -> 1.
# Reference C1: conv s1 -> 32, pool s2 -> 16, conv -> 16, pool -> 8. VGG: 32 -> 1 after 5 pools.
EXPECTED = {
    ("F1", "mnist"): fc_counts(784, 5, 10),
    ("F2", "timit"): fc_counts(360, 7, 1973),
    ("C1", "paper"): shallow_counts(3, 10, 64),
    ("C3", "paper"): shallow_counts(3, 100, 64),
    ("C1", "reference"): shallow_counts(3, 10, 8 * 8 * 64),
    ("C3", "reference"): shallow_counts(3, 100, 8 * 8 * 64),
    ("C2", "any"): vgg_counts(3, 10, 512),
    ("C4", "any"): vgg_counts(3, 100, 512),
    ("resnet44", "any"): residual_counts(7, (16, 32, 64), 16, 3, 10),
    ("wrn16_4", "paper"): residual_counts(2, (64, 128, 256), 16, 3, 100),
    ("wrn16_4", "reference"): residual_counts(2, (64, 128, 256), 64, 3, 100),
}
SHAPES = {"F1": ((28, 28, 1), 10), "F2": ((360,), 1973), "C1": ((32, 32, 3), 10),
          "C2": ((32, 32, 3), 10), "C3": ((32, 32, 3), 100), "C4": ((32, 32, 3), 100),
          "resnet44": ((32, 32, 3), 10), "wrn16_4": ((32, 32, 3), 100)}


def expected(net, variant):
    for key in ((net, variant), (net, "any"), (net, "mnist"), (net, "timit")):
        if key in EXPECTED:
            return EXPECTED[key]
    raise KeyError(net)


@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("net", NETWORKS)
def test_parameter_counts_on_paper_datasets(net, variant):
    shape, classes = SHAPES[net]
    model = build_model(net, input_shape=shape, num_classes=classes, variant=variant)
    trainable, total = expected(net, variant)
    assert parameter_counts(model) == {"trainable": trainable, "total": total}
    assert model.output_shape == (None, classes)


def test_published_counts_are_pinned():
    """The README's table quotes these numbers; a change to a builder must show up here."""
    assert fc_counts(784, 5, 10) == (1462794, 1467914)
    assert shallow_counts(3, 10, 64) == (209546, 210954)
    assert vgg_counts(3, 10, 512) == (14991946, 15001418)
    # He et al. quote 0.66M for ResNet-44; Zagoruyko and Komodakis 2.7M for WRN-16-4.
    assert residual_counts(7, (16, 32, 64), 16, 3, 10) == (661338, 664698)
    assert residual_counts(2, (64, 128, 256), 16, 3, 100) == (2772916, 2777428)
    assert residual_counts(2, (64, 128, 256), 64, 3, 100) == (2800804, 2805284)


def test_reference_c2_adds_dropout_only():
    kinds = lambda m: ["Dropout" if isinstance(layer, keras.layers.Dropout) else  # noqa: E731
                       type(layer).__name__ for layer in m.layers]
    paper = build_model("C2", input_shape=(32, 32, 3), num_classes=10, variant="paper")
    ref = build_model("C2", input_shape=(32, 32, 3), num_classes=10, variant="reference")
    # Dropout after all but the last conv of each of the 5 stacks (13 - 5 = 8), plus one before the
    # dense layer; both variants keep the dropout after the dense layer.
    assert kinds(ref).count("Dropout") - kinds(paper).count("Dropout") == 8 + 1
    assert [k for k in kinds(ref) if k != "Dropout"] == [k for k in kinds(paper) if k != "Dropout"]


@pytest.mark.parametrize("net", NETWORKS)
def test_every_network_runs_on_small_images(net):
    """'same' pooling lets 8x8 digits pass through even the five VGG pools."""
    model = build_model(net, input_shape=(8, 8, 1), num_classes=10)
    import numpy as np

    probs = model(np.zeros((2, 8, 8, 1), np.float32), training=False).numpy()
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_conv_network_on_vectors_is_a_clear_error():
    with pytest.raises(UsageError, match="needs image inputs"):
        build_model("C1", input_shape=(40,), num_classes=10)


def test_unknown_network_and_variant():
    with pytest.raises(UsageError, match="unknown network"):
        build_model("F9", input_shape=(40,), num_classes=10)
    with pytest.raises(UsageError, match="unknown arch_variant"):
        build_model("F1", input_shape=(40,), num_classes=10, variant="v2")


@pytest.mark.parametrize("net", NETWORKS)
def test_bn_layer_none_builds_the_network_without_normalisation(net):
    """--bn_layer=none: no BN layer, and the hand-derived counts less exactly BN's parameters
    (gamma and beta are as many as the moving statistics, total - trainable): every other
    layer, bias (none on the residual networks' convolutions) and initialiser is kept."""
    from lbtf.bn import bn_layers
    from lbtf.layers import norm_layer

    shape, classes = SHAPES[net]
    model = build_model(net, input_shape=shape, num_classes=classes, norm=norm_layer("none"))
    assert not bn_layers(model)
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in model.layers)
    trainable, total = expected(net, "paper")
    without = trainable - (total - trainable)
    assert parameter_counts(model) == {"trainable": without, "total": without}
