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
