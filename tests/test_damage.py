"""What a crash, a failing disk or a second job does to a run folder, on real files: damaged resume
checkpoints fall back to the one before (or the start), damaged records are done again, stray
temporary files are cleaned, and one process writes a folder at a time."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from nets import DATA, values

from lbtf.data import Dataset
from lbtf.errors import UsageError
from lbtf.experiments.flags import parse
from lbtf.experiments.rundir import cached, start_run
from lbtf.train import TrainConfig, Trainer, fit


def _net():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.BatchNormalization(),
                             keras.layers.Dense(3, activation="softmax")])


CONFIG = TrainConfig(batch_size=64, max_epochs=4, patience=10, jit_compile=False, resume_interval=0)


class Killed(Exception):
    pass


def _killed_after(epoch: int):
    """A log that stops the run while it reports `epoch` (before that epoch's resume checkpoint)."""
    def log(line: str) -> None:
        if f"epoch {epoch:3d}" in line:
            raise Killed
    return log


def _truncate(prefix) -> None:
    data = next(prefix.parent.glob(f"{prefix.name}.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])


@pytest.mark.parametrize("damaged,restart_line", [
    (["ckpt-2"], "resumed after epoch 1"),
    (["ckpt-2", "ckpt-1"], "no resume checkpoint restored; the run starts afresh")])
def test_a_damaged_resume_checkpoint_falls_back_and_the_run_ends_as_uninterrupted(
        tmp_path, damaged, restart_line):
    reference = Trainer(_net, DATA, CONFIG)
    fit(reference, seed=0, log=lambda s: None)
    trainer = Trainer(_net, DATA, CONFIG)
    with pytest.raises(Killed):  # killed in epoch 3: resume checkpoints of epochs 1 and 2 kept
        fit(trainer, seed=0, checkpoint_dir=tmp_path, log=_killed_after(3))
    for name in damaged:
        _truncate(tmp_path / "resume" / name)
    lines = []
    restarted = Trainer(_net, DATA, CONFIG)
    result = fit(restarted, seed=0, checkpoint_dir=tmp_path, log=lines.append)
    text = "\n".join(lines)
    assert restart_line in text
    assert all(f"resume checkpoint {tmp_path / 'resume' / n} is damaged" in text for n in damaged)
    assert "Traceback" not in text and result.history[-1]["epoch"] == 4
    for a, b in zip(values(restarted.model), values(reference.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_restore_that_assigns_weights_and_then_fails_restarts_from_the_start(tmp_path):
    """Both resume checkpoints replaced by whole, readable checkpoints of the model alone holding
    other weights (a kept weights checkpoint copied into resume/, say): restoring one assigns
    every model weight and only then fails (no optimizer or run state), so the restart must put
    the run's own start back before training afresh, and ends as an uninterrupted run."""
    import tensorflow as tf

    reference = Trainer(_net, DATA, CONFIG)
    fit(reference, seed=0, log=lambda s: None)
    trainer = Trainer(_net, DATA, CONFIG)
    with pytest.raises(Killed):
        fit(trainer, seed=0, checkpoint_dir=tmp_path, log=_killed_after(3))
    keras.utils.set_random_seed(7)
    other = keras.models.clone_model(_net())  # the same shapes, other values
    for name in ("ckpt-1", "ckpt-2"):
        for f in (tmp_path / "resume").glob(f"{name}.*"):
            f.unlink()
        tf.train.Checkpoint(model=other).write(str(tmp_path / "resume" / name))
    lines = []
    restarted = Trainer(_net, DATA, CONFIG)
    result = fit(restarted, seed=0, checkpoint_dir=tmp_path, log=lines.append)
    text = "\n".join(lines)
    assert text.count("is damaged") == 2 and "the run starts afresh" in text
    assert "Traceback" not in text and result.history[-1]["epoch"] == 4
    for a, b in zip(values(restarted.model), values(reference.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_damaged_record_is_done_again(tmp_path):
    path = tmp_path / "runs" / "trial0_SB.json"
    path.parent.mkdir()
    path.write_text('{"epochs": 3, "stop_re')  # truncated by a crash
    lines = []
    record = cached(path, lambda: {"epochs": 7}, log=lines.append)
    assert record == {"epochs": 7} and "runs/trial0_SB.json: damaged" in lines[0]
    assert cached(path, lambda: {"epochs": 9}, log=lines.append) == {"epochs": 7}


def test_stray_temporary_files_are_deleted_on_restart(tmp_path):
    args = [f"--output_dir={tmp_path}", "--run_name=r"]
    run_dir = start_run(parse(args), "table2")
    stray = run_dir / "runs" / ".trial0_SB.json.abc123.tmp"
    stray.parent.mkdir()
    stray.write_text('{"half')
    from lbtf import runs
    runs._LOCKS.clear()  # as a new process would start
    start_run(parse(args), "table2")
    assert not stray.exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lbtf.runs import lock_run_folder
    shard = tuple(map(int, sys.argv[2].split("/"))) if len(sys.argv) > 2 else None
    lock_run_folder(Path(sys.argv[1]), shard)
    print("locked", flush=True)
    time.sleep(120)
""")


def _holder(folder, *shard):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), *shard],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_one_writer_per_run_folder_and_a_dead_writers_lock_is_taken_over(tmp_path):
    from lbtf.runs import _LOCKS, lock_run_folder

    folder = tmp_path / "r"
    folder.mkdir()
    other = _holder(folder)
    try:
        with pytest.raises(UsageError, match=rf"being written by process {other.pid} on "):
            lock_run_folder(folder)
        with pytest.raises(UsageError, match="being written by"):
            lock_run_folder(folder, (0, 2))  # a shard cannot join an unsharded writer
    finally:
        other.kill()
        other.wait()
    lock_run_folder(folder)  # its holder died: taken over
    for f in _LOCKS:
        f.close()
    _LOCKS.clear()


def test_shards_share_a_folder_but_not_a_shard(tmp_path):
    from lbtf.runs import _LOCKS, lock_run_folder

    other = _holder(tmp_path, "0/2")
    try:
        with pytest.raises(UsageError, match=rf"shard 0/2 of .* is being run by process {other.pid}"):
            lock_run_folder(tmp_path, (0, 2))
        lock_run_folder(tmp_path, (1, 2))  # another shard: fine
        with pytest.raises(UsageError, match=rf"being written by process {other.pid}"):
            _LOCKS.clear()  # (closing ours would drop our shard's lock first; keep it open)
            lock_run_folder(tmp_path)  # the whole folder while a shard runs: refused
    finally:
        other.kill()
        other.wait()
        _LOCKS.clear()


def test_a_trial_trains_alike_whether_or_not_earlier_trials_ran():
    """With augmentation, trial 1 must not depend on trial 0 having run in the same process (a
    restart skips finished trials): reset restarts the augmentation on the trial's own stream."""
    rng = np.random.default_rng(0)
    images = Dataset("images", rng.normal(size=(256, 4, 4, 1)).astype(np.float32),
                     rng.integers(0, 3, 256).astype(np.int32),
                     rng.normal(size=(64, 4, 4, 1)).astype(np.float32),
                     rng.integers(0, 3, 64).astype(np.int32), 3)

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(3, activation="softmax")])

    config = TrainConfig(batch_size=64, max_epochs=1, jit_compile=False, crop_flip_pad=1)
    start = [v.numpy() for v in build().variables]
    after_trial0 = Trainer(build, images, config)
    after_trial0.reset(start, stream=0)
    after_trial0.train_epoch(np.random.default_rng(0))
    after_trial0.reset(start, stream=1)
    after_trial0.train_epoch(np.random.default_rng(1))
    alone = Trainer(build, images, config)
    alone.reset(start, stream=1)
    alone.train_epoch(np.random.default_rng(1))
    for a, b in zip(values(after_trial0.model), values(alone.model), strict=True):
        np.testing.assert_array_equal(a, b)


def _measured(run) -> list:
    import json

    results = json.loads((run / "results.json").read_text())
    return [(r["trial"], r["regime"], r["train_loss"], r["test_acc"]) for r in results["runs"]] + [
        (m["regime"], m["bn"], m["value"]) for m in results["measurements"]]


def test_a_finished_trial_with_its_second_record_truncated_restarts_to_the_same_results(
        tmp_path, data_dir):
    """The case that crashed every restart (TypeError in Trainer.reset): a trial's SB record
    whole, its LB record truncated after the atomic write (a failing disk). The restart names the
    damage in one line, trains LB again from the trial's own start, and ends as it did."""
    from conftest import run_experiment

    args = [f"--data_dir={data_dir}", f"--output_dir={tmp_path}", "--run_name=r",
            "--mnist1d_samples=500", "--max_epochs=3", "--trials=1", "--patience=2",
            "--parametric=", "--epsilons=1e-3", "--subspace_dim=0", "--sharpness_maxiter=1",
            "--nojit_compile", "--deterministic"]
    run, _ = run_experiment(*args)
    before = _measured(run)
    record = run / "runs" / "trial0_LB.json"
    record.write_bytes(record.read_bytes()[:50])
    (run / "results.json").unlink()
    again, log = run_experiment(*args)
    damaged = [line for line in log.splitlines() if "damaged" in line]
    assert damaged == [damaged[0]] and "runs/trial0_LB.json" in damaged[0], damaged
    assert "Traceback" not in log
    assert _measured(again) == before
