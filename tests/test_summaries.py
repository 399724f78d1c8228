"""Sharpness in TensorBoard, read back from the event files: every measurement of a run as a scalar
at its measured epoch, the headline numbers against medians and means computed here from
results.json, the HParams dashboard's config, and the Keras callback during a user's model.fit."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_experiment
from sklearn.datasets import load_digits
from tensorboard.plugins.hparams import plugin_data_pb2

from lbtf import summaries
from lbtf.callbacks import SharpnessCallback
from lbtf.measurement import MeasureSettings, measure_model


def scalars(folder) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every event file in a folder (the last write of a step wins)."""
    out: dict[str, dict[int, float]] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars":
                    out.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
    return out


def hparams_metrics(folder) -> list[str]:
    """The metric tags of the hparams_config written in a folder."""
    for f in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        v.metadata.plugin_data.content)
                    if data.HasField("experiment"):
                        return [m.name.tag for m in data.experiment.metric_infos]
    return []


def test_tags_name_the_setting():
    row = {"measure": "sharpness", "bn": "moving", "space": "subspace", "epsilon": 5e-4,
           "value": 3.0, "rescale": 1.0}
    assert summaries.measurement_tag(row) == "sharpness/keskar_moving_subspace_eps0.0005"
    assert summaries.measurement_tag({**row, "rescale": 4.0}) is None  # a reparametrised copy
    assert summaries.measurement_tag({"measure": "trace", "bn": "batch", "space": "full",
                                      "epsilon": float("nan"), "value": 2.0}) == \
        "sharpness/trace_batch"


def test_headline_numbers():
    rows = [{"trial": t, "regime": r, "measure": "sharpness", "bn": "moving", "space": "full",
             "epsilon": 1e-3, "value": v}
            for r, vals in (("SB", [1.0, 5.0, 3.0]), ("LB", [60.0, 10.0, 20.0]))
            for t, v in enumerate(vals)]
    runs = [{"trial": t, "regime": r, "batch_size": b, "test_acc": a, "train_acc": 1.0}
            for r, b, accs in (("SB", 32, [0.9, 0.8, 0.7]), ("LB", 1024, [0.5, 0.6, 0.4]))
            for t, a in enumerate(accs)]
    top = summaries.headline({"measurements": rows, "runs": runs,
                              "distances": [{"ratio": 2.0}, {"ratio": 4.0}]})
    tag = "sharpness/keskar_moving_full_eps0.001"
    assert top[f"{tag}/SB"] == 3.0 and top[f"{tag}/LB"] == 20.0
    assert top[f"{tag}/ratio_LB_SB"] == pytest.approx(20.0 / 3.0)
    assert top["accuracy/test_acc/SB"] == pytest.approx(0.8)
    assert top["accuracy/test_acc/LB"] == pytest.approx(0.5)
    assert top["distance/ratio_SB_LB"] == 3.0


def test_table2_run_in_tensorboard(data_dir, tmp_path):
    run, _ = run_experiment(
        "--experiment=table2", "--mnist1d_samples=500", "--max_epochs=3", "--patience=2",
        "--trials=2", "--bn_measure=moving,batch", "--epsilons=1e-3", "--subspace_dim=0",
        "--sharpness_maxiter=2", "--nojit_compile", "--parametric_points=3",
        f"--data_dir={data_dir}", f"--output_dir={tmp_path}")
    results = json.loads((run / "results.json").read_text())
    epochs = {(r["trial"], r["regime"]): r["measured_epoch"] for r in results["runs"]}
    rows = [m for m in results["measurements"] if m.get("rescale", 1.0) == 1.0]
    assert len(rows) == 8  # 2 trials x 2 regimes x 2 BN modes
    for m in rows:
        tb = scalars(run / "tb" / f"trial{m['trial']}_{m['regime']}")
        tag = f"sharpness/keskar_{m['bn']}_full_eps0.001"
        assert tb[tag] == {epochs[(m["trial"], m["regime"])]: pytest.approx(m["value"],
                                                                             rel=1e-6)}
        assert "test_acc" in tb  # the training curves stay beside it
    top = scalars(run / "tb" / "summary")
    for bn in ("moving", "batch"):
        tag = f"sharpness/keskar_{bn}_full_eps0.001"
        med = {r: np.median([m["value"] for m in rows if m["bn"] == bn and m["regime"] == r])
               for r in ("SB", "LB")}
        assert top[f"{tag}/SB"][0] == pytest.approx(med["SB"], rel=1e-6)
        assert top[f"{tag}/ratio_LB_SB"][0] == pytest.approx(med["LB"] / med["SB"], rel=1e-5)
    acc = np.mean([r["test_acc"] for r in results["runs"] if r["regime"] == "LB"])
    assert top["accuracy/test_acc/LB"][0] == pytest.approx(acc, rel=1e-6)
    ratio = np.mean([d["ratio"] for d in results["distances"]])
    assert top["distance/ratio_SB_LB"][0] == pytest.approx(ratio, rel=1e-6)
    metrics = hparams_metrics(run / "tb")
    assert {"test_acc", "train_acc", "sharpness/keskar_moving_full_eps0.001",
            "sharpness/keskar_batch_full_eps0.001/ratio_LB_SB",
            "distance/ratio_SB_LB"} <= set(metrics)


def _digits_model():
    inputs = keras.Input((64,))
    h = keras.layers.Dense(16)(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    return keras.Model(inputs, keras.layers.Dense(10)(h))  # logits


def test_callback_during_fit(tmp_path):
    d = load_digits()
    x, y = (d.data[:256] / 16.0).astype("float32"), d.target[:256].astype("int64")
    settings = MeasureSettings(measures=("keskar", "trace"), epsilons=(1e-3,), subspace_dim=0,
                               maxiter=2, samples=2, jit_compile=False,
                               bn_modes=("moving", "batch"), bn_chunk=128)

    def fit(callbacks):
        keras.utils.set_random_seed(0)
        model = _digits_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        weights: list = []
        keep = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: weights.append(model.get_weights()))
        history = model.fit(x, y, batch_size=64, epochs=4, shuffle=False, verbose=0,
                            callbacks=[keep, *callbacks])
        return model, history, weights

    callback = SharpnessCallback(x, y, every=2, settings=settings, log_dir=tmp_path)
    model, history, weights = fit([callback])
    tags = ["sharpness/keskar_moving_full_eps0.001", "sharpness/keskar_batch_full_eps0.001",
            "sharpness/trace_moving", "sharpness/trace_batch"]
    assert sorted(callback.measured) == [1, 3] and sorted(callback.measured[1]) == sorted(tags)
    tb = scalars(tmp_path / "sharpness")
    for epoch in (1, 3):  # at that epoch's weights: measured again here from a copy of them
        model.set_weights(weights[epoch])
        again = measure_model(model, x, y, settings, log=lambda line: None)
        expect = {summaries.measurement_tag(r): r["value"] for r in again.to_dict("records")}
        for tag in tags:
            assert callback.measured[epoch][tag] == pytest.approx(expect[tag], rel=1e-5)
            assert tb[tag][epoch] == pytest.approx(expect[tag], rel=1e-5)
    for tag in tags:  # the epoch's logs: History has one entry per measured epoch
        assert history.history[tag] == pytest.approx([callback.measured[e][tag] for e in (1, 3)])
    # Measuring leaves training as it was: the same weights as a fit without the callback.
    _, _, plain = fit([])
    for a, b in zip(weights[-1], plain[-1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_callback_refuses_bad_arguments():
    with pytest.raises(ValueError, match="every takes"):
        SharpnessCallback(np.zeros((2, 3)), np.zeros(2), every=0)
    with pytest.raises(ValueError, match="MeasureSettings"):
        SharpnessCallback(np.zeros((2, 3)), np.zeros(2), settings={"measures": ("keskar",)})
