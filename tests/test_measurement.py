"""lbtf.measurement: the Python entry measures a model as the command line does (same defaults,
same values at a saved minimiser), and leaves the model as it found it."""

import dataclasses
import json

import keras
import numpy as np
import pandas as pd
from conftest import run_experiment

from lbtf.bn import bn_layers
from lbtf.checkpoints import load_weights
from lbtf.data import load_mnist1d
from lbtf.experiments import sharpness, training
from lbtf.experiments.flags import parse
from lbtf.measurement import MeasureSettings, measure_model
from lbtf.models import build_model


def test_the_python_defaults_are_the_command_lines():
    """Every MeasureSettings default is what the flags' defaults make of it: a new flag default
    or a new field cannot drift apart silently."""
    assert sharpness.settings(parse([])) == MeasureSettings()


def test_measure_model_reproduces_the_command_lines_values(data_dir, tmp_path):
    """A minimiser measured by a table2 run, loaded into a fresh network and measured from Python
    with the run's settings (its BN statistics re-estimated from the training set, as the run's
    checkpoint holds them), gives the run's values."""
    args = [f"--data_dir={data_dir}", f"--output_dir={tmp_path}", "--mnist1d_samples=500",
            "--max_epochs=3", "--trials=1", "--patience=2", "--parametric=", "--epsilons=1e-3",
            "--subspace_dim=3", "--sharpness_maxiter=2", "--nojit_compile",
            "--measures=keskar,adaptive,trace", "--measure_samples=3"]
    run, _ = run_experiment(*args)
    results = json.loads((run / "results.json").read_text())
    cfg = parse(args)
    data = load_mnist1d(num_samples=500, data_dir=str(data_dir))
    lb = next(r for r in results["runs"] if r["regime"] == "LB")
    model = training.model_builder(cfg, data)()
    load_weights(model, str(run / lb["checkpoint"]) if not lb["checkpoint"].startswith("/")
                 else lb["checkpoint"], "F1")
    for v in (v for lay in bn_layers(model) for v in lay.non_trainable_variables):
        v.assign(v * 0 + (1.0 if "variance" in v.path else 0.0))  # forget the stored statistics
    ours = measure_model(model, data.x_train, data.y_train, sharpness.settings(cfg), log=None)
    theirs = pd.DataFrame(results["measurements"])
    theirs = theirs[theirs.regime == "LB"].replace({"measure": {"sharpness": "keskar"}})
    key = ["measure", "bn", "space", "epsilon"]
    joined = ours.merge(theirs, on=key, suffixes=("", "_cli"))
    assert len(joined) == len(theirs) == 2 * (2 * 2 + 1)  # 2 BN modes x (2 boxes x 2 spaces + trace)
    np.testing.assert_allclose(joined.value, joined.value_cli, rtol=1e-4)


def test_measure_model_restores_the_model_and_measures_a_bn_free_network_once():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    y = np.arange(64) % 3
    model = build_model("F1", input_shape=(6,), num_classes=3)
    before = [v.numpy().copy() for v in model.weights]
    table = measure_model(model, x, y, MeasureSettings(epsilons=(1e-3,), subspace_dim=0,
                                                       maxiter=2, jit_compile=False), log=None)
    assert set(table.bn) == {"moving", "batch"} and len(table) == 2
    for v, b in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)
    bare = build_model("F1", input_shape=(6,), num_classes=3,
                       norm=lambda: keras.layers.Identity())
    table = measure_model(bare, x, y, dataclasses.replace(MeasureSettings(), subspace_dim=0,
                                                          epsilons=(1e-3,), maxiter=2,
                                                          jit_compile=False), log=None)
    assert list(table.bn) == ["moving"]
