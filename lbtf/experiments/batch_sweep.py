"""Figure 4 of Keskar et al.: test accuracy and sharpness of the final iterate against batch size.

Paper artifact -> flags/figure4_<net>.flags -> this module -> lbtf.train.fit, lbtf.sharpness.
The paper trains every batch size for 100 epochs (--max_epochs=100 with --patience=100).
"""

from __future__ import annotations

import time

import pandas as pd

from lbtf import figures, report, study
from lbtf.experiments import prepare, rundir, sharding, sharpness, training
from lbtf.experiments.config import Config


def run(cfg: Config, log=print):
    started = time.perf_counter()
    data, strategy, resolved = prepare.prepare(cfg, {s: s for s in cfg.experiment.batch_sizes})
    batches = {f"B{b}": b for b in sorted(set(resolved.values()))}
    run_dir = rundir.start_run(cfg, "batch_sweep", strategy)
    log(f"batch_sweep: {cfg.model.network} on {data.name}, batch sizes "
        f"{', '.join(str(b) for b in batches.values())}, {cfg.training.trials} trial(s); "
        f"writing {run_dir}")
    trained = training.train_regimes(cfg, data=data, strategy=strategy, batches=batches,
                                     run_dir=run_dir, log=log)
    all_runs, trained = trained, training.without_diverged(trained, log)
    found = pd.DataFrame(columns=["batch_size", "space", "epsilon", "value"])
    if cfg.measure.sharpness and not trained.empty:
        log("measuring the sharpness of every final iterate")
        minimizers = [{"trial": r.trial, "regime": r.regime, "batch_size": r.batch_size,
                       "checkpoint": r.checkpoint}
                      for r in trained.itertuples()]
        found = sharpness.measure_minimizers(cfg, data, minimizers, strategy=strategy, log=log,
                                             cache_dir=run_dir / "measurements")
    if cfg.run.shard:
        return sharding.done(cfg.run.shard, run_dir, len(all_runs), log)
    accuracy = (trained.groupby("batch_size", sort=True)
                .agg(train_acc=("train_acc", "mean"), test_acc=("test_acc", "mean"),
                     test_acc_std=("test_acc", "std"), epochs=("epochs", "mean")).reset_index())
    sharp = sharpness.primary_sharpness(found, cfg.measure.bn_measure)
    writer = rundir.summary_writer(run_dir, "figures")
    fig = figures.batch_sweep(accuracy, sharp,
                              title=f"Figure 4: {cfg.model.network} on {data.name}")
    caption = ("Figure 4: test accuracy of the measured iterate (left) and its sharpness (right, "
               f"{cfg.measure.bn_measure[0]} BN) against the batch size; means over trials.")
    table = _sweep_table(accuracy, sharp)
    corr, tracking = _which_measure(cfg, found, trained, data.name, run_dir, writer)
    text = "\n\n".join([
        f"# Figure 4: accuracy and sharpness against batch size, {cfg.model.network} on {data.name}",
        f"Adam lr {cfg.training.learning_rate}; {cfg.training.trials} trial(s) per batch size; "
        f"at most {cfg.training.max_epochs} epochs (patience {cfg.training.patience}). Accuracy in percent.",
        table, figures.save(fig, run_dir, "figure4_batch_sweep", caption=caption, writer=writer),
        *tracking, "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "batch_sweep", "seconds": time.perf_counter() - started,
               "network": cfg.model.network, "dataset": data.name, "bn_layer": cfg.model.bn_layer,
               "run_name": run_dir.name,
               "batch_sizes": list(batches.values()),
               "environment": rundir.environment(strategy),
               "measurement": sharpness.measurement_record(cfg),
               "accuracy": accuracy.to_dict(orient="records"),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": training.diverged_names(all_runs),
               "measurements": found.to_dict(orient="records"),
               "correlations": corr.to_dict(orient="records")}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{table}\n\nreport: {run_dir / 'report.md'}")
    return run_dir


def _which_measure(cfg: Config, found: pd.DataFrame, trained: pd.DataFrame, dataset: str, run_dir,
                   writer) -> tuple[pd.DataFrame, list[str]]:
    """Kendall's tau of every measure with the gaps and the batch size, and each measure against
    the accuracy gap (lbtf.study); nothing without measurements."""
    if found.empty or "measure" not in found:
        return pd.DataFrame(), []
    rows = study.joined(found, trained)
    corr = study.correlations(rows)
    keys = [tuple(k) for k in corr[study.KEY].itertuples(index=False)
            if k[2] == "full" and k[3] in ("-", max(float(e) for e in cfg.measure.epsilons))]
    fig = figures.measures_vs_gap(rows, keys=keys,
                                  title=f"Each measure against the gap: {cfg.model.network} on {dataset}")
    note = ("Kendall's tau-b over every minimiser (all batch sizes and trials) of each measure with "
            "the accuracy gap (training minus test accuracy), the loss gap (test minus training "
            "loss) and the batch size, p-values beside; `largest_sharper`: in how many trials the "
            "largest batch's value exceeds the smallest batch's.")
    return corr, ["## Which measure tracks the gap", note,
                  corr.to_markdown(index=False, floatfmt=".3g"),
                  figures.save(fig, run_dir, "measures_vs_gap", writer=writer,
                               caption="Every measure (full space, largest eps) at every minimiser "
                                       "against its accuracy gap, coloured by batch size.")]


def _sweep_table(accuracy: pd.DataFrame, sharp: pd.DataFrame) -> str:
    """One row per batch size: accuracies and the mean sharpness per (space, eps)."""
    table = accuracy.copy()
    for c in ("train_acc", "test_acc", "test_acc_std"):
        table[c] = 100 * table[c]
    if len(sharp):
        table = table.merge(report.sharpness_columns(sharp, "batch_size"), left_on="batch_size",
                            right_index=True, how="left")
    return table.to_markdown(index=False, floatfmt=".4g")
