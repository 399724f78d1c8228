"""--shard=i/N: one process of N trains and measures only its share of an experiment's runs.

A study is many small runs (trials x regimes); on a node of several GPUs the natural layout is one
process per GPU, each with its own share, all writing one run folder (`scripts/multi_gpu_node.sh`,
`scripts/slurm_array.sbatch`). Run k of the experiment (trial-major, in regime order) belongs to
shard k mod N; a shard writes the per-run records and measurements it always writes, skips the
other shards' runs and stops before anything that needs every run. The same command without
--shard then finds every record, trains or measures whatever a shard did not finish, and writes
results.json, the report and the figures.
"""

from __future__ import annotations

from pathlib import Path

from lbtf.errors import UsageError

# The experiments whose runs can be split between processes.
SHARDED = ("table2", "hoffer", "remedies", "batch_sweep", "train")


def parse(text: str | None) -> tuple[int, int] | None:
    """(i, N) from 'i/N' with 0 <= i < N; None for no shard."""
    if not text:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise UsageError(f"--shard={text} is not of the form i/N with 0 <= i < N, e.g. 0/4")
    return i, n


def owns(shard: str | None, k: int) -> bool:
    """Whether run k (trial-major, regime order) is this process's: every run without a shard."""
    share = parse(shard)
    return share is None or k % share[1] == share[0]


def done(shard: str, run_dir: Path, runs: int, log=print) -> Path:
    """A shard's last word: what it did and what comes next."""
    i, n = parse(shard)
    log(f"shard {i}/{n}: its {runs} run(s) are trained and measured in {run_dir}; when every "
        "shard has finished, the same command without --shard writes results.json, the report "
        "and the figures")
    return run_dir
