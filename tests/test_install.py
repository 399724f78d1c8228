"""A non-editable install works away from the repository: `pip install .` puts lbtf (and nothing of
the repository's tooling) into a fresh target, and `python -m lbtf` and the `lbtf` console script
run an experiment from another directory, as run_experiments.py does."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TINY = ["--mnist1d_samples=500", "--max_epochs=2", "--trials=1", "--patience=2", "--nosharpness",
        "--parametric="]


def test_installed_wheel_runs_an_experiment_from_another_directory(tmp_path, data_dir):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the repository
    shutil.copytree(REPO / "lbtf", source / "lbtf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "flags", source / "flags")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    assert not (site / "lbtf" / "readme.py").exists() and not (site / "tools").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "2"}
    where = subprocess.run([sys.executable, "-c", "import lbtf; print(lbtf.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site)  # the installed copy, not the repository's
    for name, command in (("module", [sys.executable, "-m", "lbtf"]),
                          ("script", [sys.executable, str(site / "bin" / "lbtf")])):
        proc = subprocess.run([*command, f"--data_dir={data_dir}", f"--output_dir={name}",
                               f"--run_name={name}", *TINY], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = json.loads((elsewhere / name / name / "results.json").read_text())
        assert results["experiment"] == "table2" and len(results["runs"]) == 2
    # The flagfiles come with the package: a _cpu twin by name, its parent found beside it.
    assert (site / "share" / "lbtf" / "flags" / "table2_C1_cpu.flags").is_file()
    proc = subprocess.run([sys.executable, "-m", "lbtf", "--flagfile=table2_C1_cpu",
                           "--experiment=info"], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "C1" in proc.stdout, proc.stderr[-2000:]
