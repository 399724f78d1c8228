"""Keskar et al. 2017, Appendix C: the idealised performance model of SB against LB training.

A cost model, not a remedy: how many LB iterations may a run take and still finish before the SB
run, when SB parallelises imperfectly over P processors and LB perfectly.
"""

from __future__ import annotations


def performance_model(*, sb_batch: int, lb_batch: int, processors: int, sb_efficiency: float,
                      sb_iterations: float, lb_iterations: float | None = None) -> dict:
    """Keskar et al., Appendix C. With P < B_l processors, SB at parallel efficiency f_s(P) and LB
    perfectly parallel, an iteration costs B_s / (P f_s) and B_l / P time units; LB is faster when
    I_l B_l / P < I_s B_s / (P f_s), i.e. I_l < I_s B_s / (B_l f_s)."""
    if not 0 < sb_efficiency <= 1:
        raise ValueError("the SB parallel efficiency f_s(P) must lie in (0, 1]")
    if not 0 < processors < lb_batch:
        raise ValueError("the model assumes 0 < P < B_l processors")
    sb_time = sb_iterations * sb_batch / (processors * sb_efficiency)
    out = {"sb_time": sb_time, "break_even_lb_iterations": sb_iterations * sb_batch
           / (lb_batch * sb_efficiency),
           "break_even_iteration_ratio": sb_batch / (lb_batch * sb_efficiency)}
    if lb_iterations:
        lb_time = lb_iterations * lb_batch / processors
        out.update(lb_time=lb_time, speedup=sb_time / lb_time)
    return out
