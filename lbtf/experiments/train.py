"""One batch size (--batch_size) over --trials: the building block of every sweep."""

from __future__ import annotations

from lbtf import report
from lbtf.experiments import common


def run(flags, log=print):
    data, strategy, batches = common.prepare(flags, {"B": flags.batch_size})
    regime = f"B{batches['B']}"
    batches = {regime: batches["B"]}
    run_dir = common.start_run(flags, "train", strategy)
    log(f"train: {flags.network} on {data.name}, batch {batches[regime]}, {flags.trials} "
        f"trials; writing {run_dir}")
    trained = common.train_regimes(flags, data=data, strategy=strategy, batches=batches,
                                run_dir=run_dir, log=log)
    all_runs, trained = trained, common.without_diverged(trained, log)
    summary = report.accuracy_summary(trained)
    text = "\n\n".join([f"# {flags.network} on {data.name}, batch {batches[regime]}",
                        summary.to_markdown(index=False, floatfmt=".2f"),
                        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "train", "network": flags.network, "variant": flags.arch_variant,
               "dataset": data.name, "batch_size": batches[regime],
               "environment": common.environment(strategy),
               "summary": summary.to_dict(orient="records"),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": common.diverged_names(all_runs)}
    common.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{text}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
