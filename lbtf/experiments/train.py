"""One batch size (--batch_size) over --trials: the building block of every sweep."""

from __future__ import annotations

from lbtf import report
from lbtf.experiments import prepare, rundir, sharding, training
from lbtf.experiments.config import Config


def run(cfg: Config, log=print):
    data, strategy, batches = prepare.prepare(cfg, {"B": cfg.training.batch_size})
    regime = f"B{batches['B']}"
    batches = {regime: batches["B"]}
    run_dir = rundir.start_run(cfg, "train", strategy)
    log(f"train: {cfg.model.network} on {data.name}, batch {batches[regime]}, "
        f"{cfg.training.trials} trials; writing {run_dir}")
    trained = training.train_regimes(cfg, data=data, strategy=strategy, batches=batches,
                                     run_dir=run_dir, log=log)
    if cfg.run.shard:
        return sharding.done(cfg.run.shard, run_dir, len(trained), log)
    all_runs, trained = trained, training.without_diverged(trained, log)
    summary = report.accuracy_summary(trained)
    text = "\n\n".join([f"# {cfg.model.network} on {data.name}, batch {batches[regime]}",
                        summary.to_markdown(index=False, floatfmt=".2f"),
                        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "train", "network": cfg.model.network,
               "variant": cfg.model.arch_variant,
               "dataset": data.name, "batch_size": batches[regime],
               "environment": rundir.environment(strategy),
               "summary": summary.to_dict(orient="records"),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": training.diverged_names(all_runs)}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{text}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
