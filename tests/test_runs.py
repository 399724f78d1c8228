"""Run folders: atomic writes under a full disk or an unwritable folder, and the write redirection
of non-chief workers."""

import errno
import json
import os

import pytest

from lbtf import runs
from lbtf.errors import UsageError
from lbtf.experiments.rundir import write_results


def test_a_full_disk_leaves_the_earlier_results_whole(tmp_path, monkeypatch):
    write_results(tmp_path, {"value": 1}, "old report\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UsageError, match="No space left on device.*--output_dir"):
        write_results(tmp_path, {"value": 2}, "new report\n")
    assert json.loads((tmp_path / "results.json").read_text()) == {"value": 1}
    assert (tmp_path / "report.md").read_text() == "old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json"]


def test_an_unwritable_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write .*file/run/results.json"):
        runs.atomic_write_json(tmp_path / "file" / "run" / "results.json", {})
    with pytest.raises(UsageError, match="not writable"):
        runs.check_writable(tmp_path / "file" / "runs")


def test_a_non_chief_worker_writes_to_its_scratch_and_reads_its_own_copy_first(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(runs, "_redirect", None)
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    runs.atomic_write_text(run / "runs" / "a.json", "chief's")
    runs.redirect_writes(run, scratch)
    runs.atomic_write_text(run / "runs" / "b.json", "worker's")
    runs.atomic_write_text(tmp_path / "elsewhere.txt", "x")  # outside the run: not redirected
    assert not (run / "runs" / "b.json").exists()
    assert (scratch / "runs" / "b.json").read_text() == "worker's"
    assert (tmp_path / "elsewhere.txt").is_file()
    # Its own copy when it wrote one, else the chief's (records of an earlier start).
    assert runs.read_path(run / "runs" / "b.json") == scratch / "runs" / "b.json"
    assert runs.read_path(run / "runs" / "a.json") == run / "runs" / "a.json"
    (scratch / "ckpt").mkdir()
    (scratch / "ckpt" / "weights-3.index").write_text("")
    assert runs.read_path(run / "ckpt" / "weights-3") == scratch / "ckpt" / "weights-3"


def test_every_file_a_run_writes_follows_the_umask(tmp_path, data_dir):
    """A whole table2 run (records, results, report, figures, checkpoints, TensorBoard) under
    umask 027: every file 0640 and every folder 0750, what plain open() and mkdir give; under
    mkstemp's 0600 a colleague's account could not read the report."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_experiments.py"), f"--data_dir={data_dir}",
         f"--output_dir={out}", "--run_name=r", "--mnist1d_samples=500", "--max_epochs=2",
         "--trials=1", "--patience=2", "--parametric=linear", "--parametric_points=3",
         "--epsilons=1e-3", "--subspace_dim=0", "--sharpness_maxiter=1", "--nojit_compile"],
        umask=0o027, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    wrong = []
    for path in (out / "r").rglob("*"):
        want = 0o750 if path.is_dir() else 0o640
        if path.stat().st_mode & 0o777 != want:
            wrong.append(f"{path.relative_to(out)} {oct(path.stat().st_mode & 0o777)}")
    assert not wrong, wrong
    assert (out / "r" / "report.md").is_file() and list((out / "r").glob("*.png"))
