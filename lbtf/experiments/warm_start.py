"""Figure 5 of Keskar et al.: LB runs warm-started from the iterates of an SB run.

SB trains for --warm_start_epochs epochs, keeping the iterates LB starts from: from every
--warm_start_stride-th iterate (epoch 0 is the common starting point, i.e. plain LB) an LB run
trains with fresh Adam state until its loss stops improving (or --max_epochs). Restartable with
--run_name: the SB run, every finished piggyback run and every finished sharpness measurement are
skipped.

Paper artifact -> flags/figure5_<net>.flags -> this module -> lbtf.train.fit, lbtf.sharpness.
"""

from __future__ import annotations

import pandas as pd

from lbtf import figures, report
from lbtf.checkpoints import checkpoint_at, load_weights, remove_resume
from lbtf.experiments import prepare, rundir, sharpness, training
from lbtf.experiments.config import Config


def _train_sb(trainer, start, *, cfg: Config, run_dir, log) -> dict:
    """The SB run, with the test accuracy of its starting point as epoch 0 of its history."""
    trainer.reset(start)
    first = {"epoch": 0, **trainer.measure()}
    record = training.train_once(trainer, name="SB", run_dir=run_dir, seed=cfg.training.seed,
                                 log=log, hparams={"regime": "SB", "network": cfg.model.network},
                                 label=f"[SB B={trainer.config.batch_size}]")
    record["history"] = [first, *record["history"]]
    return record


def _train_piggyback(trainer, checkpoint: str, *, name: str, cfg, run_dir, log) -> dict:
    """An LB run from an SB iterate: its weights and BN statistics, a fresh Adam state."""
    load_weights(trainer.model, checkpoint, cfg.model.network)
    trainer.reset([v.numpy() for v in trainer.model.variables])
    return training.train_once(trainer, name=name, run_dir=run_dir, seed=cfg.training.seed,
                               log=log, hparams={"regime": "LB", "network": cfg.model.network,
                                                 "start": name},
                               label=f"[{name} B={trainer.config.batch_size}]")


def run(cfg: Config, log=print):
    data, strategy, batches = prepare.prepare(
        cfg, {"SB": cfg.training.sb_batch_size, "LB": cfg.training.lb_batch_size})
    run_dir = rundir.start_run(cfg, "warm_start", strategy)
    k, stride = cfg.experiment.warm_start_epochs, cfg.experiment.warm_start_stride
    log(f"warm_start: {cfg.model.network} on {data.name}, SB={batches['SB']} for {k} epochs, LB="
        f"{batches['LB']} from every {stride}-th SB iterate; writing {run_dir}")
    # The SB run never stops early; it keeps the iterates the LB runs start from.
    sb = training.make_trainer(cfg, data, strategy, batches["SB"], max_epochs=k, patience=k + 1,
                               checkpoint_every=stride)
    start = None
    if not (run_dir / "runs" / "SB.json").is_file():
        start = training.initial_variables(training.model_builder(cfg, data), cfg.training.seed)
    sb_record = rundir.cached(run_dir / "runs" / "SB.json", lambda: _train_sb(
        sb, start, cfg=cfg, run_dir=run_dir, log=log), log=log)
    remove_resume(sb_record["checkpoint_dir"])
    sb_history = pd.DataFrame(sb_record["history"])
    lb = training.make_trainer(cfg, data, strategy, batches["LB"])
    rows = []
    # A diverged SB run has no checkpoint of its last (non-finite) iterate.
    last = int(sb_history.epoch.iloc[-1]) + (sb_record["stop_reason"] != "diverged")
    for epoch in range(0, last, stride):
        name = f"LB_from_SB{epoch}"
        ckpt = checkpoint_at(sb_record["checkpoint_dir"], epoch)
        record = rundir.cached(run_dir / "runs" / f"{name}.json", lambda ckpt=ckpt, name=name:
                               _train_piggyback(lb, ckpt, name=name, cfg=cfg,
                                                run_dir=run_dir, log=log), log=log)
        remove_resume(record["checkpoint_dir"])
        point = training.at_point(record, cfg.measure.measure_point, cfg.measure.measure_at_loss)
        rows.append({"sb_epoch": epoch, "sb_test_acc": sb_history.test_acc[epoch],
                     "lb_test_acc": point["test_acc"], "lb_train_acc": point["train_acc"],
                     "lb_epochs": record["epochs"], "lb_measured_epoch": point["measured_epoch"],
                     "lb_stop_reason": record["stop_reason"], "checkpoint": point["checkpoint"]})
    table = pd.DataFrame(rows)
    found = pd.DataFrame(columns=["sb_epoch", "space", "epsilon", "value", "measure"])
    if cfg.measure.sharpness:
        log("measuring the sharpness of every piggybacked LB solution")
        found = sharpness.measure_minimizers(
            cfg, data, [{"sb_epoch": r.sb_epoch, "checkpoint": r.checkpoint}
                        for r in table.itertuples() if r.lb_stop_reason != "diverged"],
            strategy=strategy, log=log, cache_dir=run_dir / "measurements")
    _write(cfg, data, strategy, run_dir, table, found, sb_history, log)
    return run_dir


def _write(cfg: Config, data, strategy, run_dir, table, found, sb_history, log) -> None:
    sharp = sharpness.primary_sharpness(found, cfg.measure.bn_measure)
    writer = rundir.summary_writer(run_dir, "figures")
    fig = figures.warm_start(table, sharp, title=f"Figure 5: {cfg.model.network} on {data.name}")
    caption = ("Figure 5: above, test accuracy of the SB iterates (blue) and of the LB runs "
               f"warm-started from them (red); below, the sharpness ({cfg.measure.bn_measure[0]} "
               "BN) of the LB solutions; against the epoch of SB training.")
    shown = table.drop(columns="checkpoint")
    if len(sharp):
        shown = shown.merge(report.sharpness_columns(sharp, "sb_epoch"), left_on="sb_epoch",
                            right_index=True, how="left")
    text = "\n\n".join([
        f"# Figure 5: warm-started LB runs, {cfg.model.network} on {data.name}",
        f"SB trained {int(sb_history.epoch.iloc[-1])} epochs; an LB run (at most {cfg.training.max_epochs} "
        f"epochs, patience {cfg.training.patience}) from every {cfg.experiment.warm_start_stride}-th "
        "SB iterate; epoch 0 is the shared starting point, so its row is plain LB.",
        figures.save(fig, run_dir, "figure5_warm_start", caption=caption, writer=writer),
        shown.to_markdown(index=False, floatfmt=".4g")])
    results = {"experiment": "warm_start", "network": cfg.model.network, "dataset": data.name,
               "environment": rundir.environment(strategy),
               "measurement": sharpness.measurement_record(cfg),
               "sb_history": sb_history.to_dict(orient="records"),
               "piggyback": table.to_dict(orient="records"),
               "measurements": found.to_dict(orient="records")}
    rundir.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{shown.to_markdown(index=False, floatfmt='.4g')}\n\nreport: {run_dir / 'report.md'}")
