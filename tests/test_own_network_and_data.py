"""A researcher's own network (`--network=package.module:builder`) and data (`--dataset=npz:FILE`)
through every experiment that trains, with both defined here, not by lbtf: BN treatments reach a
builder through its `norm` argument, a builder without one runs where no treatment is asked for,
and bad files are refused in one line (a pickled object is never unpickled)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from sklearn.datasets import load_digits

from lbtf.data import load_dataset
from lbtf.errors import UsageError
from tests.conftest import run_experiment

NETS = '''
import keras


def small(input_shape, num_classes, norm):
    inputs = keras.Input(input_shape)
    h = keras.layers.Dense(24)(keras.layers.Flatten()(inputs))
    h = keras.layers.ReLU()(norm()(h))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(h))


def plain(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    h = keras.layers.Dense(24, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(h))


def logits(input_shape, num_classes, norm):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))
'''

TINY = ["--trials=1", "--max_epochs=2", "--patience=2", "--nojit_compile", "--sb_batch_size=16",
        "--lb_batch_size=128", "--parametric=", "--epsilons=1e-3", "--subspace_dim=0",
        "--sharpness_maxiter=1", "--bn_measure=moving"]


@pytest.fixture()
def own(tmp_path, monkeypatch):
    """(network spec, dataset spec): a module on sys.path and 400/100 digits as .npz."""
    (tmp_path / "mynets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[..., None], d.target
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x[:400], y_train=y[:400], x_test=x[400:500], y_test=y[400:500])
    return "mynets:small", f"npz:{path}"


@pytest.mark.parametrize("experiment,extra", [
    ("table2", []), ("batch_sweep", ["--batch_sizes=16,128", "--nosharpness"]),
    ("hoffer", ["--nosharpness", "--ghost_batch_size=16"]),
    ("remedies", ["--remedies=ghost", "--nosharpness", "--ghost_batch_size=16"])])
def test_every_experiment_trains_your_network_on_your_data(experiment, extra, own, tmp_path):
    network, dataset = own
    run, log = run_experiment(f"--experiment={experiment}", f"--network={network}",
                              f"--dataset={dataset}", f"--output_dir={tmp_path / 'out'}",
                              *TINY, *extra)
    results = json.loads((run / "results.json").read_text())
    assert results["network"] == network and results["dataset"] == "npz:mine.npz"
    assert len(results["runs"]) >= 2, log


def test_sharpness_of_your_network_again_from_its_run(own, tmp_path):
    network, dataset = own
    run, _ = run_experiment("--experiment=train", f"--network={network}", f"--dataset={dataset}",
                            "--batch_size=32", f"--output_dir={tmp_path / 'out'}", *TINY,
                            "--nosharpness")
    again, log = run_experiment("--experiment=sharpness", f"--checkpoint={run}",
                                f"--output_dir={tmp_path / 'out'}", *TINY)
    assert f"--network={network}" in log and "warning" not in log  # taken from its flags.txt
    rows = json.loads((again / "results.json").read_text())["measurements"]
    assert rows and rows[0]["f_x"] > 0


def test_a_builder_without_norm_runs_and_what_needs_it_is_refused(own, tmp_path):
    _, dataset = own
    run, _ = run_experiment("--experiment=train", "--network=mynets:plain", f"--dataset={dataset}",
                            "--batch_size=32", f"--output_dir={tmp_path / 'a'}", *TINY,
                            "--nosharpness")
    assert (run / "results.json").is_file()
    for extra in (["--experiment=train", "--bn_layer=ghost", "--ghost_batch_size=16"],
                  ["--experiment=hoffer", "--ghost_batch_size=16"]):
        with pytest.raises(UsageError, match="takes no norm= argument") as e:
            run_experiment(*extra, "--network=mynets:plain", f"--dataset={dataset}",
                           f"--output_dir={tmp_path / 'b'}", *TINY)
        assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="end the model in a softmax"):
        run_experiment("--experiment=train", "--network=mynets:logits", f"--dataset={dataset}",
                       f"--output_dir={tmp_path / 'c'}", *TINY)
    with pytest.raises(UsageError, match="cannot import nowhere_module"):
        run_experiment("--experiment=train", "--network=nowhere_module:f", f"--dataset={dataset}",
                       f"--output_dir={tmp_path / 'c'}", *TINY)
    for refused in ("b", "c"):  # no run folder was started
        assert not (tmp_path / refused).exists() or not any((tmp_path / refused).iterdir())


@pytest.mark.parametrize("kind,match", [
    ("pickle", "pickled Python objects"), ("keys", "lacks array"), ("labels", "integer class ids"),
    ("shapes", "have shapes"), ("missing", "not found"), ("garbage", "cannot read data file")])
def test_a_bad_or_crafted_data_file_is_refused_in_one_line(kind, match, tmp_path):
    path = tmp_path / "bad.npz"
    x, y = np.zeros((10, 4), np.float32), np.arange(10) % 3
    if kind == "pickle":  # an object array: loading it would run pickle
        np.savez(path, x_train=np.array([{"a": 1}] * 10, dtype=object), y_train=y, x_test=x,
                 y_test=y)
    elif kind == "keys":
        np.savez(path, x=x)
    elif kind == "labels":
        np.savez(path, x_train=x, y_train=y + 0.5, x_test=x, y_test=y)
    elif kind == "shapes":
        np.savez(path, x_train=x, y_train=y[:5], x_test=x, y_test=y)
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UsageError, match=match) as e:
        load_dataset(f"npz:{path}")
    assert "\n" not in str(e.value)


def test_npz_data_loads_as_stored(own):
    _, dataset = own
    ds = load_dataset(dataset)
    d = load_digits()
    np.testing.assert_array_equal(ds.x_train[..., 0], (d.images[:400] / 16.0).astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, d.target[400:500])
    assert ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
