"""Figure 6 of Keskar et al.: sharpness of the iterates of SB and LB runs against their training
cross-entropy, from the starting point to the minimiser.

Paper artifact -> flags/figure6_<net>.flags -> this module -> lbtf.train.fit, lbtf.sharpness.
Keeps the weights of every --trajectory_stride-th epoch (or of every --checkpoint_every-th, when
that is set and divides the stride).
"""

from __future__ import annotations

from lbtf import figures, report
from lbtf.checkpoints import kept_weights
from lbtf.experiments import common, sharpness


def iterates(checkpoint_dir: str, stride: int) -> list[tuple[int, str]]:
    """(epoch, checkpoint) of every kept epoch that is a multiple of `stride`, and the last."""
    found = list(kept_weights(checkpoint_dir).items())
    return [(e, p) for i, (e, p) in enumerate(found) if e % stride == 0 or i == len(found) - 1]


def run(flags, log=print):
    data, strategy, batches = common.prepare(
        flags, {"SB": flags.sb_batch_size, "LB": flags.lb_batch_size})
    run_dir = common.start_run(flags, "trajectory", strategy)
    log(f"trajectory: {flags.network} on {data.name}, SB={batches['SB']} LB={batches['LB']}, "
        f"{flags.trials} trial(s), sharpness every {flags.trajectory_stride} epoch(s); "
        f"writing {run_dir}")
    every = flags.checkpoint_every
    trained = common.train_regimes(
        flags, data=data, strategy=strategy, batches=batches, run_dir=run_dir, log=log,
        checkpoint_every=every if every and flags.trajectory_stride % every == 0
        else flags.trajectory_stride)
    all_runs, trained = trained, common.without_diverged(trained, log)
    minimizers = [{"trial": r.trial, "regime": r.regime, "epoch": epoch, "checkpoint": ckpt}
                  for r in trained.itertuples()
                  for epoch, ckpt in iterates(r.checkpoint_dir, flags.trajectory_stride)]
    log(f"measuring the sharpness of {len(minimizers)} iterates")
    found = sharpness.measure_minimizers(flags, data, minimizers, strategy=strategy, log=log,
                                         cache_dir=run_dir / "measurements")
    sharp = common.primary_sharpness(found, flags.measure_bn).rename(columns={"f_x": "train_loss"})
    writer = common.summary_writer(run_dir, "figures")
    sections = []
    for trial, g in sharp.groupby("trial"):
        fig = figures.sharpness_vs_loss(
            g, title=f"Figure 6: {flags.network} on {data.name}, trial {trial}")
        caption = (f"Figure 6, trial {trial}: sharpness ({flags.measure_bn[0]} BN) of SB and LB "
                   "iterates against their training cross-entropy (the loss falls from left to "
                   "right).")
        sections.append(figures.save(fig, run_dir, f"figure6_sharpness_vs_loss_trial{trial}",
                                     caption=caption, writer=writer))
    table = (sharp[["trial", "regime", "epoch", "train_loss", "space", "epsilon", "value"]]
             .to_markdown(index=False, floatfmt=".4g"))
    text = "\n\n".join([
        f"# Figure 6: sharpness against cross-entropy, {flags.network} on {data.name}",
        f"SB batch {batches['SB']}, LB batch {batches['LB']}; sharpness (Metric 2.1, "
        f"{flags.sharpness_maxiter} L-BFGS-B iterations) of every {flags.trajectory_stride}-th "
        "epoch's iterate and the last; the cross-entropy is f at the iterate (the training "
        "function the sharpness is measured on).", *sections, "## Measurements", table,
        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "trajectory", "network": flags.network, "dataset": data.name,
               "batch_sizes": batches, "environment": common.environment(strategy),
               "measurement": common.measurement_record(flags),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": common.diverged_names(all_runs),
               "measurements": found.to_dict(orient="records")}
    common.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{table}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
