"""Sharpness where researchers look: every measurement as a TensorBoard scalar, an experiment's
headline numbers as HParams metrics, and the `hparams_config` that lets the HParams dashboard
show them beside each run's hyperparameters.

Plain arguments only (results as the experiments write them, folders as paths): what trained the
network is not known here."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf

from lbtf.measurement import ROW_NAMES

ACCURACIES = ("train_acc", "test_acc", "train_loss", "test_loss")


def measurement_tag(row: dict) -> str | None:
    """The scalar's tag of one measurement row, e.g. 'sharpness/keskar_moving_full_eps0.001';
    None for a rescaled copy (a reparametrisation check, not a measurement of the run)."""
    if _finite(row.get("rescale")) and row["rescale"] != 1.0 or "value" not in row:
        return None
    name = ROW_NAMES.get(row["measure"], row["measure"])
    parts = [name, row.get("bn") if isinstance(row.get("bn"), str) else "none"]
    if _finite(row.get("epsilon")):  # box measures only (a table's other rows hold NaN or None)
        parts += [row.get("space", "full"), f"eps{row['epsilon']:g}"]
    return "sharpness/" + "_".join(parts)


def _finite(value) -> bool:
    return isinstance(value, int | float | np.floating) and math.isfinite(float(value))


def run_scalars(results: dict) -> dict[str, dict[int, dict[str, float]]]:
    """Per run name ('trial0_SB', ...): {step: {tag: value}}, each measurement at its run's
    measured epoch (0 when the run is not in results['runs'], e.g. a re-measured checkpoint)."""
    epochs = {(r.get("trial"), r.get("regime")): r.get("measured_epoch") or 0
              for r in results.get("runs", [])}
    out: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in results.get("measurements", []):
        tag = measurement_tag(row)
        if tag is None or not _finite(row["value"]):
            continue
        key = (row.get("trial", 0), row.get("regime", "run"))
        out[f"trial{key[0]}_{key[1]}"][int(epochs.get(key, 0))][tag] = float(row["value"])
    return out


def _by_batch(results: dict) -> list[str]:
    """Regimes ordered by batch size (the runs' own order when sizes are not recorded)."""
    sizes: dict[str, float] = {}
    for r in results.get("runs", []) + results.get("measurements", []):
        if "regime" in r:
            sizes.setdefault(r["regime"], r.get("batch_size") or len(sizes))
    return sorted(sizes, key=lambda k: sizes[k])


def headline(results: dict) -> dict[str, float]:
    """An experiment's headline numbers: per regime the median of each measurement and the mean of
    each accuracy and loss over its runs; the largest batch's median over the smallest's; the mean
    SB/LB distance ratio from the start."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in results.get("measurements", []):
        tag = measurement_tag(row)
        if tag is not None and _finite(row["value"]) and "regime" in row:
            values[(tag, row["regime"])].append(float(row["value"]))
    for run in results.get("runs", []):
        for k in ACCURACIES:
            if _finite(run.get(k)) and "regime" in run:
                values[(f"accuracy/{k}", run["regime"])].append(float(run[k]))
    out = {}
    for (tag, regime), v in sorted(values.items()):
        stat = np.mean if tag.startswith("accuracy/") else np.median
        out[f"{tag}/{regime}"] = float(stat(v))
    regimes = _by_batch(results)
    if len(regimes) >= 2:
        small, large = regimes[0], regimes[-1]
        for tag in sorted({t for t, _ in values if t.startswith("sharpness/")}):
            a, b = out.get(f"{tag}/{large}"), out.get(f"{tag}/{small}")
            if a is not None and b:
                out[f"{tag}/ratio_{large}_{small}"] = a / b
    ratios = [d["ratio"] for d in results.get("distances", []) if _finite(d.get("ratio"))]
    if ratios:
        out["distance/ratio_SB_LB"] = float(np.mean(ratios))
    return out


def write_scalars(log_dir: Path, steps: dict[int, dict[str, float]]) -> None:
    """{step: {tag: value}} as scalars of one TensorBoard run folder."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for step, tags in sorted(steps.items()):
            for tag, value in sorted(tags.items()):
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def write_hparams_config(log_dir: Path, *, hparams: dict[str, Iterable], metrics: Iterable[str]
                         ) -> None:
    """The HParams dashboard's columns: each hyperparameter with the values runs took, and a
    metric per tag (the dashboard shows a run's last value of it)."""
    from tensorboard.plugins.hparams import api as hp

    def domain(values):
        values = sorted(set(values), key=str)
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return hp.Discrete([float(v) for v in values])
        return hp.Discrete([str(v) for v in values])
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hp.hparams_config(
            hparams=[hp.HParam(k, domain(v)) for k, v in sorted(hparams.items()) if v],
            metrics=[hp.Metric(t) for t in sorted(set(metrics))])
    writer.close()


def publish(tb_dir, results: dict) -> list[str]:
    """Everything above for a finished experiment under its TensorBoard folder `tb_dir`
    (a callable maps a subfolder name to its path): each run's measurements into that run's
    folder, the headline into 'summary' (an HParams session of its own), and the hparams_config at
    the root. Returns the metric tags."""
    from tensorboard.plugins.hparams import api as hp

    if not results.get("runs") and not results.get("measurements"):
        return []  # nothing trained or measured (e.g. --experiment=info): no tb/ folder
    path = tb_dir if callable(tb_dir) else (lambda name: Path(tb_dir) / name)
    per_run = run_scalars(results)
    for name, steps in per_run.items():
        write_scalars(path(name), steps)
    top = headline(results)
    if top:
        write_scalars(path("summary"), {0: top})
        writer = tf.summary.create_file_writer(str(path("summary")))
        with writer.as_default():
            hp.hparams({"experiment": str(results.get("experiment", "")), "regime": "summary"},
                       trial_id="summary")
        writer.close()
    runs = results.get("runs", [])
    hparams = {k: [r[k] for r in runs if r.get(k) is not None]
               for k in ("regime", "batch_size", "seed", "learning_rate")}
    hparams["regime"] += ["summary"] if top else []
    for k in ("network", "dataset"):
        hparams[k] = [results[k]] if results.get(k) else []
    hparams["experiment"] = [str(results.get("experiment", ""))] if top else []
    metrics = ({t for steps in per_run.values() for tags in steps.values() for t in tags}
               | set(top) | ({"test_acc", "train_acc"} if runs else set()))
    write_hparams_config(path(""), hparams=hparams, metrics=metrics)
    return sorted(metrics)
