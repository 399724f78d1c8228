"""Damage anywhere, at any moment (property-based, seeded): a small deterministic table2 run is
stopped at a random moment of a random phase (its folder as it stood at one of its log lines:
training, measurement, parametric plot, figures, results), one random record is damaged in a
random way, and the run is started again. It must end with the results of the uninterrupted run,
name each discard in one log line, and print no traceback; where a record cannot be rebuilt, one
line says what to do, and doing it ends the same way.

LBTF_DAMAGE_CASES=N runs N cases instead of the default 30 (LBTF_DAMAGE_SEED picks the stream)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from lbtf.errors import UsageError
from lbtf.experiments import table2
from lbtf.experiments.flags import parse
from tests.conftest import run_experiment

CASES = int(os.environ.get("LBTF_DAMAGE_CASES", "30"))
SEED = int(os.environ.get("LBTF_DAMAGE_SEED", "0"))

NET = '''
import keras


def tiny(input_shape, num_classes, norm):
    inputs = keras.Input(input_shape)
    h = keras.layers.Dense(12)(keras.layers.Flatten()(inputs))
    h = keras.layers.ReLU()(norm()(h))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(h))
'''

ARGS = ["--experiment=table2", "--run_name=r", "--trials=1", "--max_epochs=3", "--patience=3",
        "--sb_batch_size=32", "--lb_batch_size=200", "--nojit_compile", "--deterministic",
        "--epsilons=1e-3", "--subspace_dim=0", "--sharpness_maxiter=1", "--bn_measure=moving",
        "--parametric_points=3", "--resume_interval=0"]


def _category(rel: str) -> str:
    """The kind of record a file of the run folder is."""
    parts = rel.split("/")
    if parts[0] in ("runs", "measurements", "tb"):
        return parts[0]
    if parts[0] == "checkpoints":
        return "resume checkpoint" if "resume" in parts else "weights checkpoint"
    return {"flags.txt": "flags.txt", "results.json": "results.json",
            "history.csv": "history.csv", ".lock": "lock"}.get(rel, "report or figure")


def _damage(path, how: str, rng: np.random.Generator) -> str:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(rng.integers(0, 256, max(len(data), 16), dtype=np.uint8).tobytes())
    elif how == "deleted":
        path.unlink()
    elif how == "older copy":  # the resume checkpoint before it, under its name
        name = path.name.split(".", 1)
        n = int(name[0].split("-")[1])
        older = path.with_name(f"ckpt-{n - 1}.{name[1]}")
        if not older.is_file():
            return _damage(path, "truncated", rng)
        shutil.copyfile(older, path)
    return how


def _hows(category: str) -> list[str]:
    base = ["truncated", "empty", "garbage", "deleted"]
    return base + ["older copy"] if category == "resume checkpoint" else base


def _outcome(run) -> dict:
    """What must not change: every run's metrics, every measurement, the distances and the
    parametric curves of results.json, and history.csv (all but its timings)."""
    r = json.loads((run / "results.json").read_text())
    keep = ("trial", "regime", "epochs", "measured_epoch", "train_loss", "test_loss",
            "train_acc", "test_acc")
    return {"runs": [{k: x[k] for k in keep} for x in r["runs"]],
            "measurements": [(m["regime"], m["bn"], m["value"], m["f_x"])
                             for m in r["measurements"]],
            "distances": r["distances"], "parametric": r["parametric"],
            "history": pd.read_csv(run / "history.csv").drop(columns="seconds").to_dict("list")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, and its folder as it stood at each of its log lines."""
    root = tmp_path_factory.mktemp("damage")
    (root / "dmgnets.py").write_text(textwrap.dedent(NET))
    sys.path.insert(0, str(root))
    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[..., None], d.target
    np.savez(root / "digits.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:500],
             y_test=y[400:500])
    args = [*ARGS, "--network=dmgnets:tiny", f"--dataset=npz:{root / 'digits.npz'}",
            f"--output_dir={root / 'out'}"]
    run, snaps = root / "out" / "r", []

    def log(line: str) -> None:  # a SIGKILL at this line leaves the folder as it stands
        if run.is_dir():
            snaps.append(shutil.copytree(run, root / "snaps" / str(len(snaps))))
    table2.run(parse(args), log=log)
    yield {"args": args, "run": run, "snaps": snaps, "outcome": _outcome(run)}
    sys.path.remove(str(root))


def _kinds(folder) -> dict[str, list[str]]:
    """{kind of record: its files} of a run folder."""
    out: dict[str, list[str]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(folder))
            out.setdefault(_category(rel), []).append(rel)
    return out


def _case(reference, rng: np.random.Generator) -> str:
    """A kind of record drawn first (so each kind gets its share of cases), then a moment at
    which the folder holds one, then one of its files and a way to damage it."""
    run, snaps = reference["run"], reference["snaps"]
    present = [_kinds(s) for s in snaps]
    kinds = sorted({k for p in present for k in p})
    kind = kinds[int(rng.integers(len(kinds)))]
    moments = [i for i, p in enumerate(present) if kind in p]
    k = moments[int(rng.integers(len(moments)))]
    shutil.rmtree(run)
    shutil.copytree(snaps[k], run)
    target = run / present[k][kind][int(rng.integers(len(present[k][kind])))]
    how = _damage(target, _hows(kind)[int(rng.integers(len(_hows(kind))))], rng)
    rel = str(target.relative_to(run))
    label = f"at log line {k}/{len(snaps)}: {rel} ({kind}) {how}"
    try:
        _, log = run_experiment(*reference["args"])
    except UsageError as e:  # not rebuildable: one line that says what to do, then do it
        text = str(e)
        assert "\n" not in text and rel.split("/")[-1] in text and "delete" in text, (label, text)
        (run / rel).unlink(missing_ok=True)
        _, log = run_experiment(*reference["args"])
        label += " (refused in one line, then done as it said)"
    assert "Traceback" not in log, label
    discards = [ln for ln in log.splitlines() if "damaged" in ln]
    assert len(discards) <= 1, (label, discards)
    assert _outcome(run) == reference["outcome"], label
    return label


def test_damage_anywhere_at_any_moment(reference):
    """CASES seeded cases in one process (the records hold the run folder's absolute paths, so
    every case uses the reference's folder); a failure names its case."""
    rng = np.random.default_rng(SEED)
    done = [_case(reference, rng) for _ in range(CASES)]
    print("\n".join(done))  # the cases covered (pytest -s shows them)
    kinds = {label.split("(")[1].split(")")[0] for label in done}
    assert len(done) == CASES and len(kinds) >= 5, done
