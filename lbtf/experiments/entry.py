"""The command line: parses absl flags into one typed Config and dispatches to
lbtf.experiments.<name>.run(config). `run_experiments.py`, `python -m lbtf` and the `lbtf` console
script all call `run()`, so they behave alike.

    python run_experiments.py                       # the demo: Table 2 for F1 on MNIST-1D
    python -m lbtf --flagfile=flags/table2_F1.flags
    lbtf --helpfull
"""

import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

from absl import app, flags, logging  # noqa: E402

from lbtf.errors import WRITE_FAILED_HINT, UsageError  # noqa: E402
from lbtf.experiments import flags as lbtf_flags  # noqa: E402  (defines every flag)
from lbtf.experiments.config import from_flags  # noqa: E402
from lbtf.experiments.flagfiles import expand  # noqa: E402

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    logging.set_verbosity(logging.WARNING)  # no INFO line per checkpoint save
    # The one place flags become a Config.
    config = from_flags(FLAGS, lbtf_flags.flags_text(), lbtf_flags.explicit_flags())
    experiment = importlib.import_module(f"lbtf.experiments.{config.run.experiment}")
    try:
        experiment.run(config)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # e.g. a disk that filled up under a figure or a TensorBoard log
        print(f"error: {e.filename or ''}: {e.strerror or e}; {WRITE_FAILED_HINT}", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    try:  # flagfiles by name or beside the file naming them (lbtf.experiments.flagfiles)
        argv = [sys.argv[0], *expand(sys.argv[1:])]
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(main, argv=argv)
