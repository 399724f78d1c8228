"""run_experiments.py as a user runs it: bad input and end-to-end smoke runs of each experiment."""

import json

import pandas as pd
import pytest
from conftest import run_cli

TINY = ["--mnist1d_samples=500", "--max_epochs=3", "--trials=2", "--patience=2"]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if ln.startswith(("error:", "FATAL Flags parsing error"))]


@pytest.mark.parametrize("args,expect", [
    (["--network=F9"], "--network"),
    (["--dataset=imagenet"], "--dataset"),
    (["--network=C1"], "needs image inputs"),
    (["--sb_batch_size=100000"], "exceeds the 400 training examples"),
    (["--lb_batch_size=0"], "positive integer"),
    (["--batch_size=-5", "--experiment=train"], "positive integer"),
    (["--lb_batch_size=1.5"], "(0, 1]"),
    (["--trials=0"], "--trials"),
    (["--output_dir=/etc/hostname/runs"], "not writable"),
    (["--dataset=timit", "--timit_path=/nonexistent.npz"], "TIMIT file not found"),
    (["--synthetic_shape=a,3", "--dataset=synthetic"], "--synthetic_shape"),
    (["stray"], "unexpected arguments"),
])
def test_bad_input_is_one_line_and_leaves_no_run(args, expect, data_dir, tmp_path):
    out = tmp_path / "runs"
    if not any(a.startswith("--output_dir") for a in args):
        args = [*args, f"--output_dir={out}"]
    proc = run_cli(*args, f"--data_dir={data_dir}", *TINY)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr) or [ln for ln in proc.stderr.splitlines() if expect in ln]
    assert len(lines) == 1 and expect in lines[0], proc.stderr[-2000:]
    assert not out.exists() or not any(out.iterdir())


def test_table2_end_to_end(data_dir, tmp_path):
    proc = run_cli(f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch   1" in proc.stdout and "report:" in proc.stdout
    (run,) = tmp_path.iterdir()
    assert run.name.startswith("table2_")
    results = json.loads((run / "results.json").read_text())
    assert results["batch_sizes"] == {"SB": 256, "LB": 40}
    assert [(r["trial"], r["regime"]) for r in results["runs"]] == [
        (0, "SB"), (0, "LB"), (1, "SB"), (1, "LB")]
    assert all(0 <= r["test_acc"] <= 1 and r["epochs"] <= 3 for r in results["runs"])
    history = pd.read_csv(run / "history.csv")
    assert set(history.regime) == {"SB", "LB"} and {"train_loss", "test_acc"} <= set(history)
    report = (run / "report.md").read_text()
    table = [ln for ln in report.splitlines() if ln.startswith("| lbtf") or ln.startswith("| paper")]
    assert len(table) == 2 and "98.03 ± 0.07" in table[1]
    header = next(ln for ln in report.splitlines() if "SB train" in ln)
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "SB train", "LB train", "SB test", "LB test"]
    flags_txt = (run / "flags.txt").read_text()
    assert "--network=F1" in flags_txt and "--trials=2" in flags_txt
    assert (run / "tb" / "trial0_SB").is_dir()
    ckpt = run / "checkpoints" / "trial1_LB"
    assert (ckpt / "weights-0.index").is_file() and (ckpt / "checkpoint").is_file()


def test_train_experiment_and_info(data_dir, tmp_path):
    proc = run_cli("--experiment=train", "--batch_size=10%", f"--data_dir={data_dir}",
                   f"--output_dir={tmp_path}", *TINY[:2], "--trials=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "results.json").read_text())["batch_size"] == 40
    proc = run_cli("--experiment=info", f"--data_dir={data_dir}", "--mnist1d_samples=500")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1462794" in proc.stdout and "14991946" in proc.stdout
