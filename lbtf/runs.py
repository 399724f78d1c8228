"""Run folders and atomic writes: a reader never sees a half-written result."""

from __future__ import annotations

import datetime
import json
import math
import os
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
