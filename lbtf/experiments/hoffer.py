"""Table 1 of Hoffer et al. (2017): SB, LB, and LB with the cumulative remedies +LR (learning rate
x sqrt(B / B_ref)), +GBN (and ghost batch normalisation) and +RA (and regime adaptation), each a
fixed-budget run over trials, with the weights' diffusion and, optionally, the sharpness of every
final point.

As the authors' code: every run trains its whole budget (no early stopping) and is measured at its
last epoch; evaluation uses the BN running statistics (re-estimating them would overwrite what
ghost BN accumulated); the optimizer, schedule and data pipeline come from the flags (see
flags/hoffer_<net>.flags).

Paper artifact -> flags/hoffer_<net>.flags -> this module -> lbtf.train (SGD, step schedules,
clipping), lbtf.layers.GhostBatchNormalization, lbtf.remedies.diffusion_fit.
"""

from __future__ import annotations

import time

import pandas as pd

from lbtf import figures, report
from lbtf.experiments import prepare, remedies, rundir, sharding, sharpness, training
from lbtf.experiments.config import Config, override

# Column -> (the batch it trains at, the configuration fields it sets); each column after LB adds
# one remedy to the one before it.
_PLAIN = {"lr_scaling": "none", "bn_layer": "standard", "regime_adaptation": False}
_LR = {**_PLAIN, "lr_scaling": "sqrt"}
_GBN = {**_LR, "bn_layer": "ghost"}
COLUMNS = {"SB": ("SB", _PLAIN), "LB": ("LB", _PLAIN), "+LR": ("LB", _LR),
           "+GBN": ("LB", _GBN), "+RA": ("LB", {**_GBN, "regime_adaptation": True})}


def authors_way(cfg: Config) -> Config:
    """The settings every column shares: the whole budget (patience beyond it, also after regime
    adaptation), the last epoch measured, BN running statistics for evaluation, the diffusion
    recorded."""
    return override(cfg, patience=cfg.training.max_epochs + 1, measure_point="last",
                    bn_eval="moving", diffusion_every=cfg.remedies.diffusion_every or 10)


def run(cfg: Config, log=print):
    started = time.perf_counter()
    data, strategy, batches = prepare.prepare(
        cfg, {"SB": cfg.training.sb_batch_size, "LB": cfg.training.lb_batch_size},
        bn_layers={"LB": ("standard", "ghost")})
    run_dir = rundir.start_run(cfg, "hoffer", strategy)
    base = authors_way(cfg)
    columns = {name: override(base, changes) for name, (_, changes) in COLUMNS.items()}
    sizes = {name: batches[batch] for name, (batch, _) in COLUMNS.items()}
    log(f"hoffer: {cfg.model.network} on {data.name}, {cfg.training.optimizer} lr "
        f"{cfg.training.learning_rate}, SB={batches['SB']} LB={batches['LB']}, "
        f"{cfg.training.max_epochs} epochs (x B / B_ref in +RA), {cfg.training.trials} trial(s); "
        f"evaluation with BN running statistics; writing {run_dir}")
    trained = training.train_regimes(base, data=data, strategy=strategy, batches=sizes,
                                     run_dir=run_dir, log=log, regimes=columns)
    all_runs, trained = trained, training.without_diverged(trained, log)
    found = pd.DataFrame(columns=["regime", "measure", "space", "epsilon", "value"])
    if cfg.measure.sharpness and not trained.empty:
        log("measuring the sharpness of every final point")
        found = sharpness.measure_minimizers(
            base, data, [{"trial": r.trial, "regime": r.regime, "checkpoint": r.checkpoint}
                         for r in trained.itertuples()],
            strategy=strategy, log=log, cache_dir=run_dir / "measurements")
    if cfg.run.shard:
        return sharding.done(cfg.run.shard, run_dir, len(all_runs), log)
    _write(base, data, strategy, run_dir, all_runs, trained, found, log,
           seconds=time.perf_counter() - started)
    return run_dir


def _write(cfg: Config, data, strategy, run_dir, all_runs, trained, found, log, *,
           seconds: float) -> None:
    """report.md, the diffusion figure and results.json."""
    primary = sharpness.primary_sharpness(found, cfg.measure.bn_measure)
    summary = remedies.summarize(all_runs, primary)
    table1 = report.hoffer_table_markdown(trained, network=cfg.model.network, dataset=data.name)
    writer = rundir.summary_writer(run_dir, "figures")
    curves = trained[trained.trial == trained.trial.min()][["regime", "diffusion"]]
    fig = figures.diffusion(curves, title=f"Ultra-slow diffusion: {cfg.model.network}")
    t, r = cfg.training, cfg.remedies
    text = "\n\n".join([
        f"# Table 1 of Hoffer et al.: {cfg.model.network} on {data.name}",
        f"Top-1 test accuracy (%) at the last epoch, mean ± std over {t.trials} trial(s). "
        f"{t.optimizer} (momentum {t.momentum}, weight decay {t.weight_decay}), lr "
        f"{t.learning_rate} with milestones {list(t.lr_milestones)}, {t.max_epochs} epochs; "
        f"gradients clipped at {r.clip_norm or 'no'} global norm; B_ref {r.lr_reference_batch}; "
        f"ghost batches of {cfg.model.ghost_batch_size}. Columns are cumulative. The paper's "
        "row is from the authors' NeurIPS 2017 poster, on the full dataset at LB 4096.",
        table1, "## Every column", summary.to_markdown(index=False),
        figures.save(fig, run_dir, "diffusion", writer=writer,
                     caption="‖w_t − w_0‖ against training steps (log scale), first trial."),
        "## Runs", report.runs_markdown(all_runs)])
    results = {"experiment": "hoffer", "seconds": seconds, "network": cfg.model.network,
               "dataset": data.name,
               "environment": rundir.environment(strategy),
               "measurement": sharpness.measurement_record(cfg),
               "columns": {name: changes for name, (_, changes) in COLUMNS.items()},
               "paper": report.PAPER_HOFFER_TABLE1.get(cfg.model.network),
               "summary": summary.to_dict(orient="records"),
               "runs": all_runs.to_dict(orient="records"),
               "diverged": training.diverged_names(all_runs),
               "measurements": found.to_dict(orient="records")}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{table1}\n\n{summary.to_markdown(index=False)}\n\nreport: {run_dir / 'report.md'}")
