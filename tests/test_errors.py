"""lbtf.errors: a UsageError becomes one `error:` line and exit 2, a failed write one line with
WRITE_FAILED_HINT and exit 1, through the command line's main (lbtf.experiments.entry, which
run_experiments.py and `python -m lbtf` call) as a user meets them; no traceback."""

import errno
import importlib
import types

import pytest

from lbtf.errors import WRITE_FAILED_HINT, UsageError


def _main_with(monkeypatch, raised: Exception):
    entry = importlib.import_module("lbtf.experiments.entry")
    fake = types.SimpleNamespace(run=lambda config: (_ for _ in ()).throw(raised))
    monkeypatch.setattr(entry.importlib, "import_module", lambda name: fake)
    from lbtf.experiments.flags import parse
    parse([])  # flags parsed, as absl's app.run does before main
    with pytest.raises(SystemExit) as exit_:
        entry.main(["run_experiments.py"])
    return exit_.value.code


def test_a_usage_error_is_one_line_and_exit_2(monkeypatch, capsys):
    code = _main_with(monkeypatch, UsageError("--trials must be positive; pass --trials=1"))
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --trials must be positive; pass --trials=1\n"


def test_a_failed_write_names_the_file_and_what_to_do(monkeypatch, capsys):
    full = OSError(errno.ENOSPC, "No space left on device", "/out/run/report.md")
    code = _main_with(monkeypatch, full)
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"error: /out/run/report.md: No space left on device; {WRITE_FAILED_HINT}\n"
    assert "resume" in WRITE_FAILED_HINT and "--output_dir" in WRITE_FAILED_HINT


def test_any_other_exception_is_not_swallowed(monkeypatch):
    """A bug is a bug: it keeps its traceback rather than posing as bad input."""
    with pytest.raises(ZeroDivisionError):
        _main_with(monkeypatch, ZeroDivisionError("bug"))
