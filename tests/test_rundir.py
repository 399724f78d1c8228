"""Run folders (lbtf.experiments.rundir): flags saved, a restart with other flags refused, finished
parts cached."""

import json
import platform
import re
from pathlib import Path

import pytest

from lbtf.errors import UsageError
from lbtf.experiments.flags import parse
from lbtf.experiments.rundir import cached, cpu_model, start_run


def test_a_named_run_resumes_with_its_own_flags_and_refuses_others(tmp_path):
    args = [f"--output_dir={tmp_path}", "--run_name=r", "--trials=2"]
    run_dir = start_run(parse(args), "table2")
    assert run_dir == tmp_path / "r" and "--trials=2" in (run_dir / "flags.txt").read_text()
    assert start_run(parse(args), "table2") == run_dir  # same flags: resumed
    with pytest.raises(UsageError, match=r"other values of --network, --trials;"):
        start_run(parse([*args, "--trials=3", "--network=F2"]), "table2")


def test_a_run_folder_saved_under_the_old_bn_flag_names_still_resumes(tmp_path):
    args = [f"--output_dir={tmp_path}", "--run_name=r", "--bn_measure=batch"]
    run_dir = start_run(parse(args), "table2")
    flags_txt = run_dir / "flags.txt"
    old = flags_txt.read_text().replace("--bn_measure=", "--measure_bn=")
    flags_txt.write_text(old.replace("--bn_layer=", "--bn="))
    assert "--measure_bn=batch" in flags_txt.read_text()
    assert start_run(parse(args), "table2") == run_dir
    with pytest.raises(UsageError, match="other values of --bn_measure;"):
        start_run(parse([*args[:2], "--bn_measure=moving"]), "table2")


def test_cached_computes_once(tmp_path):
    path = tmp_path / "runs" / "a.json"
    calls = []
    compute = lambda: calls.append(1) or {"value": 1.5}  # noqa: E731
    logged = []
    assert cached(path, compute, log=logged.append) == {"value": 1.5}
    assert cached(path, compute, log=logged.append) == {"value": 1.5}
    assert calls == [1] and json.loads(path.read_text()) == {"value": 1.5}
    assert logged == ["  runs/a.json: finished earlier, skipped"]


def test_cached_computes_again_what_another_method_made(tmp_path):
    """A record made by another method (or by an lbtf that stored none) is not mixed in."""
    path = tmp_path / "measurements" / "a.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"rows": [1]}))  # an older lbtf's record: no method stored
    values = iter([2, 3])
    compute = lambda: {"rows": [next(values)]}  # noqa: E731
    logged = []
    new = {"subspace_generator": "ziggurat"}
    assert cached(path, compute, log=logged.append, method=new) == {"rows": [2], "method": new}
    assert cached(path, compute, log=logged.append, method=new)["rows"] == [2]
    assert cached(path, compute, log=logged.append, method={"subspace_generator": "philox"})["rows"] == [3]
    assert logged[0].startswith("  measurements/a.json: made by another method (None, now")
    assert logged[1] == "  measurements/a.json: finished earlier, skipped"
    assert json.loads(path.read_text())["method"] == {"subspace_generator": "philox"}


def test_cpu_model_is_the_processor_name():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^model name\s*:\s*(.+?)\s*$", text, re.M)
    assert cpu_model() == (found.group(1) if found else platform.processor() or platform.machine())
    assert cpu_model()
