"""Runs one experiment on one device and on 2 logical CPUs (--strategy=mirrored) and prints each
run's (regime, epochs, training loss, test accuracy) for both, as JSON (tests/test_replicas.py)."""

import importlib
import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from lbtf.experiments.flags import parse  # noqa: E402

out = []
for strategy in ("auto", "mirrored"):
    cfg = parse([*sys.argv[1:], f"--strategy={strategy}", f"--run_name={strategy}"])
    run = importlib.import_module(f"lbtf.experiments.{cfg.run.experiment}").run(cfg, log=print)
    runs = json.loads((run / "results.json").read_text())["runs"]
    out.append([(r["regime"], r["epochs"], r["train_loss"], r["test_acc"]) for r in runs])
print(json.dumps(out))
