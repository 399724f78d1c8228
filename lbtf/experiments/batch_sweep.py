"""Figure 4 of Keskar et al.: test accuracy and sharpness of the final iterate against batch size.

Paper artifact -> flags/figure4_<net>.flags -> this module -> lbtf.train.fit, lbtf.sharpness.
The paper trains every batch size for 100 epochs (--max_epochs=100 with --patience=100).
"""

from __future__ import annotations

import pandas as pd

from lbtf import figures, report
from lbtf.experiments import common, sharpness


def run(flags, log=print):
    data, strategy, resolved = common.prepare(flags, {s: s for s in flags.batch_sizes})
    batches = {f"B{b}": b for b in sorted(set(resolved.values()))}
    run_dir = common.start_run(flags, "batch_sweep", strategy)
    log(f"batch_sweep: {flags.network} on {data.name}, batch sizes "
        f"{', '.join(str(b) for b in batches.values())}, {flags.trials} trial(s); writing {run_dir}")
    trained = common.train_regimes(flags, data=data, strategy=strategy, batches=batches,
                                run_dir=run_dir, log=log)
    all_runs, trained = trained, common.without_diverged(trained, log)
    accuracy = (trained.groupby("batch_size", sort=True)
                .agg(train_acc=("train_acc", "mean"), test_acc=("test_acc", "mean"),
                     test_acc_std=("test_acc", "std"), epochs=("epochs", "mean")).reset_index())
    found = pd.DataFrame(columns=["batch_size", "space", "epsilon", "value"])
    if flags.sharpness:
        log("measuring the sharpness of every final iterate")
        minimizers = [{"trial": r.trial, "regime": r.regime, "batch_size": r.batch_size,
                       "checkpoint": r.checkpoint}
                      for r in trained.itertuples()]
        found = sharpness.measure_minimizers(flags, data, minimizers, strategy=strategy, log=log,
                                             cache_dir=run_dir / "measurements")
    sharp = common.primary_sharpness(found, flags.measure_bn)
    writer = common.summary_writer(run_dir, "figures")
    fig = figures.batch_sweep(accuracy, sharp, title=f"Figure 4: {flags.network} on {data.name}")
    caption = ("Figure 4: test accuracy of the measured iterate (left) and its sharpness (right, "
               f"{flags.measure_bn[0]} BN) against the batch size; means over trials.")
    table = _sweep_table(accuracy, sharp)
    text = "\n\n".join([
        f"# Figure 4: accuracy and sharpness against batch size, {flags.network} on {data.name}",
        f"Adam lr {flags.learning_rate}; {flags.trials} trial(s) per batch size; at most "
        f"{flags.max_epochs} epochs (patience {flags.patience}). Accuracy in percent.",
        table, figures.save(fig, run_dir, "figure4_batch_sweep", caption=caption, writer=writer),
        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "batch_sweep", "network": flags.network, "dataset": data.name,
               "batch_sizes": list(batches.values()),
               "environment": common.environment(strategy),
               "measurement": common.measurement_record(flags),
               "accuracy": accuracy.to_dict(orient="records"),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": common.diverged_names(all_runs),
               "measurements": found.to_dict(orient="records")}
    common.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{table}\n\nreport: {run_dir / 'report.md'}")
    return run_dir


def _sweep_table(accuracy: pd.DataFrame, sharp: pd.DataFrame) -> str:
    """One row per batch size: accuracies and the mean sharpness per (space, eps)."""
    table = accuracy.copy()
    for c in ("train_acc", "test_acc", "test_acc_std"):
        table[c] = 100 * table[c]
    if len(sharp):
        table = table.merge(report.sharpness_columns(sharp, "batch_size"), left_on="batch_size",
                            right_index=True, how="left")
    return table.to_markdown(index=False, floatfmt=".4g")
