"""Appendix C of Keskar et al.: the idealised performance model, as a calculator.

    python run_experiments.py --experiment=performance_model --sb_batch_size=256 \
        --lb_batch_size=6000 --perf_processors=8 --perf_sb_efficiency=0.2 --perf_sb_iterations=1e4

Fractional batch sizes are resolved against --perf_num_train (or the dataset's training set).
"""

from __future__ import annotations

from lbtf import runs
from lbtf.choices import resolve_batch_size
from lbtf.errors import UsageError
from lbtf.experiments import prepare, rundir
from lbtf.experiments.config import Config
from lbtf.performance import performance_model


def run(cfg: Config, log=print):
    e = cfg.experiment
    num_train = e.perf_num_train or prepare.load_data(cfg).num_train
    sb, lb = (resolve_batch_size(s, num_train)
              for s in (cfg.training.sb_batch_size, cfg.training.lb_batch_size))
    try:
        out = performance_model(sb_batch=sb, lb_batch=lb, processors=e.perf_processors,
                                sb_efficiency=e.perf_sb_efficiency,
                                sb_iterations=e.perf_sb_iterations,
                                lb_iterations=e.perf_lb_iterations or None)
    except ValueError as e:
        raise UsageError(f"{e}; check --perf_processors, --perf_sb_efficiency and the batch "
                         "sizes") from None
    lines = ["# Appendix C: idealised performance model",
             f"B_s = {sb}, B_l = {lb}, P = {e.perf_processors}, f_s(P) = "
             f"{e.perf_sb_efficiency:g}, I_s = {e.perf_sb_iterations:g}; LB is assumed "
             "perfectly parallel (f_l = 1).",
             f"- SB time: I_s B_s / (P f_s) = {out['sb_time']:.4g} example-gradients per "
             "processor",
             f"- LB is faster when I_l / I_s < B_s / (B_l f_s) = "
             f"{out['break_even_iteration_ratio']:.4g}, i.e. I_l < "
             f"{out['break_even_lb_iterations']:.4g} iterations"]
    if "speedup" in out:
        lines.append(f"- with I_l = {e.perf_lb_iterations:g}: LB time {out['lb_time']:.4g}, "
                     f"speed-up of LB over SB {out['speedup']:.3g}x")
    text = "\n".join(lines)
    run_dir = rundir.start_run(cfg, "performance_model")
    runs.atomic_write_json(run_dir / "results.json", {
        "experiment": "performance_model", "sb_batch": sb, "lb_batch": lb,
        "processors": e.perf_processors, "sb_efficiency": e.perf_sb_efficiency,
        "sb_iterations": e.perf_sb_iterations, **out})
    runs.atomic_write_text(run_dir / "report.md", text + "\n")
    log(f"{text}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
