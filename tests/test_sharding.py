"""--shard=i/N (lbtf.experiments.sharding): processes sharing one run folder each train and
measure their own runs; the command without --shard then finds every record and writes the
results, equal to one process running it all. A shard killed midway is finished by its restart."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from conftest import REPO, run_cli

from lbtf.experiments.flags import parse
from lbtf.experiments.sharding import owns

# Deterministic ops: the sharded and the single-process results must agree value for value.
ARGS = ["--mnist1d_samples=500", "--max_epochs=3", "--trials=2", "--patience=2", "--epsilons=1e-3",
        "--subspace_dim=0", "--sharpness_maxiter=2", "--bn_measure=moving", "--parametric_points=3",
        "--nojit_compile", "--deterministic", "--resume_interval=0"]


def test_run_k_belongs_to_shard_k_mod_n():
    assert [k for k in range(7) if owns("1/3", k)] == [1, 4]
    assert all(owns(None, k) for k in range(3))


@pytest.mark.parametrize("args", [
    ["--shard=2/2", "--run_name=x"], ["--shard=1/2"], ["--shard=0/2", "--run_name=x",
                                                        "--experiment=trajectory"],
    ["--shard=a/b", "--run_name=x"], ["--shard=0/2", "--run_name=x", "--strategy=multi_worker"]])
def test_bad_shards_are_refused_at_the_flags(args):
    with pytest.raises(flags.IllegalFlagValueError, match="--shard=i/N"):
        parse(args)


def _start(data_dir, out, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, str(REPO / "run_experiments.py"), f"--data_dir={data_dir}",
           f"--output_dir={out}", "--run_name=study", *ARGS, *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _results(path):
    r = json.loads((path / "results.json").read_text())
    measured = sorted((m["trial"], m["regime"], m["value"]) for m in r["measurements"])
    runs = [(x["trial"], x["regime"], x["epochs"], x["train_loss"], x["test_acc"]) for x in r["runs"]]
    return runs, measured, r["distances"], r["parametric"]


def test_two_shards_then_the_unsharded_command_equal_one_process(data_dir, tmp_path):
    reference = run_cli(f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'one'}",
                        "--run_name=study", *ARGS)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Shard 0 is killed while it trains, then restarted; shard 1 runs alongside.
    first, second = _start(data_dir, tmp_path, "--shard=0/2"), _start(data_dir, tmp_path,
                                                                      "--shard=1/2")
    deadline = time.time() + 120
    ckpt = tmp_path / "study" / "checkpoints" / "trial0_SB" / "resume" / "ckpt-1.index"
    while not ckpt.is_file() and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    out1, err1 = second.communicate(timeout=300)
    assert second.returncode == 0, err1[-3000:]
    again = _start(data_dir, tmp_path, "--shard=0/2")
    out0, err0 = again.communicate(timeout=300)
    assert again.returncode == 0, err0[-3000:]
    assert "[trial 1/2 SB B=32] resumed after epoch" in out0
    # Runs k = 0, 2 (trial 0 and 1 SB) are shard 0's, k = 1, 3 (LB) shard 1's.
    assert "[trial 1/2 SB" in out0 and "[trial 1/2 LB" not in out0
    assert "[trial 1/2 LB" in out1 and "SB B=" not in out1
    assert "shard 1/2: its 2 run(s)" in out1 and not (tmp_path / "study" / "results.json").exists()
    final = run_cli(f"--data_dir={data_dir}", f"--output_dir={tmp_path}", "--run_name=study", *ARGS)
    assert final.returncode == 0, final.stderr[-3000:]
    assert not re.search(r"\] epoch +\d", final.stdout)  # every run was trained by a shard
    assert final.stdout.count("finished earlier, skipped") == 4 + 4  # runs and measurements
    assert _results(tmp_path / "study") == _results(tmp_path / "one" / "study")


def test_multi_gpu_node_script_runs_one_shard_per_gpu_then_the_results(data_dir, tmp_path):
    """scripts/multi_gpu_node.sh with two 'GPUs' (CUDA_VISIBLE_DEVICES means nothing to a CPU
    build): two shard processes, then the unsharded command writes the results."""
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join(["--experiment=table2", f"--data_dir={data_dir}",
                                   *ARGS[:2], "--trials=1", "--nosharpness", "--parametric_points=3",
                                   "--nojit_compile"]) + "\n")
    name = f"scripttest{os.getpid()}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHON": sys.executable, "GPUS": "0,1"}
    try:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "multi_gpu_node.sh"), str(flagfile),
                               name, f"--output_dir={tmp_path}"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "started 2 shard(s)" in proc.stdout and "report:" in proc.stdout
        logs = [(REPO / "outputs" / f"{name}.shard{i}.log").read_text() for i in range(2)]
    finally:
        for log in (REPO / "outputs").glob(f"{name}.shard*.log"):
            log.unlink()
    assert "shard 0/2: its 1 run(s)" in logs[0] and "shard 1/2: its 1 run(s)" in logs[1]
    results = json.loads((tmp_path / name / "results.json").read_text())
    assert [(r["trial"], r["regime"]) for r in results["runs"]] == [(0, "SB"), (0, "LB")]
