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
from lbtf.experiments import common, sharpness


def _train_sb(trainer, start, *, flags, run_dir, log) -> dict:
    """The SB run, with the test accuracy of its starting point as epoch 0 of its history."""
    trainer.reset(start)
    first = {"epoch": 0, **trainer.measure()}
    record = common.train_once(trainer, name="SB", run_dir=run_dir, seed=flags.seed, log=log,
                               hparams={"regime": "SB", "network": flags.network},
                               label=f"[SB B={trainer.config.batch_size}]")
    record["history"] = [first, *record["history"]]
    return record


def _train_piggyback(trainer, checkpoint: str, *, name: str, flags, run_dir, log) -> dict:
    """An LB run from an SB iterate: its weights and BN statistics, a fresh Adam state."""
    load_weights(trainer.model, checkpoint, flags.network)
    trainer.reset([v.numpy() for v in trainer.model.variables])
    return common.train_once(trainer, name=name, run_dir=run_dir, seed=flags.seed, log=log,
                             hparams={"regime": "LB", "network": flags.network, "start": name},
                             label=f"[{name} B={trainer.config.batch_size}]")


def run(flags, log=print):
    data, strategy, batches = common.prepare(
        flags, {"SB": flags.sb_batch_size, "LB": flags.lb_batch_size})
    run_dir = common.start_run(flags, "warm_start", strategy)
    k = flags.warm_start_epochs
    log(f"warm_start: {flags.network} on {data.name}, SB={batches['SB']} for {k} epochs, LB="
        f"{batches['LB']} from every {flags.warm_start_stride}-th SB iterate; writing {run_dir}")
    # The SB run never stops early; it keeps the iterates the LB runs start from.
    sb = common.make_trainer(flags, data, strategy, batches["SB"], max_epochs=k, patience=k + 1,
                             checkpoint_every=flags.warm_start_stride)
    start = None
    if not (run_dir / "runs" / "SB.json").is_file():
        start = common.initial_variables(common.model_builder(flags, data), flags.seed)
    sb_record = common.cached(run_dir / "runs" / "SB.json", lambda: _train_sb(
        sb, start, flags=flags, run_dir=run_dir, log=log), log=log)
    remove_resume(sb_record["checkpoint_dir"])
    sb_history = pd.DataFrame(sb_record["history"])
    lb = common.make_trainer(flags, data, strategy, batches["LB"])
    rows = []
    # A diverged SB run has no checkpoint of its last (non-finite) iterate.
    last = len(sb_history) - (sb_record["stop_reason"] == "diverged")
    for epoch in range(0, last, flags.warm_start_stride):
        name = f"LB_from_SB{epoch}"
        ckpt = checkpoint_at(sb_record["checkpoint_dir"], epoch)
        record = common.cached(run_dir / "runs" / f"{name}.json", lambda ckpt=ckpt, name=name:
                               _train_piggyback(lb, ckpt, name=name, flags=flags,
                                                run_dir=run_dir, log=log), log=log)
        remove_resume(record["checkpoint_dir"])
        point = common.at_point(record, flags.measure_point)
        rows.append({"sb_epoch": epoch, "sb_test_acc": sb_history.test_acc[epoch],
                     "lb_test_acc": point["test_acc"], "lb_train_acc": point["train_acc"],
                     "lb_epochs": record["epochs"], "lb_measured_epoch": point["measured_epoch"],
                     "lb_stop_reason": record["stop_reason"], "checkpoint": point["checkpoint"]})
    table = pd.DataFrame(rows)
    found = pd.DataFrame(columns=["sb_epoch", "space", "epsilon", "value", "measure"])
    if flags.sharpness:
        log("measuring the sharpness of every piggybacked LB solution")
        found = sharpness.measure_minimizers(
            flags, data, [{"sb_epoch": r.sb_epoch, "checkpoint": r.checkpoint}
                          for r in table.itertuples() if r.lb_stop_reason != "diverged"],
            strategy=strategy, log=log, cache_dir=run_dir / "measurements")
    _write(flags, data, strategy, run_dir, table, found, sb_history, log)
    return run_dir


def _write(flags, data, strategy, run_dir, table, found, sb_history, log) -> None:
    sharp = common.primary_sharpness(found, flags.measure_bn)
    writer = common.summary_writer(run_dir, "figures")
    fig = figures.warm_start(table, sharp, title=f"Figure 5: {flags.network} on {data.name}")
    caption = ("Figure 5: above, test accuracy of the SB iterates (blue) and of the LB runs "
               f"warm-started from them (red); below, the sharpness ({flags.measure_bn[0]} BN) of "
               "the LB solutions; against the epoch of SB training.")
    shown = table.drop(columns="checkpoint")
    if len(sharp):
        shown = shown.merge(report.sharpness_columns(sharp, "sb_epoch"), left_on="sb_epoch",
                            right_index=True, how="left")
    text = "\n\n".join([
        f"# Figure 5: warm-started LB runs, {flags.network} on {data.name}",
        f"SB trained {len(sb_history) - 1} epochs; an LB run (at most {flags.max_epochs} epochs, "
        f"patience {flags.patience}) from every {flags.warm_start_stride}-th SB iterate; epoch 0 "
        "is the shared starting point, so its row is plain LB.",
        figures.save(fig, run_dir, "figure5_warm_start", caption=caption, writer=writer),
        shown.to_markdown(index=False, floatfmt=".4g")])
    results = {"experiment": "warm_start", "network": flags.network, "dataset": data.name,
               "environment": common.environment(strategy),
               "measurement": common.measurement_record(flags),
               "sb_history": sb_history.to_dict(orient="records"),
               "piggyback": table.to_dict(orient="records"),
               "measurements": found.to_dict(orient="records")}
    common.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{shown.to_markdown(index=False, floatfmt='.4g')}\n\nreport: {run_dir / 'report.md'}")
