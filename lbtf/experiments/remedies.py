"""Remedies for the generalisation gap on one network: SB, LB, and LB with each remedy, over
trials, with test accuracy, generalisation gap, sharpness and the weights' diffusion.

Regimes (--remedies picks among the last five):
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
from lbtf.experiments import common, sharpness
from lbtf.remedies import diffusion_fit

OFF = {"bn": "standard", "lr_scaling": "none", "regime_adaptation": False, "clip_norm": 0.0,
       "sam_rho": 0.0, "fgsm_epsilon": 0.0, "conservative_lambda": 0.0, "augment": False}


def regimes(flags, image_data: bool, log=print) -> dict[str, dict]:
    """Regime name -> flag overrides."""
    diffusion = {"diffusion_every": flags.diffusion_every or 10}
    chosen = {"SB": {**OFF, **diffusion}, "LB": {**OFF, **diffusion}}
    remedy = {
        "ghost": {"bn": "ghost", "lr_scaling": "sqrt", "regime_adaptation": True,
                  "clip_norm": flags.clip_norm},
        "augment": {"augment": True},
        "conservative": {"conservative_lambda": flags.conservative_lambda or 1e-3},
        "adversarial": {"fgsm_epsilon": flags.fgsm_epsilon or 0.01},
        "sam": {"sam_rho": flags.sam_rho or 0.05}}
    for name in flags.remedies:
        if name == "augment" and not image_data:
            log("remedies: skipping LB+augment, the data are not images")
            continue
        chosen[f"LB+{name}"] = {**OFF, **diffusion, **remedy[name]}
    return chosen


def run(flags, log=print):
    data, strategy, batches = common.prepare(
        flags, {"SB": flags.sb_batch_size, "LB": flags.lb_batch_size})
    options = regimes(flags, len(data.input_shape) == 3, log)
    sizes = {name: batches["SB" if name == "SB" else "LB"] for name in options}
    run_dir = common.start_run(flags, "remedies", strategy)
    log(f"remedies: {flags.network} on {data.name}, regimes {', '.join(options)}, "
        f"{flags.trials} trial(s); writing {run_dir}")
    trained = common.train_regimes(flags, data=data, strategy=strategy, batches=sizes,
                                run_dir=run_dir, log=log, overrides=options)
    all_runs, trained = trained, common.without_diverged(trained, log)
    found = pd.DataFrame(columns=["regime", "measure", "space", "epsilon", "value"])
    if flags.sharpness:
        log("measuring the sharpness of every minimiser")
        found = sharpness.measure_minimizers(
            flags, data, [{"trial": r.trial, "regime": r.regime,
                           "checkpoint": r.checkpoint}
                          for r in trained.itertuples()],
            strategy=strategy, log=log, cache_dir=run_dir / "measurements")
    summary = summarize(all_runs, common.primary_sharpness(found, flags.measure_bn))
    _write(flags, data, strategy, run_dir, all_runs, trained, found, summary, options, log)
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


def _write(flags, data, strategy, run_dir, all_runs, trained, found, summary, options,
           log) -> None:
    """report.md, figures and results.json; `trained` are those of `all_runs` that did not diverge."""
    writer = common.summary_writer(run_dir, "figures")
    caption = (f"Test accuracy (above) and full-space sharpness ({flags.measure_bn[0]} BN, below) "
               "per regime, mean and standard deviation over trials.")
    sharp = common.primary_sharpness(found, flags.measure_bn)
    fig = figures.remedies(trained, sharp, title=f"Remedies: {flags.network} on {data.name}")
    diffusion = trained[trained.trial == 0][["regime", "diffusion"]]
    fig2 = figures.diffusion(diffusion, title=f"Ultra-slow diffusion: {flags.network}, trial 0")
    table = summary.to_markdown(index=False)
    text = "\n\n".join([
        f"# Remedies for the generalisation gap: {flags.network} on {data.name}",
        "Accuracy and gap (train − test) in percent; sharpness is Metric 2.1 of the final weights; "
        "the diffusion slope a fits ‖w_t − w_0‖ = a log t + b (Hoffer et al.). Mean ± std over "
        f"{flags.trials} trial(s). Regime settings: "
        + "; ".join(f"{k}: {', '.join(f'{n}={v}' for n, v in o.items() if OFF.get(n) != v)}"
                    for k, o in options.items()) + ".",
        table,
        figures.save(fig, run_dir, "remedies", caption=caption, writer=writer),
        figures.save(fig2, run_dir, "diffusion", writer=writer,
                     caption="‖w_t − w_0‖ against training steps (log scale), trial 0."),
        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "remedies", "network": flags.network, "dataset": data.name,
               "environment": common.environment(strategy),
               "measurement": common.measurement_record(flags), "regimes": options,
               "summary": summary.to_dict(orient="records"),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": common.diverged_names(all_runs),
               "measurements": found.to_dict(orient="records")}
    common.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{table}\n\nreport: {run_dir / 'report.md'}")
