"""lbtf.bn: BN during measurements. The batch-statistics twin (Keras 1's mode 2) against NumPy,
its invariances, and that measuring with it changes no variable of the measured model."""

import keras
import numpy as np
import pytest

from lbtf.bn import (
    BatchNormEstimator,
    BatchStatisticsNormalization,
    activation_bytes,
    estimation_subset,
    measurement_model,
    population_pass,
)
from lbtf.layers import GhostBatchNormalization
from lbtf.objective import EvalSet, Objective, default_loss, flat_weights, make_evaluator
from lbtf.sharpness import keskar_sharpness


def net(seed=0, norm=keras.layers.BatchNormalization, dropout=0.5):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, name="pre_bn")(inp)
    h = keras.layers.ReLU()(norm()(h))
    h = keras.layers.Dropout(dropout)(h)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))


def data(n=50, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def numpy_forward(model, x):
    """Mode 2 by hand: pre-BN dense, batch mean and biased variance, gamma/beta, ReLU, softmax."""
    w1, b1, gamma, beta, _, _, w2, b2 = (v.numpy().astype(np.float64) for v in model.weights)
    bn = model.layers[2]
    h = x @ w1 + b1
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + bn.epsilon) * gamma + beta
    z = np.maximum(h, 0) @ w2 + b2
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_twin_normalises_with_batch_statistics_in_inference_like_numpy():
    model = net()
    x, _ = data()
    for bn in model.layers[2].moving_mean, model.layers[2].moving_variance:
        bn.assign(bn.numpy() + 3.0)  # moving statistics far from the batch's: must not matter
    twin = measurement_model(model, "batch")
    assert isinstance(twin.layers[2], BatchStatisticsNormalization)
    np.testing.assert_allclose(twin(x, training=False).numpy(), numpy_forward(model, x),
                               rtol=1e-4, atol=1e-6)
    assert measurement_model(model, "moving") is model


def test_ghost_bn_twin_and_bad_mode():
    model = net(norm=lambda: GhostBatchNormalization(virtual_batch_size=4))
    x, _ = data()
    twin = measurement_model(model, "batch")  # whole-chunk statistics, not ghosts
    np.testing.assert_allclose(twin(x).numpy(), numpy_forward(model, x), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="moving, batch"):
        measurement_model(model, "ghost")


def test_pre_bn_bias_shift_is_flat_with_batch_statistics_only():
    """Shifting the bias of the dense layer feeding BN cancels in the batch mean (mode 2) but not
    against frozen moving statistics."""
    model = net(dropout=0.0)
    x, y = data()
    w = flat_weights(model)
    shifted = w.copy()
    shifted[6 * 8:6 * 8 + 8] += 0.7  # pre_bn's bias follows its 6 x 8 kernel in the flat vector
    batch = Objective(measurement_model(model, "batch"), x, y, batch_size=50, jit_compile=False)
    moving = Objective(model, x, y, batch_size=50, jit_compile=False)
    assert batch.value_and_gradient(shifted)[0] == pytest.approx(batch.value_and_gradient(w)[0],
                                                                 rel=1e-5)
    assert abs(moving.value_and_gradient(shifted)[0] - moving.value_and_gradient(w)[0]) > 1e-3


def test_batch_mode_measurement_changes_no_variable():
    model = net()
    x, y = data()
    before = [v.numpy().copy() for v in model.variables]
    twin = measurement_model(model, "batch")
    keskar_sharpness(twin, x, y, epsilon=1e-2, subspace_dim=2, jit_compile=False)
    for v, b in zip(model.variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)


def test_unpadded_evaluation_normalises_each_chunk_by_itself():
    """50 examples in chunks of 20: 20, 20 and a chunk of 10 of its own (padding would change the
    statistics); the mean loss and accuracy weight the chunks by size."""
    model = net()
    x, y = data()
    twin = measurement_model(model, "batch")
    loss, acc = make_evaluator(twin, jit_compile=False)(EvalSet(x, y, 20, pad=False))
    probs = np.concatenate([numpy_forward(model, x[s:s + 20]) for s in (0, 20, 40)])
    assert loss == pytest.approx(float(np.mean(-np.log(probs[np.arange(50), y]))), rel=1e-4)
    assert acc == pytest.approx(float(np.mean(probs.argmax(1) == y)))


def two_bn_net(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(8)(inp))
    h = keras.layers.Dropout(0.5)(keras.layers.ReLU()(h))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(8)(h))
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.ReLU()(h)))


def test_population_pass_gives_numpy_population_statistics_and_metrics():
    model = net(dropout=0.5)
    x, y = data(n=64)
    loss, acc = population_pass(model, x, y, loss=default_loss, jit_compile=True)()
    w1, b1 = (v.numpy().astype(np.float64) for v in model.layers[1].weights)
    h = x @ w1 + b1
    bn = model.layers[2]
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(0), rtol=1e-5, atol=1e-6)
    probs = numpy_forward(model, x)  # the whole set's statistics, dropout off
    assert loss == pytest.approx(-np.log(probs[np.arange(len(y)), y]).mean(), rel=1e-5)
    assert acc == pytest.approx(np.mean(probs.argmax(1) == y))


def test_population_pass_statistics_reproduce_its_metrics_in_inference_mode():
    """With two BN layers the second one's statistics depend on the first one's: assigned, they
    must give the same loss through Keras' own inference path (moving statistics, dropout off)."""
    model = two_bn_net()
    x, y = data(n=64)
    loss, acc = population_pass(model, x, y, loss=default_loss, jit_compile=False)()
    assert (loss, acc) == pytest.approx(make_evaluator(model, False)(EvalSet(x, y, 64)), rel=1e-5)
    # Chunked re-estimation is a different (noisier) estimate: another loss.
    BatchNormEstimator(model, x, batch_size=16)()
    assert make_evaluator(model, False)(EvalSet(x, y, 64))[0] != pytest.approx(loss, rel=1e-4)


def test_population_pass_declines_without_bn_or_over_its_memory_bound(monkeypatch):
    import lbtf.bn

    x, y = data(n=64)
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    assert population_pass(plain, x, y, loss=default_loss, jit_compile=False) is None
    monkeypatch.setattr(lbtf.bn, "POPULATION_PASS_BYTES", activation_bytes(net(), 63))
    assert population_pass(net(), x, y, loss=default_loss, jit_compile=False) is None
    assert population_pass(net(), x[:63], y[:63], loss=default_loss, jit_compile=False)


def test_chunked_estimate_of_the_whole_set_equals_the_population_pass_with_dropout():
    """A network with dropout between two BN layers: the chunked estimator, given one chunk
    holding the whole set, must estimate what the population pass computes (the second BN
    layer's input statistics with dropout off). With dropout on in its probe (before the fix)
    every statistic of the second layer was off, by up to 2.1x."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((6,))
    h = keras.layers.Dropout(0.5)(keras.layers.ReLU()(keras.layers.BatchNormalization()(
        keras.layers.Dense(8)(inp))))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(8)(h))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(h))
    x, y = data(n=64)
    population_pass(model, x, y, loss=default_loss, jit_compile=False)()
    expected = [v.numpy().copy() for v in model.non_trainable_variables if "moving" in v.path]
    for v in model.non_trainable_variables:
        v.assign(np.zeros(v.shape) if "mean" in v.path else np.ones(v.shape))
    BatchNormEstimator(model, x, batch_size=64, jit_compile=False)()
    got = [v.numpy() for v in model.non_trainable_variables if "moving" in v.path]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_rescaling_into_bn_keeps_the_function_and_adaptive_sharpness_but_not_keskars():
    """x4 on the weights feeding BN (its statistics scaled to match): the batch-statistics outputs
    move by BN's epsilon only (measured 3e-4), adaptive worst-case and average-case sharpness
    by 0.1% (the same box and draws in the original coordinates), Keskar's box by 16%."""
    from lbtf.bn import rescale_into_bn
    from lbtf.measures import average_sharpness

    model = net(dropout=0.0)
    x, y = data(n=64)

    def measured():
        twin = measurement_model(model, "batch")
        values = [keskar_sharpness(twin, x, y, epsilon=1e-2, eta=eta, maxiter=20,
                                   jit_compile=False).value for eta in (1.0, 0.0)]
        average = average_sharpness(Objective(twin, x, y, jit_compile=False), flat_weights(twin),
                                    sigma=0.05, samples=20).value
        return twin(x).numpy(), values, average

    out, (keskar, adaptive), average = measured()
    assert rescale_into_bn(model, 4.0) == ["pre_bn"]
    out4, (keskar4, adaptive4), average4 = measured()
    np.testing.assert_allclose(out4, out, atol=1e-3)
    assert adaptive4 == pytest.approx(adaptive, rel=1e-2)
    assert average4 == pytest.approx(average, rel=1e-2)
    assert abs(keskar4 - keskar) > 0.1 * keskar
    with pytest.raises(ValueError, match="positive"):
        rescale_into_bn(model, 0.0)


def test_estimation_subset_is_seeded_and_keeps_the_original_order():
    x = np.arange(100)
    a, b = estimation_subset(x, 10, seed=3), estimation_subset(x, 10, seed=3)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 10
    assert not np.array_equal(a, estimation_subset(x, 10, seed=4))
    assert len(estimation_subset(x, 0, seed=3)) == 100
