"""Table 2 of Keskar et al.: SB (256) and LB (10% of the training set) Adam, over trials.

Also the training curves (Figure 2), the parametric plots of one trial (Figures 3 and 7) and the
distances from the starting point.

Paper artifact -> flags/table{2,3,4}_<net>.flags -> this module -> lbtf.train.fit,
lbtf.sharpness, lbtf.landscape (through experiments.sharpness and experiments.parametric).
"""

from __future__ import annotations

import pandas as pd

from lbtf import report
from lbtf.errors import UsageError
from lbtf.experiments import common, parametric, sharpness
from lbtf.runs import read_path


def run(flags, log=print):
    if flags.parametric and flags.parametric_trial >= flags.trials:
        raise UsageError(f"--parametric_trial={flags.parametric_trial} needs at least "
                         f"{flags.parametric_trial + 1} --trials (trials count from 0)")
    data, strategy, batches = common.prepare(
        flags, {"SB": flags.sb_batch_size, "LB": flags.lb_batch_size})
    run_dir = common.start_run(flags, "table2", strategy)
    log(f"table2: {flags.network} ({flags.arch_variant}) on {data.name}, "
        f"{data.num_train} training examples, SB={batches['SB']} LB={batches['LB']}, "
        f"{flags.trials} trials, {strategy.num_replicas_in_sync} replica(s); writing {run_dir}")
    runs = common.train_regimes(flags, data=data, strategy=strategy, batches=batches,
                                run_dir=run_dir, log=log)
    all_runs, runs = runs, common.without_diverged(runs, log)
    summary = report.accuracy_summary(runs)
    table = report.table2_markdown(summary, network=flags.network, dataset=data.name)
    summaries, details, measurements = [], [], []
    if flags.sharpness:
        log("measuring the sharpness of every minimiser (Tables 3 and 4)")
        minimizers = [{"trial": r.trial, "regime": r.regime,
                       "checkpoint": parametric.checkpoint_at(r.checkpoint_dir)}
                      for r in runs.itertuples()]
        found = sharpness.measure_minimizers(flags, data, minimizers, strategy=strategy, log=log,
                                             cache_dir=run_dir / "measurements")
        measurements = found.to_dict(orient="records")
        summaries, details = sharpness_sections(found, flags, data.name)
    dist = parametric.distances(flags, data, runs)
    writer = common.summary_writer(run_dir, "figures")
    history = pd.read_csv(read_path(run_dir / "history.csv"))
    plots = parametric.training_curves_figure(history, flags=flags, dataset=data.name,
                                              run_dir=run_dir, writer=writer)
    tables = parametric.parametric_tables(flags, data, runs, log=log)
    plots += parametric.parametric_figures(tables, flags=flags, dataset=data.name,
                                           run_dir=run_dir, writer=writer)
    distance = ["## Distance from the starting point", report.distance_markdown(dist)]
    text = "\n\n".join([
        f"# Table 2: SB vs LB Adam, {flags.network} on {data.name}",
        f"Network {flags.network} ({flags.arch_variant} variant), {data.num_train} training and "
        f"{len(data.y_test)} test examples; SB batch {batches['SB']}, LB batch {batches['LB']}; "
        f"Adam lr {flags.learning_rate}; {flags.trials} trials; each run trained until the "
        f"training loss stopped improving by {flags.min_delta} for {flags.patience} epochs "
        f"(at most {flags.max_epochs}). Accuracy in percent, mean ± std over trials. The paper "
        f"row is for {report.PAPER_DATASET_NOTE.get(flags.network, 'its own dataset')}.",
        table, *summaries, *distance, *plots, *details, "## Runs", report.runs_markdown(all_runs),
        "Per-epoch curves: `history.csv`; TensorBoard: `tensorboard --logdir "
        f"{run_dir / 'tb'}`; weights of every epoch: `checkpoints/`."])
    results = {"experiment": "table2", "network": flags.network, "variant": flags.arch_variant,
               "dataset": data.name, "num_train": data.num_train, "batch_sizes": batches,
               "environment": common.environment(strategy),
               "summary": summary.to_dict(orient="records"),
               "paper": report.PAPER_TABLE2.get(flags.network),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": common.diverged_names(all_runs), "measurements": measurements,
               "distances": dist.to_dict(orient="records"),
               "parametric": {p: t.to_dict(orient="records") for p, t in tables.items()},
               "bn_stats": flags.bn_stats}
    common.write_results(run_dir, results, text + "\n")
    log("\n" + "\n\n".join([table, *summaries, *distance]) +
        f"\n\nreport: {run_dir / 'report.md'}")
    return run_dir


def sharpness_sections(found, flags, dataset: str) -> tuple[list[str], list[str]]:
    """Report sections: the summaries (Tables 3 and 4, the Hessian cross-check), also printed at
    the end of the run, and the details (every measurement)."""
    if found.empty:
        return ["## Tables 3 and 4", "Nothing measured: every run diverged."], []
    how = (f"Metric 2.1 of the final weights, {flags.sharpness_maxiter} L-BFGS-B iterations, f the "
           f"mean training loss over {found.num_examples.iloc[0]} training examples in inference "
           "mode; mean ± std over trials. Every measurement with its optimiser status is in "
           "results.json and below.")
    out = ["## Table 3: sharpness in full space", how,
           report.sharpness_markdown(found, space="full", network=flags.network, dataset=dataset)]
    if flags.subspace_dim:
        out += [f"## Table 4: sharpness in random subspaces of dimension {flags.subspace_dim}",
                report.sharpness_markdown(found, space="subspace", network=flags.network,
                                          dataset=dataset)]
    if flags.hessian_k:
        out += ["## Curvature cross-check", report.eigenvalue_markdown(found)]
    return out, ["## Measurements", report.measurements_markdown(found)]
