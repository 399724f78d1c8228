"""lbtf.performance: Keskar et al.'s Appendix C model against the paper's worked example."""

import pytest

from lbtf.performance import performance_model


def test_performance_model_reproduces_the_papers_example():
    # Appendix C: f_s = 0.2 and B_s / B_l = 0.1 -> LB must converge in half the SB iterations.
    out = performance_model(sb_batch=256, lb_batch=2560, processors=64, sb_efficiency=0.2,
                            sb_iterations=1000, lb_iterations=250)
    assert out["break_even_iteration_ratio"] == pytest.approx(0.5)
    assert out["break_even_lb_iterations"] == pytest.approx(500)
    assert out["speedup"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="P < B_l"):
        performance_model(sb_batch=256, lb_batch=64, processors=128, sb_efficiency=0.5,
                          sb_iterations=10)
