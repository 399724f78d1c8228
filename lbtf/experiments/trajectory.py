"""Figure 6 of Keskar et al.: sharpness of the iterates of SB and LB runs against their training
cross-entropy, from the starting point to the minimiser.

Paper artifact -> flags/figure6_<net>.flags -> this module -> lbtf.train.fit, lbtf.sharpness.
Keeps the weights of every --trajectory_stride-th epoch (or of every --checkpoint_every-th, when
that is set and divides the stride).
"""

from __future__ import annotations

from lbtf import figures, report
from lbtf.checkpoints import kept_weights
from lbtf.experiments import prepare, rundir, sharpness, training
from lbtf.experiments.config import Config


def iterates(checkpoint_dir: str, stride: int) -> list[tuple[int, str]]:
    """(epoch, checkpoint) of every kept epoch that is a multiple of `stride`, and the last."""
    found = list(kept_weights(checkpoint_dir).items())
    return [(e, p) for i, (e, p) in enumerate(found) if e % stride == 0 or i == len(found) - 1]


def run(cfg: Config, log=print):
    data, strategy, batches = prepare.prepare(
        cfg, {"SB": cfg.training.sb_batch_size, "LB": cfg.training.lb_batch_size})
    run_dir = rundir.start_run(cfg, "trajectory", strategy)
    stride = cfg.experiment.trajectory_stride
    log(f"trajectory: {cfg.model.network} on {data.name}, SB={batches['SB']} LB={batches['LB']}, "
        f"{cfg.training.trials} trial(s), sharpness every {stride} epoch(s); "
        f"writing {run_dir}")
    every = cfg.training.checkpoint_every
    trained = training.train_regimes(
        cfg, data=data, strategy=strategy, batches=batches, run_dir=run_dir, log=log,
        checkpoint_every=every if every and stride % every == 0 else stride)
    all_runs, trained = trained, training.without_diverged(trained, log)
    minimizers = [{"trial": r.trial, "regime": r.regime, "epoch": epoch, "checkpoint": ckpt}
                  for r in trained.itertuples()
                  for epoch, ckpt in iterates(r.checkpoint_dir, stride)]
    log(f"measuring the sharpness of {len(minimizers)} iterates")
    found = sharpness.measure_minimizers(cfg, data, minimizers, strategy=strategy, log=log,
                                         cache_dir=run_dir / "measurements")
    sharp = (sharpness.primary_sharpness(found, cfg.measure.bn_measure)
             .rename(columns={"f_x": "train_loss"}))
    writer = rundir.summary_writer(run_dir, "figures")
    sections = []
    for trial, g in sharp.groupby("trial"):
        fig = figures.sharpness_vs_loss(
            g, title=f"Figure 6: {cfg.model.network} on {data.name}, trial {trial}")
        caption = (f"Figure 6, trial {trial}: sharpness ({cfg.measure.bn_measure[0]} BN) of SB "
                   "and LB iterates against their training cross-entropy (the loss falls from left to "
                   "right).")
        sections.append(figures.save(fig, run_dir, f"figure6_sharpness_vs_loss_trial{trial}",
                                     caption=caption, writer=writer))
    table = (sharp[["trial", "regime", "epoch", "train_loss", "space", "epsilon", "value"]]
             .to_markdown(index=False, floatfmt=".4g"))
    text = "\n\n".join([
        f"# Figure 6: sharpness against cross-entropy, {cfg.model.network} on {data.name}",
        f"SB batch {batches['SB']}, LB batch {batches['LB']}; sharpness (Metric 2.1, "
        f"{cfg.measure.sharpness_maxiter} L-BFGS-B iterations) of every {stride}-th epoch's "
        "iterate and the last; the cross-entropy is f at the iterate (the training "
        "function the sharpness is measured on).", *sections, "## Measurements", table,
        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "trajectory", "network": cfg.model.network, "dataset": data.name,
               "batch_sizes": batches, "environment": rundir.environment(strategy),
               "measurement": sharpness.measurement_record(cfg),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": training.diverged_names(all_runs),
               "measurements": found.to_dict(orient="records")}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{table}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
