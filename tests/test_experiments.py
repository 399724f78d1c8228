"""End-to-end runs of the figure experiments at tiny size: batch sweep (Figure 4), warm start
(Figure 5, restartable), trajectory (Figure 6), and resuming a named table2 run."""

import json
import shutil

import pandas as pd
import pytest
from conftest import run_experiment

from lbtf.checkpoints import kept_weights
from lbtf.errors import UsageError
from lbtf.experiments.sharpness import METHODS
from lbtf.sharpness import SUBSPACE_METHOD

# XLA compilation costs more than it saves at these sizes (the command-line test keeps it on).
BASE = ["--mnist1d_samples=500", "--max_epochs=2", "--patience=2", "--trials=1",
        "--bn_measure=moving", "--epsilons=1e-3", "--subspace_dim=0", "--sharpness_maxiter=2",
        "--nojit_compile"]


def run_ok(*args) -> str:
    """The log of an experiment run in-process (the command line itself is tested in test_cli)."""
    return run_experiment(*args)[1]


def results_of(run) -> dict:
    return json.loads((run / "results.json").read_text())


def test_batch_sweep(data_dir, tmp_path):
    run_ok("--experiment=batch_sweep", "--batch_sizes=64,0.5,200", f"--data_dir={data_dir}",
           f"--output_dir={tmp_path}", *BASE)
    (run,) = tmp_path.iterdir()
    results = results_of(run)
    assert results["batch_sizes"] == [64, 200]  # 0.5 of 400 is 200: one run, not two
    m = pd.DataFrame(results["measurements"])
    assert sorted(m.batch_size) == [64, 200]
    assert (run / "figure4_batch_sweep.png").is_file() and (run / "figure4_batch_sweep.pdf").is_file()
    assert "](figure4_batch_sweep.png)" in (run / "report.md").read_text()


def test_batch_sweep_correlates_every_measure_with_the_gap(data_dir, tmp_path):
    """Three batch sizes, two trials, two measures: Kendall's tau of each with the gap and the
    batch size, recomputed here from the runs and measurements the results record."""
    import scipy.stats

    run_ok("--experiment=batch_sweep", "--batch_sizes=32,100,200", "--measures=keskar,trace",
           "--measure_samples=2", f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *BASE,
           "--trials=2")
    (run,) = tmp_path.iterdir()
    results = results_of(run)
    corr = pd.DataFrame(results["correlations"]).set_index("measure")
    assert set(corr.index) == {"sharpness", "trace"} and (corr.n == 6).all()
    runs = pd.DataFrame(results["runs"]).set_index(["trial", "regime"])
    trace = pd.DataFrame(results["measurements"]).query("measure == 'trace'")
    gap = [runs.train_acc[(t, r)] - runs.test_acc[(t, r)] for t, r in zip(trace.trial, trace.regime,
                                                                          strict=True)]
    tau = scipy.stats.kendalltau(trace.value, gap).statistic
    assert corr.tau_gap_acc["trace"] == pytest.approx(tau)
    assert (run / "measures_vs_gap.png").stat().st_size > 1000
    assert "## Which measure tracks the gap" in (run / "report.md").read_text()


def test_warm_start_restart_skips_finished_runs(data_dir, tmp_path):
    args = ["--experiment=warm_start", "--warm_start_epochs=2", "--warm_start_stride=1",
            "--run_name=ws", f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *BASE]
    run_ok(*args)
    run = tmp_path / "ws"
    first = results_of(run)
    assert [r["sb_epoch"] for r in first["piggyback"]] == [0, 1, 2]
    assert [h["epoch"] for h in first["sb_history"]] == [0, 1, 2]
    assert len(first["measurements"]) == 3
    # Every record says how A is drawn and the Hessian solved (a restart under another lbtf
    # measures again rather than mixing methods: test_rundir).
    assert first["measurement"]["subspace_generator"] == SUBSPACE_METHOD
    assert json.loads((run / "measurements" / "sb_epoch0.json").read_text())["method"] == METHODS
    # Finished runs keep no resume checkpoint; the SB run keeps the iterates LB starts from.
    assert not list(run.glob("checkpoints/*/resume"))
    assert sorted(kept_weights(run / "checkpoints" / "SB")) == [0, 1, 2]
    # An interrupted start: one piggyback run and its measurement are missing (killed before its
    # first resume checkpoint).
    (run / "runs" / "LB_from_SB1.json").unlink()
    shutil.rmtree(run / "checkpoints" / "LB_from_SB1")
    (run / "measurements" / "sb_epoch1.json").unlink()
    (run / "results.json").unlink()
    log = run_ok(*args)
    assert log.count("finished earlier, skipped") == 5  # SB, 2 piggybacks, 2 measurements
    assert "[LB_from_SB1 B=40] epoch   1" in log and "[SB B=256]" not in log
    again = results_of(run)
    # The rerun is deterministic, so the results are those of an uninterrupted run.
    assert again["piggyback"] == first["piggyback"]
    assert [m["value"] for m in again["measurements"]] == pytest.approx(
        [m["value"] for m in first["measurements"]], rel=1e-5)
    # Other flags for the same run folder are refused, before anything is written.
    with pytest.raises(UsageError, match="--warm_start_stride"):
        run_experiment(*args, "--warm_start_stride=2")


def test_trajectory(data_dir, tmp_path):
    run_ok(*BASE, "--experiment=trajectory", "--trajectory_stride=2", "--max_epochs=3",
           f"--data_dir={data_dir}", f"--output_dir={tmp_path}")
    (run,) = tmp_path.iterdir()
    m = pd.DataFrame(results_of(run)["measurements"])
    # Epochs 0 and 2 (multiples of the stride) and the last, 3, of both regimes.
    assert sorted(zip(m.regime, m.epoch, strict=True)) == [
        ("LB", 0), ("LB", 2), ("LB", 3), ("SB", 0), ("SB", 2), ("SB", 3)]
    # Both regimes start from the same point, so their epoch-0 sharpness is the same.
    start = m[m.epoch == 0].set_index("regime").value
    assert start["SB"] == pytest.approx(start["LB"], rel=1e-6)
    assert (run / "figure6_sharpness_vs_loss_trial0.png").is_file()


def test_named_table2_run_resumes(data_dir, tmp_path):
    args = [f"--data_dir={data_dir}", f"--output_dir={tmp_path}", "--run_name=t2", *BASE,
            "--nosharpness", "--parametric=curvilinear", "--parametric_points=3",
            "--bn_path=interpolate"]
    run_ok(*args)
    run = tmp_path / "t2"
    first = results_of(run)
    curve = pd.DataFrame(first["parametric"]["curvilinear/moving"])
    runs = pd.DataFrame(first["runs"]).set_index("regime")
    # With interpolated statistics the end points are the minimisers themselves.
    ends = curve.set_index("alpha")
    assert ends.train_loss[0.0] == pytest.approx(runs.train_loss["SB"], rel=1e-5)
    assert ends.train_loss[1.0] == pytest.approx(runs.train_loss["LB"], rel=1e-5)
    assert (run / "figure7_parametric_curvilinear_movingbn.pdf").is_file()
    log = run_ok(*args)
    assert log.count("finished earlier, skipped") == 2 and "epoch   1" not in log
    assert results_of(run)["runs"] == first["runs"]


def test_remedies_and_performance_model(data_dir, tmp_path):
    # SAM's ascent of 1e30 overflows the weights: LB+sam diverges, and the experiment goes on.
    log = run_ok("--experiment=remedies", "--remedies=ghost,augment,adversarial,sam",
                  "--ghost_batch_size=16", "--sam_rho=1e30",
                  f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *BASE)
    assert "skipping LB+augment" in log  # MNIST-1D is not images
    (run,) = tmp_path.iterdir()
    results = results_of(run)
    summary = pd.DataFrame(results["summary"]).set_index("regime")
    assert list(summary.index) == ["SB", "LB", "LB+ghost", "LB+adversarial", "LB+sam"]
    assert "sharpness full ε=0.001" in summary and "diffusion slope" in summary
    assert list(summary.diverged) == ["0/1"] * 4 + ["1/1"]
    assert summary["test acc"]["LB+sam"] == "–" and "±" in summary["test acc"]["LB+adversarial"]
    assert results["diverged"] == ["trial0_LB+sam"]
    measured = {m["regime"] for m in results["measurements"]}
    assert measured == {"SB", "LB", "LB+ghost", "LB+adversarial"}
    kept = run / "checkpoints" / "trial0_LB+sam"
    assert (kept / "weights-0.index").is_file() and not (kept / "weights-1.index").exists()
    runs = pd.DataFrame(results["runs"]).set_index("regime")
    # LB is 40 examples here: sqrt scaling from B_ref 256 and regime adaptation shorten the budget.
    assert runs.learning_rate["LB+ghost"] == pytest.approx(1e-3 * (40 / 256) ** 0.5)
    assert runs.learning_rate["LB"] == 1e-3 and runs.epochs["LB+ghost"] == 1
    assert len(runs.diffusion["LB"]) > 0
    assert (run / "remedies.png").is_file() and (run / "diffusion.pdf").is_file()
    out = tmp_path / "perf"
    log = run_ok("--experiment=performance_model", "--sb_batch_size=256", "--lb_batch_size=2560",
                  "--perf_processors=64",
                  "--perf_sb_iterations=1000", "--perf_lb_iterations=250",
                  f"--output_dir={out}", f"--data_dir={data_dir}", "--mnist1d_samples=500",
                  "--perf_num_train=50000")
    assert "I_l < 500 iterations" in log and "speed-up of LB over SB 2x" in log


def test_hoffer_columns_train_as_the_table_says():
    from lbtf.experiments.config import override
    from lbtf.experiments.flags import parse
    from lbtf.experiments.hoffer import COLUMNS, authors_way
    from lbtf.experiments.training import training_config

    cfg = authors_way(parse(["--experiment=hoffer", "--optimizer=sgd", "--learning_rate=0.1",
                             "--lr_milestones=10,20", "--lr_values=0.01,0.001",
                             "--max_epochs=30", "--lr_reference_batch=128"]))
    batches = {"SB": 128, "LB": 4096}  # 32 x B_ref: sqrt scaling x sqrt(32), adaptation x 32
    got = {}
    for name, (batch, changes) in COLUMNS.items():
        column = override(cfg, changes)
        t = training_config(column, batches[batch])
        got[name] = (t.learning_rate, t.lr_values, t.max_epochs, t.lr_milestones,
                     column.model.bn_layer)
        assert t.bn_eval == "moving" and t.patience > t.max_epochs  # the whole budget, always
    s = 32 ** 0.5
    assert got["SB"] == got["LB"] == (0.1, (0.01, 0.001), 30, (10, 20), "standard")
    assert (got["+LR"][0], *got["+LR"][1]) == pytest.approx((0.1 * s, 0.01 * s, 0.001 * s))
    assert got["+GBN"][2:] == (30, (10, 20), "ghost")
    assert got["+RA"][2:] == (960, (320, 640), "ghost") and got["+RA"][0] == pytest.approx(0.1 * s)
    assert training_config(override(cfg, COLUMNS["+RA"][1]), 4096).measure_every == 32
    assert cfg.measure.measure_point == "last"


def test_hoffer_table_end_to_end(data_dir, tmp_path):
    log = run_ok("--experiment=hoffer", "--optimizer=sgd", "--learning_rate=0.05",
                 "--momentum=0.9", "--weight_decay=1e-4", "--clip_norm=5", "--bn_momentum=0.9",
                 "--lr_milestones=1", "--lr_values=0.005", "--sb_batch_size=50",
                 "--lb_batch_size=200", "--ghost_batch_size=50", "--lr_reference_batch=50",
                 "--run_name=h", f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *BASE)
    results = results_of(tmp_path / "h")
    runs = pd.DataFrame(results["runs"]).set_index("regime")
    assert list(runs.index) == ["SB", "LB", "+LR", "+GBN", "+RA"]
    # Fixed budgets: 2 epochs, and 2 x 200 / 50 = 8 with regime adaptation; measured at the last.
    assert list(runs.epochs) == [2, 2, 2, 2, 8] and (runs.measured_epoch == runs.epochs).all()
    # +RA is measured every 4 epochs, at the points of its regime SB is measured at.
    history = pd.read_csv(tmp_path / "h" / "history.csv")
    assert list(history[(history.regime == "+RA") & (history.trial == 0)].epoch) == [4, 8]
    assert (runs.bn_eval_source == "moving averages").all() and runs.xla.dtype == bool
    assert runs.learning_rate["+LR"] == pytest.approx(0.1) and runs.learning_rate["LB"] == 0.05
    assert results["paper"][0] == "MNIST" and "| paper, F1 on MNIST" in log
    report = (tmp_path / "h" / "report.md").read_text()
    assert "98.27" in report and (tmp_path / "h" / "diffusion.png").is_file()
    assert all(len(d) > 0 for d in runs.diffusion)
    # What trained, read off the trained runs: +GBN and +RA normalised ghost batches of 50, the
    # others the whole batch; +RA made 200 / 50 = 4 times LB's updates; every schedule's
    # milestone fired (epoch 1 of 2, or 4 of 8 for +RA), at the rate the column scales.
    assert runs.bn_layers.to_dict() == {"SB": "BatchNormalization", "LB": "BatchNormalization",
                                        "+LR": "BatchNormalization",
                                        "+GBN": "GhostBatchNormalization(50)",
                                        "+RA": "GhostBatchNormalization(50)"}
    first = history[history.trial == 0].groupby("regime")
    steps = first.steps.sum()
    assert steps["+RA"] == 4 * steps["LB"] and steps["LB"] == 2 * (400 // 200)
    rates = first.learning_rate.apply(list)
    assert rates["SB"] == pytest.approx([0.05, 0.005]) and rates["LB"] == rates["SB"]
    assert rates["+LR"] == pytest.approx([0.1, 0.01]) and rates["+RA"] == pytest.approx([0.1, 0.01])
