"""A run folder: created (or resumed) with the resolved flags, finished parts cached as JSON,
results written last and atomically, with the environment that produced them."""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

import lbtf
from lbtf import lbfgsb, runs, summaries
from lbtf.distribute import is_chief, worker
from lbtf.errors import UsageError
from lbtf.experiments import sharding
from lbtf.experiments.config import Config
from lbtf.experiments.flags import END, RENAMED


def _differing(saved: str, current: str) -> list[str]:
    """The flags whose values differ between two flagfiles; a run folder saved under a flag's old
    name (flags.RENAMED) compares under the new one."""
    def parse(text: str) -> dict[str, str]:
        pairs = (ln.lstrip("-").partition("=")[::2] for ln in text.splitlines()
                 if ln and not ln.startswith("#"))
        return {RENAMED.get(k, k): v for k, v in pairs}
    a, b = parse(saved), parse(current)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def start_run(cfg: Config, experiment: str, strategy: tf.distribute.Strategy | None = None) -> Path:
    """Creates the run folder and saves the resolved flags in it (usable as a --flagfile).

    With --run_name the folder is <output_dir>/<run_name>; when it already holds a run started
    with the same flags, that run is resumed (finished parts are skipped by the caller). In a
    multi-worker job only the chief writes it; the other workers write to a scratch folder."""
    text = cfg.run.flags_text
    if not cfg.run.run_name:
        run_dir = runs.new_run_dir(cfg.run.output_dir, experiment)
    else:
        run_dir = Path(cfg.run.output_dir) / cfg.run.run_name
        if strategy is not None and not is_chief(strategy):
            scratch = tempfile.mkdtemp(prefix=f"lbtf-worker{worker(strategy)[0]}-")
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
            runs.redirect_writes(run_dir, scratch)
        if strategy is None or is_chief(strategy):
            runs.write_path(run_dir).mkdir(parents=True, exist_ok=True)
            runs.lock_run_folder(run_dir, sharding.parse(cfg.run.shard))
            if not cfg.run.shard:
                runs.remove_stray_temporaries(run_dir)
        saved = run_dir / "flags.txt"
        if saved.is_file():
            saved_text = saved.read_text(errors="replace")
            changed = _differing(saved_text, text)
            if changed and END not in saved_text:
                raise UsageError(f"run folder {run_dir}: flags.txt is incomplete or unreadable "
                                 "(damaged); if this command is the run's own, delete "
                                 f"{saved} and start it again, else choose another --run_name")
            if changed:
                raise UsageError(f"run folder {run_dir} was started with other values of "
                                 f"{', '.join('--' + c for c in changed)}; start it again with its "
                                 f"own flags (--flagfile={saved}) or choose another --run_name")
            return run_dir
        runs.write_path(run_dir).mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(run_dir / "flags.txt", text)
    return run_dir


def cached(path: Path, compute: Callable[[], dict], log=print, *, method: dict | None = None) -> dict:
    """The JSON record at `path` if an earlier (interrupted) start of this run finished it, else
    compute() written atomically to `path`: how multi-run experiments skip finished work.

    `method` (JSON values) names how the record is computed, beyond the run's flags (e.g. the
    generator of a random subspace): it is stored with the record, and a record made another way
    is computed again, so that one table never mixes two methods.
    """
    name = path.relative_to(path.parents[1])
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (ValueError, OSError) as e:  # truncated or unreadable (a crash, a failing disk)
            record = None
            log(f"  {name}: damaged ({str(e)[:80]}); done again")
        if record is not None and (method is None or record.get("method") == method):
            log(f"  {name}: finished earlier, skipped")
            return record
        if record is not None:
            log(f"  {name}: made by another method ({record.get('method')}, now {method}); "
                "done again")
    record = runs.jsonable(compute() if method is None else {**compute(), "method": method})
    runs.atomic_write_json(path, record)
    return record


# Packages whose versions can change the numbers a run prints.
VERSIONED = ("tensorflow", "keras", "numpy", "scipy", "pandas", "mnist1d", "scikit-learn",
             "tensorflow-datasets")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The processor's name (its instruction set decides the kernels, so the rounding: the same
    seeds and versions train to other minimisers on another CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(strategy: tf.distribute.Strategy) -> dict:
    """What produced a run's numbers: versions, the L-BFGS-B path, strategy and devices."""
    return {"lbtf": lbtf.__version__, "python": platform.python_version(),
            "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
            **{p: _version(p) for p in VERSIONED},
            "lbfgsb": lbfgsb.FAST if lbfgsb.fast_path_available() else lbfgsb.PUBLIC,
            "strategy": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync, "workers": worker(strategy)[1],
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def summary_writer(run_dir: Path, name: str):
    """The TensorBoard writer of <run_dir>/tb/<name> (a worker's scratch copy off the chief)."""
    return tf.summary.create_file_writer(str(runs.write_path(run_dir / "tb" / name)))


def write_results(run_dir: Path, results: dict, report: str, log=print) -> None:
    """results.json last: its presence marks a finished run. Before it, the measurements and
    headline numbers go to TensorBoard (lbtf.summaries). Logs the run folder's size."""
    summaries.publish(lambda name: runs.write_path(run_dir / "tb" / name), results)
    runs.atomic_write_text(run_dir / "report.md", report)
    runs.atomic_write_json(run_dir / "results.json", results)
    files = [f for f in runs.read_path(run_dir).rglob("*") if f.is_file()]
    log(f"run folder {run_dir}: {sum(f.stat().st_size for f in files) / 2**20:.1f} MB in "
        f"{len(files)} files")
