"""Run folders and atomic writes: a reader never sees a half-written result."""

from __future__ import annotations

import datetime
import fcntl
import json
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lbtf.errors import WRITE_FAILED_HINT, UsageError

# Multi-worker jobs: only the chief writes the run folder. Another worker's writes under it go to
# a private scratch folder instead (set by `redirect_writes`); it reads back what it wrote itself
# from there and everything else (records and checkpoints of earlier starts) from the chief's.
_redirect: tuple[Path, Path] | None = None


def redirect_writes(folder: str | Path, scratch: str | Path) -> None:
    """From now on, writes to paths under `folder` go to the same paths under `scratch`."""
    global _redirect
    _redirect = (Path(folder).resolve(), Path(scratch).resolve())


def write_path(path: str | Path) -> Path:
    """Where this process writes `path` (itself, except on a non-chief worker)."""
    path = Path(path)
    if _redirect is None:
        return path
    folder, scratch = _redirect
    try:
        return scratch / path.resolve().relative_to(folder)
    except ValueError:
        return path


def read_path(path: str | Path) -> Path:
    """What this process reads for `path`: its own copy if it wrote one, else `path`."""
    own = write_path(path)
    return own if own != Path(path) and (own.exists() or Path(f"{own}.index").exists()) else Path(path)


def _atomic(path: Path, write) -> None:
    """Writes to a temporary file beside `path`, then renames it into place: a full disk or an
    unwritable folder leaves the old file (or none) and a one-line UsageError, never half a file."""
    path = write_path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        # mkstemp makes the file 0600: give it what a plain open() would (0644 under umask 022),
        # so that a colleague, a TensorBoard or a web server under another account can read it.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"cannot write {path} ({e.strerror or e}); {WRITE_FAILED_HINT}") from None
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink()


def _umask() -> int:
    """The process's umask (read by setting it, so set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Writes text to a temporary file beside `path`, then renames it into place."""
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON: NumPy values become plain ones, NaN and infinities become null."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    _atomic(path, lambda f: np.savez_compressed(f, **arrays))


def jsonable(o: Any) -> Any:
    """`o` with NumPy scalars and arrays, tuples and paths made plain, and non-finite floats None."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple | np.ndarray):
        return [jsonable(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Path):
        return str(o)
    return o


# Open lock files of the run folders this process writes: a lock lives as long as its file stays
# open, and the kernel drops it when the process dies, however it dies.
_LOCKS: list = []


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


def _try_lock(path: Path, mode: int):
    """The open file of `path` locked with flock `mode`, or None if another process holds it."""
    f = open(path, "a+")  # noqa: SIM115  (kept open: the lock lives with the file)
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def lock_run_folder(run_dir: Path, shard: tuple[int, int] | None = None) -> None:
    """One writer per run folder: the whole folder (exclusive), or a shard of it (shared with the
    other shards, exclusive for this shard). Another live process holding what we need gets a
    one-line UsageError naming it; a dead one's lock is gone with it (flock), so it is taken
    over. Idempotent within a process."""
    me = f"process {os.getpid()} on {socket.gethostname()}"
    main = run_dir / ".lock"
    if any(getattr(f, "name", None) == str(main) for f in _LOCKS):
        return
    mode = fcntl.LOCK_SH if shard else fcntl.LOCK_EX
    held = _try_lock(main, mode)
    if held is None:
        shards = [_holder(p) for p in sorted(run_dir.glob(".lock.shard*")) if _busy(p)]
        others = "; ".join(shards) if shards else _holder(main)
        raise UsageError(f"run folder {run_dir} is being written by {others}; wait for it to "
                         "finish or choose another --run_name")
    files = [held]
    if shard:
        mine = run_dir / f".lock.shard{shard[0]}of{shard[1]}"
        own = _try_lock(mine, fcntl.LOCK_EX)
        if own is None:
            held.close()
            raise UsageError(f"shard {shard[0]}/{shard[1]} of {run_dir} is being run by "
                             f"{_holder(mine)}; wait for it to finish or run another shard")
        files.append(own)
    files[-1].seek(0)
    files[-1].truncate(0)
    files[-1].write(me + "\n")
    files[-1].flush()
    _LOCKS.extend(files)


def _busy(path: Path) -> bool:
    """Whether some live process holds a lock on `path`."""
    f = _try_lock(path, fcntl.LOCK_EX)
    if f is None:
        return True
    f.close()
    return False


def remove_stray_temporaries(run_dir: Path, log=print) -> None:
    """Deletes the temporary files of atomic writes that a killed process left (only while this
    process holds the whole folder: a live writer's temporary file is never touched)."""
    for f in run_dir.rglob(".*.tmp"):
        f.unlink(missing_ok=True)
        log(f"  {f.relative_to(run_dir)}: left half-written by a killed process; deleted")


def check_writable(directory: str | Path) -> Path:
    """Creates `directory` if needed and proves it writable, or raises a UsageError saying so."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".probe"):
            pass
    except OSError as e:
        raise UsageError(f"output directory {d} is not writable ({e.strerror or e}); "
                         "pass a writable --output_dir") from None
    return d


def new_run_dir(output_dir: str | Path, experiment: str) -> Path:
    """outputs/<experiment>_<timestamp>/, unique even when two runs start in the same second."""
    root = check_writable(output_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        d = root / (f"{experiment}_{stamp}" + (f"_{i}" if i else ""))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise UsageError(f"could not create a fresh run folder under {root}")
