"""`python -m lbtf ...`: the command line of run_experiments.py (lbtf/experiments/entry.py)."""

from lbtf.experiments.entry import run

if __name__ == "__main__":
    run()
