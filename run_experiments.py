"""lbtf command line (the same as `python -m lbtf` and the `lbtf` console script): parses absl
flags into one typed Config and dispatches to lbtf.experiments.<name>.run(config); see
lbtf/experiments/entry.py.

    python run_experiments.py                       # the demo: Table 2 for F1 on MNIST-1D
    python run_experiments.py --flagfile=flags/table2_F1.flags
    python run_experiments.py --helpfull
"""

from lbtf.experiments.entry import run

if __name__ == "__main__":
    run()
