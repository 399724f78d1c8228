"""Remedies for the generalisation gap on one network: SB, LB, and LB with each remedy, over
trials, with test accuracy, generalisation gap, sharpness and the weights' diffusion.

Regimes (--remedies picks among the LB+ ones; their settings are lbtf.remedies.REGIMES):
- SB, LB: plain Adam at --sb_batch_size / --lb_batch_size, every remedy off;
- LB+ghost: Hoffer et al.: ghost BN (--ghost_batch_size), sqrt learning-rate scaling and regime
  adaptation relative to --lr_reference_batch, gradients clipped to --clip_norm if set;
- LB+augment: Appendix E augmentation (image data only);
- LB+conservative: Appendix E proximal subproblems (--conservative_lambda, default 1e-3);
- LB+adversarial: FGSM adversarial training (--fgsm_epsilon, default 0.01);
- LB+sam: Sharpness-Aware Minimization (--sam_rho, default 0.05).

Paper artifact -> flags/remedies_<net>.flags -> this module -> lbtf.train (remedies in TrainConfig),
lbtf.sharpness, lbtf.remedies.diffusion_fit.
"""

from __future__ import annotations

import pandas as pd

from lbtf import figures, report
from lbtf.experiments import prepare, rundir, sharding, sharpness, training
from lbtf.experiments.config import Config, override
from lbtf.remedies import OFF, REGIMES, diffusion_fit


def regimes(cfg: Config, image_data: bool, log=print) -> dict[str, dict]:
    """Regime name -> the configuration fields it sets (lbtf.remedies.OFF and REGIMES)."""
    diffusion = {"diffusion_every": cfg.remedies.diffusion_every or 10}
    chosen = {"SB": {**OFF, **diffusion}, "LB": {**OFF, **diffusion}}
    for name in cfg.experiment.remedies:
        if name == "augment" and not image_data:
            log("remedies: skipping LB+augment, the data are not images")
            continue
        chosen[f"LB+{name}"] = {**OFF, **diffusion, **REGIMES[name](cfg.remedies)}
    return chosen


def run(cfg: Config, log=print):
    data, strategy, batches = prepare.prepare(
        cfg, {"SB": cfg.training.sb_batch_size, "LB": cfg.training.lb_batch_size},
        bn_layers={"SB": ("standard",), "LB": ("standard", "ghost")})
    options = regimes(cfg, len(data.input_shape) == 3, log)
    sizes = {name: batches["SB" if name == "SB" else "LB"] for name in options}
    run_dir = rundir.start_run(cfg, "remedies", strategy)
    log(f"remedies: {cfg.model.network} on {data.name}, regimes {', '.join(options)}, "
        f"{cfg.training.trials} trial(s); writing {run_dir}")
    trained = training.train_regimes(
        cfg, data=data, strategy=strategy, batches=sizes, run_dir=run_dir, log=log,
        regimes={name: override(cfg, changes) for name, changes in options.items()})
    all_runs, trained = trained, training.without_diverged(trained, log)
    found = pd.DataFrame(columns=["regime", "measure", "space", "epsilon", "value"])
    if cfg.measure.sharpness and not trained.empty:
        log("measuring the sharpness of every minimiser")
        found = sharpness.measure_minimizers(
            cfg, data, [{"trial": r.trial, "regime": r.regime,
                           "checkpoint": r.checkpoint}
                          for r in trained.itertuples()],
            strategy=strategy, log=log, cache_dir=run_dir / "measurements")
    if cfg.run.shard:
        return sharding.done(cfg.run.shard, run_dir, len(all_runs), log)
    summary = summarize(all_runs, sharpness.primary_sharpness(found, cfg.measure.bn_measure))
    _write(cfg, data, strategy, run_dir, all_runs, trained, found, summary, options, log)
    return run_dir


def summarize(trained: pd.DataFrame, sharp: pd.DataFrame) -> pd.DataFrame:
    """One row per regime: accuracies, gap, sharpness per (space, eps) and diffusion slope, as
    'mean ± std' strings over the trials that did not diverge, and how many did."""
    rows = []
    for regime, everything in trained.groupby("regime", sort=False):
        g = everything[everything.stop_reason != "diverged"]
        row = {"regime": regime, "batch": int(everything.batch_size.iloc[0]),
               "lr": f"{everything.learning_rate.iloc[0]:.3g}",
               "diverged": f"{len(everything) - len(g)}/{len(everything)}"}
        rows.append(row)
        if g.empty:
            continue
        row["epochs"] = f"{g.epochs.mean():.0f}"
        for name, values in (("test acc", 100 * g.test_acc), ("train acc", 100 * g.train_acc),
                             ("gap", 100 * (g.train_acc - g.test_acc))):
            row[name] = report.fmt(*report.mean_std(values))
        if "regime" in sharp and len(sharp):
            for (space, eps), h in sharp[sharp.regime == regime].groupby(["space", "epsilon"]):
                row[f"sharpness {space} ε={eps:g}"] = report.fmt(*report.mean_std(h.value))
        slopes = [diffusion_fit(*zip(*d, strict=True))["slope"] for d in g.diffusion if len(d) > 1]
        if slopes:
            row["diffusion slope"] = report.fmt(*report.mean_std(pd.Series(slopes)), digits=3)
    return pd.DataFrame(rows).fillna("–")


def _write(cfg: Config, data, strategy, run_dir, all_runs, trained, found, summary, options,
           log) -> None:
    """report.md, figures and results.json; `trained` are those of `all_runs` that did not diverge."""
    writer = rundir.summary_writer(run_dir, "figures")
    caption = (f"Test accuracy (above) and full-space sharpness ({cfg.measure.bn_measure[0]} BN, below) "
               "per regime, mean and standard deviation over trials.")
    sharp = sharpness.primary_sharpness(found, cfg.measure.bn_measure)
    fig = figures.remedies(trained, sharp, title=f"Remedies: {cfg.model.network} on {data.name}")
    diffusion = trained[trained.trial == 0][["regime", "diffusion"]]
    fig2 = figures.diffusion(diffusion, title=f"Ultra-slow diffusion: {cfg.model.network}, trial 0")
    table = summary.to_markdown(index=False)
    text = "\n\n".join([
        f"# Remedies for the generalisation gap: {cfg.model.network} on {data.name}",
        "Accuracy and gap (train − test) in percent; sharpness is Metric 2.1 of the final weights; "
        "the diffusion slope a fits ‖w_t − w_0‖ = a log t + b (Hoffer et al.). Mean ± std over "
        f"{cfg.training.trials} trial(s). Regime settings: "
        + "; ".join(f"{k}: {', '.join(f'{n}={v}' for n, v in o.items() if OFF.get(n) != v)}"
                    for k, o in options.items()) + ".",
        table,
        figures.save(fig, run_dir, "remedies", caption=caption, writer=writer),
        figures.save(fig2, run_dir, "diffusion", writer=writer,
                     caption="‖w_t − w_0‖ against training steps (log scale), trial 0."),
        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "remedies", "network": cfg.model.network, "dataset": data.name,
               "environment": rundir.environment(strategy),
               "measurement": sharpness.measurement_record(cfg), "regimes": options,
               "summary": summary.to_dict(orient="records"),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": training.diverged_names(all_runs),
               "measurements": found.to_dict(orient="records")}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{table}\n\nreport: {run_dir / 'report.md'}")
