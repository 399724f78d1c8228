"""Measuring a checkpoint again measures what trained: `--experiment=sharpness --checkpoint=...`
takes the run's network, data and loss from its flags.txt (a flag given overrides it, with a
warning when f(x) is then not the training loss the run recorded), every kept checkpoint loads
with Keras' own `model.load_weights`, and a user's `.keras` model is measured as given."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from lbtf.checkpoints import load_weights, locate, restore_weights
from lbtf.data import load_mnist1d
from lbtf.errors import UsageError
from lbtf.models import build_model
from tests.conftest import run_experiment

QUICK = ["--epsilons=1e-3", "--subspace_dim=0", "--sharpness_maxiter=1", "--nojit_compile",
         "--bn_measure=moving"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A one-run folder trained on 500 MNIST-1D samples (not the default 5000)."""
    out = tmp_path_factory.mktemp("runs")
    run, _ = run_experiment("--experiment=train", f"--data_dir={data_dir}", f"--output_dir={out}",
                            "--mnist1d_samples=500", "--batch_size=64", "--max_epochs=3",
                            "--trials=1", "--patience=3", "--nosharpness", "--nojit_compile")
    return run


def folder(run):
    return next((run / "checkpoints").iterdir())  # the one run: trial0_B64


def recorded(run, epoch: int) -> float:
    record = json.loads((run / "runs" / f"{folder(run).name}.json").read_text())
    return next(h["train_loss"] for h in record["history"] if h["epoch"] == epoch)


def f_moving(run_dir) -> tuple[float, dict]:
    results = json.loads((run_dir / "results.json").read_text())
    rows = [r for r in results["measurements"] if r["bn"] == "moving"]
    return rows[0]["f_x"], results


def test_a_checkpoint_folder_is_measured_on_its_runs_data(trained, data_dir, tmp_path):
    run_dir, log = run_experiment("--experiment=sharpness", f"--data_dir={data_dir}",
                                  f"--checkpoint={folder(trained)}",
                                  f"--output_dir={tmp_path}", *QUICK)
    assert "measuring as the run trained" in log and "--mnist1d_samples=500" in log
    f_x, results = f_moving(run_dir)
    epoch = locate(str(folder(trained))).epoch
    assert f_x == pytest.approx(recorded(trained, epoch), rel=1e-4)  # the run's own loss there
    assert results["loss_check"] is None and "warning" not in log


def test_other_data_given_on_purpose_is_measured_with_a_warning_naming_both_numbers(
        trained, data_dir, tmp_path):
    run_dir, log = run_experiment("--experiment=sharpness", f"--data_dir={data_dir}",
                                  f"--checkpoint={trained}", "--mnist1d_samples=1000",
                                  f"--output_dir={tmp_path}", *QUICK)
    f_x, results = f_moving(run_dir)
    epoch = locate(str(trained)).epoch
    warning = results["loss_check"]
    assert warning and f"{f_x:.6g}" in warning and f"{recorded(trained, epoch):.6g}" in warning
    assert warning in log and warning in (run_dir / "report.md").read_text()


def test_every_kept_checkpoint_loads_with_keras_own_load_weights(trained):
    data = load_mnist1d(num_samples=500, data_dir=str(trained.parent.parent / "unused"))
    kept = folder(trained)
    prefixes = sorted(p.with_suffix("") for p in kept.glob("weights-*.index"))
    assert prefixes and all(p.with_name(p.name + ".weights.h5").is_file() for p in prefixes)
    for prefix in prefixes:
        ours, theirs = (build_model("F1", input_shape=data.input_shape, num_classes=10)
                        for _ in range(2))
        restore_weights(ours, str(prefix))
        theirs.load_weights(str(prefix) + ".weights.h5")  # Keras' own loader
        for a, b in zip(ours.weights, theirs.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        # lbtf's loader takes the run folder, the checkpoint folder, the prefix and the .h5 file.
    last = locate(str(kept)).path  # the checkpoint its run measured
    for given in (trained, kept, last, str(last) + ".weights.h5"):
        model = build_model("F1", input_shape=data.input_shape, num_classes=10)
        load_weights(model, str(given), "F1")
        reference = build_model("F1", input_shape=data.input_shape, num_classes=10)
        restore_weights(reference, str(last))
        for a, b in zip(model.weights, reference.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_users_keras_model_is_measured_as_given(data_dir, tmp_path):
    data = load_mnist1d(num_samples=500, data_dir=str(data_dir))
    keras.utils.set_random_seed(3)
    inputs = keras.Input(data.input_shape)
    h = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))  # logits
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, epochs=2, verbose=0)
    path = tmp_path / "mine.keras"
    model.save(path)
    logits = model.predict(data.x_train, verbose=0)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = np.clip((p / p.sum(1, keepdims=True))[np.arange(len(p)), data.y_train], 1e-7, 1 - 1e-7)
    run_dir, _ = run_experiment("--experiment=sharpness", f"--data_dir={data_dir}",
                                "--mnist1d_samples=500", f"--checkpoint={path}",
                                f"--output_dir={tmp_path / 'out'}", *QUICK)
    f_x, _ = f_moving(run_dir)
    assert f_x == pytest.approx(float(-np.log(p).mean()), rel=1e-4)


def test_a_keras_file_with_code_is_refused_in_one_line(data_dir, tmp_path):
    inputs = keras.Input((40,))
    out = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(10, activation="softmax")(
        inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, out).save(path)
    with pytest.raises(UsageError, match="cannot load Keras model") as e:
        run_experiment("--experiment=sharpness", f"--data_dir={data_dir}", "--mnist1d_samples=500",
                       f"--checkpoint={path}", f"--output_dir={tmp_path / 'out'}", *QUICK)
    assert "\n" not in str(e.value)


def test_a_run_folder_with_several_runs_names_them(tmp_path):
    for name in ("trial0_SB", "trial0_LB"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    with pytest.raises(UsageError, match="holds 2 runs \\(trial0_LB, trial0_SB\\)"):
        locate(str(tmp_path))
