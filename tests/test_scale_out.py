"""Scaling out and keeping going, as users run it: two worker processes on 127.0.0.1 under
MultiWorkerMirroredStrategy, and runs killed with SIGKILL that resume from their checkpoints."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import REPO, run_cli

# F1 without dropout; sync BN, so that 2 x 20 examples see the statistics of the batch of 40.
# No XLA in the one-process reference either (it is off on several replicas): XLA's own rounding
# alone, amplified by Adam over 20 steps, moves the weights 100 times more than two workers do.
BASE = ["--mnist1d_samples=500", "--network=F1", "--bn_layer=sync", "--trials=1", "--nosharpness",
        "--experiment=train", "--batch_size=40", "--nojit_compile"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(args: list[str], logs: Path, n: int = 2,
                  slurm: bool = False) -> list[subprocess.Popen]:
    """n lbtf processes forming one MultiWorkerMirroredStrategy job, through TF_CONFIG or, with
    `slurm`, through the variables srun sets for n tasks on one node (SlurmClusterResolver; two
    "GPUs" per node in CUDA_VISIBLE_DEVICES give each task one, which a CPU build ignores)."""
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if slurm:
            env.update(SLURM_JOB_ID="1", SLURM_PROCID=str(i), SLURM_STEP_NUM_TASKS=str(n),
                       SLURM_STEP_NODELIST="localhost", SLURM_STEP_TASKS_PER_NODE=str(n),
                       CUDA_VISIBLE_DEVICES=",".join(map(str, range(n))))
            # Tasks on one node listen on --slurm_port_base + 0, 1, ...
            strategy = ["--strategy=slurm", f"--slurm_port_base={ports[0]}"]
        else:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            strategy = ["--strategy=multi_worker"]
        with open(logs / f"worker{i}.out", "w") as out, open(logs / f"worker{i}.err", "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, str(REPO / "run_experiments.py"), *strategy, *args],
                cwd=REPO, env=env, stdout=out, stderr=err))
    return procs


def finish(procs: list[subprocess.Popen], logs: Path, timeout: int = 300) -> list[str]:
    for p in procs:
        p.wait(timeout=timeout)
    outs = [(logs / f"worker{i}.out").read_text() for i in range(len(procs))]
    for i, p in enumerate(procs):
        assert p.returncode == 0, (logs / f"worker{i}.err").read_text()[-3000:]
    return outs


def weights(prefix: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.endswith("VARIABLE_VALUE") and "save_counter" not in k}


def assert_same_weights(a: Path, b: Path) -> None:
    """The same weights up to float rounding: ||a - b|| below 1e-3 of how far training moved
    them from weights-0 (measured: 6e-5; one process with and without XLA: 7e-3)."""
    wa, wb, w0 = weights(a), weights(b), weights(a.parent / "weights-0")
    assert wa.keys() == wb.keys() and len(wa) > 10
    norm = lambda d: np.sqrt(sum(np.sum(np.square(v)) for v in d.values()))  # noqa: E731
    moved = norm({k: wa[k] - w0[k] for k in wa})
    assert moved > 1 and norm({k: wa[k] - wb[k] for k in wa}) < 1e-3 * moved


def resume_epoch(run: Path, name: str) -> int:
    """The epoch of the latest resume checkpoint of run `name` (0 if none yet)."""
    state = run / "checkpoints" / name / "resume" / "checkpoint"
    found = re.findall(r"ckpt-(\d+)", state.read_text()) if state.is_file() else []
    return max(map(int, found), default=0)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as ready() holds; fails if the process ends first."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < end, "timed out waiting to kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_two_workers_train_like_one_process_resume_after_a_kill_and_measure_alike(data_dir,
                                                                                  tmp_path):
    args = [*BASE, "--max_epochs=5", "--patience=20", "--deterministic", "--checkpoint_every=1",
            f"--data_dir={data_dir}", f"--output_dir={tmp_path}"]
    assert run_cli(*args, "--run_name=one").returncode == 0
    outs = finish(start_workers([*args, "--run_name=two"], tmp_path / "logs"), tmp_path / "logs")
    assert "2 replica(s) on 2 worker(s)" in outs[0] and "global batch 40 = 2 x 20" in outs[0]
    one, two = tmp_path / "one", tmp_path / "two"
    # After 20 steps; later, as the loss nears 0, Adam's normalised steps amplify rounding
    # (1e-2 of the distance after 50 steps, growing smoothly from 2e-5 after 10).
    assert_same_weights(one / "checkpoints/trial0_B40/weights-2",
                        two / "checkpoints/trial0_B40/weights-2")
    env = json.loads((two / "results.json").read_text())["environment"]
    assert env["workers"] == 2 and env["replicas"] == 2
    # Only the chief wrote the run folder; the other worker's scratch folder is gone.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    # The same job as two Slurm tasks (--strategy=slurm): the same weights, bit for bit.
    finish(start_workers([*args, "--run_name=slurm"], tmp_path / "logs", slurm=True),
           tmp_path / "logs")
    via_tf_config, via_slurm = (weights(tmp_path / r / "checkpoints/trial0_B40/weights-5")
                                for r in ("two", "slurm"))
    for k in via_tf_config:
        np.testing.assert_array_equal(via_tf_config[k], via_slurm[k], err_msg=k)

    # A worker killed mid-run: the job, started again, resumes from the chief's checkpoint.
    job = [*args, "--run_name=killed"]
    procs = start_workers(job, tmp_path / "logs")
    kill_when(procs[1], lambda: resume_epoch(tmp_path / "killed", "trial0_B40") >= 2)
    procs[0].send_signal(signal.SIGKILL)  # the scheduler ends the job with its worker
    procs[0].wait()
    epoch = resume_epoch(tmp_path / "killed", "trial0_B40")
    assert 2 <= epoch < 5 and not (tmp_path / "killed" / "results.json").exists()
    outs = finish(start_workers(job, tmp_path / "logs"), tmp_path / "logs")
    assert all(f"resumed after epoch {epoch}" in out for out in outs)
    whole, killed = (weights(tmp_path / r / "checkpoints/trial0_B40/weights-5")
                     for r in ("two", "killed"))
    for k in whole:  # deterministic ops: exactly the uninterrupted job's weights
        np.testing.assert_array_equal(whole[k], killed[k], err_msg=k)

    # The sharpness of one fixed checkpoint, measured by one process and by two workers.
    measure = ["--experiment=sharpness", f"--checkpoint={one / 'checkpoints/trial0_B40'}",
               "--mnist1d_samples=500", "--epsilons=1e-3", "--subspace_dim=0",
               "--sharpness_maxiter=3", "--nojit_compile", f"--data_dir={data_dir}",
               f"--output_dir={tmp_path}"]
    assert run_cli(*measure, "--run_name=sharp1").returncode == 0
    finish(start_workers([*measure, "--run_name=sharp2"], tmp_path / "logs"), tmp_path / "logs")
    values = [[m["value"] for m in json.loads((tmp_path / r / "results.json").read_text())[
        "measurements"]] for r in ("sharp1", "sharp2")]  # moving, then batch-statistics BN
    assert len(values[0]) == 2 and values[1] == pytest.approx(values[0], rel=1e-4)


def test_a_run_killed_with_sigkill_resumes_to_the_same_results(data_dir, tmp_path):
    args = ["--experiment=train", "--batch_size=40", "--mnist1d_samples=500", "--trials=2",
            "--max_epochs=12", "--patience=20", "--deterministic", "--resume_interval=0",
            f"--data_dir={data_dir}", f"--output_dir={tmp_path}"]
    assert run_cli(*args, "--run_name=whole").returncode == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "run_experiments.py"), *args,
                             "--run_name=killed"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    # Killed in the middle of trial 1, after trial 0 finished.
    kill_when(proc, lambda: resume_epoch(run, "trial1_B40") >= 2)
    assert proc.returncode == -signal.SIGKILL and not (run / "results.json").exists()
    again = run_cli(*args, "--run_name=killed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs/trial0_B40.json: finished earlier, skipped" in again.stdout
    assert re.search(r"\[trial 2/2 B40 B=40\] resumed after epoch \d+", again.stdout)
    whole, resumed = (json.loads((tmp_path / r / "results.json").read_text())
                      for r in ("whole", "killed"))
    drop = ["seconds", "checkpoint_dir", "checkpoint"]  # paths differ by run folder
    pd.testing.assert_frame_equal(pd.DataFrame(resumed["runs"]).drop(columns=drop),
                                  pd.DataFrame(whole["runs"]).drop(columns=drop))
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "whole/history.csv").drop(columns="seconds"))


def _table2_results(run: Path) -> tuple:
    r = json.loads((run / "results.json").read_text())
    runs = [(x["regime"], x["epochs"], x["train_loss"], x["test_acc"]) for x in r["runs"]]
    measured = sorted((m["regime"], m["bn"], m["epsilon"], m["value"]) for m in r["measurements"])
    return runs, measured, r["parametric"], r["distances"]


def test_either_worker_killed_in_any_phase_the_restarted_job_ends_as_uninterrupted(data_dir,
                                                                                  tmp_path):
    """A two-worker table2 job, SIGKILLed (one worker, then the scheduler ends the other) while
    it trains, while it measures sharpness and while it draws the parametric plot, then started
    again: results.json equal to the uninterrupted job's, value for value (--deterministic)."""
    args = ["--experiment=table2", "--network=F1", "--mnist1d_samples=500", "--trials=1",
            "--max_epochs=3", "--patience=20", "--epsilons=1e-3,5e-4", "--subspace_dim=0",
            "--sharpness_maxiter=2", "--parametric_points=7", "--bn_measure=moving",
            "--parametric=linear,curvilinear", "--nojit_compile",
            "--deterministic", "--resume_interval=0", f"--data_dir={data_dir}",
            f"--output_dir={tmp_path}"]
    logs = tmp_path / "logs"
    finish(start_workers([*args, "--run_name=whole"], logs), logs)
    reference = _table2_results(tmp_path / "whole")
    phases = {  # (worker killed first, when)
        "training": (1, lambda run: resume_epoch(run, "trial0_SB") >= 1),
        "measuring": (0, lambda run: any((run / "measurements").glob("*.json"))),
        "parametric": (1, lambda run: (run / "figure2_training_curves.png").is_file()),
    }
    for phase, (victim, ready) in phases.items():
        run = tmp_path / phase
        procs = start_workers([*args, f"--run_name={phase}"], logs)
        kill_when(procs[victim], lambda run=run, ready=ready: ready(run))
        procs[1 - victim].send_signal(signal.SIGKILL)  # the scheduler ends the job
        procs[1 - victim].wait()
        assert not (run / "results.json").exists(), phase
        finish(start_workers([*args, f"--run_name={phase}"], logs), logs)
        assert _table2_results(run) == reference, phase
