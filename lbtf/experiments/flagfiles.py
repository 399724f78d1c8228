"""Flagfiles found the way a user names them: a path, or the name of one of lbtf's own flagfiles
(`lbtf --flagfile=table2_C1_cpu` from any directory after `pip install`).

absl resolves a flagfile named inside another one against the working directory, so a `_cpu`
twin run from elsewhere would fail naming its parent. `expand` inlines every `--flagfile=` of the
command line itself, in order (later flags still override earlier ones, as with absl), and looks a
nested one up beside the file that names it first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lbtf.errors import UsageError

_PACKAGE = Path(__file__).resolve().parents[1]  # lbtf/


def shipped_dirs() -> list[Path]:
    """Where lbtf's own flagfiles are: the source tree's flags/ (a clone or an editable install),
    or the data files of a wheel (share/lbtf/flags under the prefix or a --target folder)."""
    return [_PACKAGE.parent / "flags", _PACKAGE.parent / "share" / "lbtf" / "flags",
            Path(sys.prefix) / "share" / "lbtf" / "flags"]


def shipped() -> dict[str, Path]:
    """{name without .flags: path} of lbtf's own flagfiles."""
    found: dict[str, Path] = {}
    for folder in shipped_dirs():
        for path in sorted(folder.glob("*.flags")) if folder.is_dir() else ():
            found.setdefault(path.stem, path)
    return found


def find(name: str, *, beside: Path | None = None) -> Path | None:
    """The flagfile `name`: a path (relative to the folder of the file naming it, then to the
    working directory), else one of lbtf's own by its file name, with or without `.flags`."""
    path = Path(name).expanduser()
    candidates = [beside / path] if beside is not None and not path.is_absolute() else []
    candidates.append(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    return shipped().get(Path(name).name.removesuffix(".flags"))


def _value(arg: str) -> str | None:
    for prefix in ("--flagfile=", "-flagfile="):
        if arg.startswith(prefix):
            return arg[len(prefix):]
    return None


def _lines(path: Path) -> list[str]:
    """A flagfile's flags as absl reads them: one a line, comments (# or //) and blanks left out."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read flagfile {path} ({type(e).__name__}); pass a readable "
                         "text file of flags, one a line") from None
    return [s for s in (line.strip() for line in text.splitlines())
            if s and not s.startswith(("#", "//"))]


def expand(argv: list[str], *, beside: Path | None = None, _seen: tuple[Path, ...] = (),
           _named_in: str = "") -> list[str]:
    """`argv` with every --flagfile=NAME replaced by that file's flags, recursively."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        name = next(args, None) if arg in ("--flagfile", "-flagfile") else _value(arg)
        if name is None:
            out.append(arg)
            continue
        path = find(name, beside=beside)
        if path is None:
            where = f" (named in {_named_in})" if _named_in else ""
            raise UsageError(f"flagfile {name} not found{where}; pass a path, or the name of one "
                             f"of lbtf's {len(shipped())} flagfiles such as table2_C1_cpu")
        if path in _seen:
            raise UsageError(f"flagfile {path} names itself through {_seen[-1]}; remove the loop")
        out += expand(_lines(path), beside=path.parent, _seen=(*_seen, path), _named_in=str(path))
    return out
