"""Table 2 of Keskar et al.: SB (256) and LB (10% of the training set) Adam, over trials.

Also the training curves (Figure 2), the parametric plots of one trial (Figures 3 and 7) and the
distances from the starting point.

Paper artifact -> flags/table{2,3,4}_<net>.flags -> this module -> lbtf.train.fit,
lbtf.sharpness, lbtf.landscape (through experiments.sharpness and experiments.parametric).
"""

from __future__ import annotations

import time

import pandas as pd

from lbtf import figures, report
from lbtf.errors import UsageError
from lbtf.experiments import parametric, prepare, rundir, sharding, sharpness, training
from lbtf.experiments.config import Config
from lbtf.runs import read_path


def run(cfg: Config, log=print):
    started = time.perf_counter()
    if cfg.landscape.parametric and cfg.landscape.parametric_trial >= cfg.training.trials:
        raise UsageError(f"--parametric_trial={cfg.landscape.parametric_trial} needs at least "
                         f"{cfg.landscape.parametric_trial + 1} --trials (trials count from 0)")
    data, strategy, batches = prepare.prepare(
        cfg, {"SB": cfg.training.sb_batch_size, "LB": cfg.training.lb_batch_size})
    run_dir = rundir.start_run(cfg, "table2", strategy)
    log(f"table2: {cfg.model.network} ({cfg.model.arch_variant}) on {data.name}, "
        f"{data.num_train} training examples, SB={batches['SB']} LB={batches['LB']}, "
        f"{cfg.training.trials} trials, {strategy.num_replicas_in_sync} replica(s); writing {run_dir}")
    trained = training.train_regimes(cfg, data=data, strategy=strategy, batches=batches,
                                     run_dir=run_dir, log=log)
    all_runs, trained = trained, training.without_diverged(trained, log)
    rescaled: list[dict] = []
    found = _measure(cfg, data, trained, strategy=strategy, run_dir=run_dir, log=log,
                     rescaled=rescaled)
    if cfg.run.shard:
        return sharding.done(cfg.run.shard, run_dir, len(all_runs), log)
    summary = report.accuracy_summary(trained)
    table = report.table2_markdown(summary, network=cfg.model.network, dataset=data.name)
    summaries, details = sharpness_sections(found, cfg, data.name) if found is not None else ([], [])
    if rescaled:
        summaries += ["## Reparametrisation check", report.rescale_markdown(
            found, pd.DataFrame(rescaled), factor=cfg.measure.rescale_check)]
    dist = parametric.distances(cfg, data, trained)
    writer = rundir.summary_writer(run_dir, "figures")
    history = pd.read_csv(read_path(run_dir / "history.csv"))
    plots = parametric.training_curves_figure(history, cfg=cfg, dataset=data.name,
                                              run_dir=run_dir, writer=writer)
    tables = parametric.parametric_tables(cfg, data, trained, log=log)
    plots += parametric.parametric_figures(tables, cfg=cfg, dataset=data.name,
                                           run_dir=run_dir, writer=writer)
    plots += convergence_figures(found, cfg=cfg, dataset=data.name, run_dir=run_dir, writer=writer)
    distance = ["## Distance from the starting point", report.distance_markdown(dist)]
    text = "\n\n".join([
        f"# Table 2: SB vs LB Adam, {cfg.model.network} on {data.name}", header(cfg, data, batches),
        table, *summaries, *distance, *plots, *details, "## Runs", report.runs_markdown(all_runs),
        "Per-epoch curves: `history.csv`; TensorBoard: `tensorboard --logdir "
        f"{run_dir / 'tb'}`; weights of every epoch: `checkpoints/`."])
    results = {"experiment": "table2", "seconds": time.perf_counter() - started,
               "network": cfg.model.network, "variant": cfg.model.arch_variant,
               "dataset": data.name, "num_train": data.num_train, "batch_sizes": batches,
               "environment": rundir.environment(strategy),
               "summary": summary.to_dict(orient="records"),
               "paper": report.PAPER_TABLE2.get(cfg.model.network),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": training.diverged_names(all_runs),
               "measurements": [] if found is None else found.to_dict(orient="records"),
               "lb_sharper": ([] if found is None or found.empty
                              else report.every_measure_counts(found).to_dict(orient="records")),
               "distances": dist.to_dict(orient="records"),
               "parametric": {p: t.to_dict(orient="records") for p, t in tables.items()},
               "measurement": sharpness.measurement_record(cfg),
               "rescaled_measurements": rescaled}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log("\n" + "\n\n".join([table, *summaries, *distance]) +
        f"\n\nreport: {run_dir / 'report.md'}")
    return run_dir


def _measure(cfg: Config, data, trained: pd.DataFrame, *, strategy, run_dir, log,
             rescaled: list | None = None) -> pd.DataFrame | None:
    """Tables 3 and 4: every run's measured point, under every --measure_bn mode (None: off)."""
    if not cfg.measure.sharpness or trained.empty:
        return None
    log("measuring the sharpness of every minimiser (Tables 3 and 4)")
    minimizers = [{"trial": r.trial, "regime": r.regime, "checkpoint": r.checkpoint}
                  for r in trained.itertuples()]
    return sharpness.measure_minimizers(cfg, data, minimizers, strategy=strategy, log=log,
                                        cache_dir=run_dir / "measurements", rescaled=rescaled)


def convergence_figures(found, *, cfg: Config, dataset: str, run_dir, writer) -> list[str]:
    """Metric 2.1 (full space) against L-BFGS-B iteration, SB and LB, one figure per BN mode."""
    if found is None or found.empty or "trace" not in found:
        return []
    out = []
    for mode in cfg.measure.bn_measure:
        rows = found[(found.measure == "sharpness") & (found.space == "full") & (found.bn == mode)]
        if rows.empty:
            continue
        fig = figures.convergence(rows, title=f"Metric 2.1 against iteration: {cfg.model.network} "
                                  f"on {dataset}, {mode} BN")
        out += [f"## Does the maximisation converge? ({mode} BN)",
                figures.save(fig, run_dir, f"convergence_{mode}bn", writer=writer,
                             caption=f"Full-space Metric 2.1 after each of the "
                             f"{cfg.measure.sharpness_maxiter} L-BFGS-B iterations of the run from "
                             "y = 0, every minimiser (SB blue, LB red): a curve still rising at "
                             "its last iteration had not converged.")]
    return out


def header(cfg: Config, data, batches: dict[str, int]) -> str:
    """The report's opening paragraph: data, batches (and why their ratio matters), stopping."""
    return (
        f"Network {cfg.model.network} ({cfg.model.arch_variant} variant), {data.num_train} training and "
        f"{len(data.y_test)} test examples; SB batch {batches['SB']}, LB batch {batches['LB']} "
        f"(LB/SB = {batches['LB'] / batches['SB']:.1f}; the paper's 256 against 10% of MNIST or "
        "CIFAR gives 20-23, and a ratio near 1 shows no gap); "
        f"Adam lr {cfg.training.learning_rate}; {cfg.training.trials} trials; each run trained until the "
        f"training loss stopped improving by {cfg.training.min_delta} for {cfg.training.patience} epochs "
        f"(at most {cfg.training.max_epochs}). Every number describes a run at its measured point, "
        f"{sharpness.point_note(cfg)} (`measured_epoch` in the runs table). Accuracy in "
        f"percent, mean ± std over trials. The paper row is for "
        f"{report.PAPER_DATASET_NOTE.get(cfg.model.network, 'its own dataset')}.")


def measurement_note(cfg: Config) -> str:
    """How every sharpness number of a run was measured, for the report."""
    modes = {"moving": "**moving BN**: inference mode, BN normalising with the moving statistics "
                       "as training left them (re-estimated from training data, --bn_eval)",
             "batch": f"**batch-statistics BN**: every chunk of {cfg.measure.bn_measure_chunk} training "
                      "examples normalised with its own statistics, dropout off (Keras 1's BN "
                      "mode 2, which the authors' code used)"}
    starts = (f" plus {cfg.measure.sharpness_starts - 1} seeded random starts in the box, the largest f "
              "kept" if cfg.measure.sharpness_starts > 1 else "")
    return (f"Metric 2.1 at each run's measured point ({sharpness.point_note(cfg)}): "
            f"{cfg.measure.sharpness_maxiter} L-BFGS-B iterations from y = 0{starts}; f is the mean "
            f"training loss, {parametric.loss_note(cfg.measure.loss_clip)}. "
            + "; ".join(modes[m] for m in cfg.measure.bn_measure) +
            ". Cells: mean ± std over trials, then median and min–max. Every measurement with its "
            "optimiser status and L-BFGS-B path is in results.json and below.")


def sharpness_sections(found, cfg, dataset: str) -> tuple[list[str], list[str]]:
    """Report sections: the summaries (Tables 3 and 4 per BN mode, how often LB is sharper, the
    Hessian cross-check), also printed at the end of the run, and the details."""
    if found.empty:
        return ["## Tables 3 and 4", "Nothing measured: every run diverged."], []
    out = ["## Table 3: sharpness in full space", measurement_note(cfg),
           report.sharpness_markdown(found, space="full", network=cfg.model.network, dataset=dataset)]
    if cfg.measure.subspace_dim:
        out += [f"## Table 4: sharpness in random subspaces of dimension {cfg.measure.subspace_dim}",
                report.sharpness_markdown(found, space="subspace", network=cfg.model.network,
                                          dataset=dataset)]
    out += ["## LB against SB, trial by trial", "In how many trials the LB minimiser is sharper "
            "than the SB minimiser of the same trial (a larger value of each measure; for "
            "pacbayes, 1 / sigma'^2), and the median ratio LB / SB, for every measure of "
            "--measures: sharpness is Metric 2.1, adaptive its box eps |x_i|, average the "
            "expected rise under noise sigma |x_i|, hessian the top eigenvalue, trace "
            "Hutchinson's.",
            report.every_measure_counts(found).to_markdown(index=False, floatfmt=".4g")]
    if cfg.measure.hessian_k:
        out += ["## Curvature cross-check", report.eigenvalue_markdown(found)]
    return out, ["## Measurements", report.measurements_markdown(found)]
