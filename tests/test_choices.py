"""Batch-size specs (lbtf.choices): integers, fractions and percentages, resolved against a
training set."""

import pytest

from lbtf.choices import parse_batch_size, resolve_batch_size
from lbtf.errors import UsageError


def test_parse_and_resolve_batch_size():
    assert parse_batch_size("256") == 256 and parse_batch_size("0.1") == 0.1
    assert parse_batch_size("10%") == pytest.approx(0.1)
    assert resolve_batch_size("0.1", 4000) == 400 and resolve_batch_size(64, 100) == 64
    assert resolve_batch_size("1.0", 50) == 50
    for bad in ("0", "-3", "0.0", "1.5", "abc", "150%"):
        with pytest.raises(ValueError):
            parse_batch_size(bad)
    with pytest.raises(UsageError, match="exceeds the 100 training examples"):
        resolve_batch_size(101, 100)
