"""run_experiments.py as a user runs it: bad input and end-to-end smoke runs of each experiment."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy
from absl import flags
from conftest import run_cli, run_experiment

from lbtf.checkpoints import KERAS_WEIGHTS, kept_weights
from lbtf.errors import UsageError
from lbtf.experiments.rundir import cpu_model
from lbtf.lbfgsb import FAST
from lbtf.models import build_model

TINY = ["--mnist1d_samples=500", "--max_epochs=3", "--trials=2", "--patience=2", "--nosharpness",
        "--parametric_points=4"]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if ln.startswith(("error:", "FATAL Flags parsing error"))]


@pytest.mark.parametrize("args,expect", [
    (["--network=F9"], "--network"),
    (["--dataset=imagenet"], "--dataset"),
    (["--network=C1"], "needs image inputs"),
    (["--sb_batch_size=100000"], "exceeds the 400 training examples"),
    (["--lb_batch_size=0"], "positive integer"),
    (["--batch_size=-5", "--experiment=train"], "positive integer"),
    (["--lb_batch_size=1.5"], "(0, 1]"),
    (["--trials=0"], "--trials"),
    (["--learning_rate=0"], "--learning_rate must be positive"),
    (["--epsilons=1e-3,-1"], "--epsilons"),
    (["--output_dir=/etc/hostname/runs"], "not writable"),
    (["--dataset=timit", "--timit_path=/nonexistent.npz"], "TIMIT file not found"),
    (["--synthetic_shape=a,3", "--dataset=synthetic"], "--synthetic_shape"),
    (["--parametric=spiral"], "--parametric takes paths"),
    (["--alpha_min=2", "--alpha_max=1"], "--alpha_min must be below --alpha_max"),
    (["--parametric_trial=2"], "needs at least 3 --trials"),
    (["--bn_path=guess"], "--bn_path"),
    (["--bn_measure=moving,frozen"], "--bn_measure takes one or both of moving, batch"),
    (["--measure_bn=moving,frozen"], "--bn_measure takes one or both of moving, batch"),  # old name
    (["--loss_clip=0.5"], "--loss_clip"),
    (["--measure_point=first"], "--measure_point"),
    (["--sharpness_starts=0"], "--sharpness_starts"),
    (["--experiment=batch_sweep", "--batch_sizes=64,0"], "positive integer"),
    (["--experiment=warm_start", "--warm_start_epochs=0"], "--warm_start_epochs"),
    (["--run_name=../elsewhere"], "--run_name must be a plain folder name"),
    (["--augment"], "--augment needs image data"),
    (["--experiment=remedies", "--remedies=dropout"], "--remedies takes names"),
    (["--lr_milestones=0,5"], "--lr_milestones takes positive epochs"),
    (["--bn_layer=layer"], "--bn_layer"),
    (["--experiment=performance_model", "--perf_processors=1000"], "P < B_l"),
    (["--experiment=fig9"], "--experiment"),
    (["--dataset=timit", "--timit_path=TIMIT_WRONG_SHAPE"], "expected x[N,360] y[N]"),
    (["--dataset=timit", "--timit_path=TIMIT_NOT_NPZ"], "cannot read TIMIT file"),
    (["--strategy=multi_worker"], "needs --run_name"),
    (["--strategy=multi_worker", "--run_name=mw"], "needs the TF_CONFIG environment variable"),
    (["--strategy=multi_worker", "--run_name=mw", "TF_CONFIG={\"cluster\": {}}"],
     "TF_CONFIG is not valid"),
    (["--strategy=slurm", "--run_name=job"], "runs inside a Slurm job"),
    (["--strategy=gpus"], "--strategy"),
    (["--slurm_port_base=80"], "--slurm_port_base"),
    (["--checkpoint_every=-1"], "--checkpoint_every"),
    (["--measure_every=0"], "--measure_every"),
    (["--measure_every=2", "--checkpoint_every=3"], "multiples of --measure_every"),
    (["--experiment=warm_start", "--measure_every=2", "--warm_start_stride=5"],
     "multiples of --measure_every"),
    (["--ghost_batch_size=0", "--bn_layer=ghost"], "--ghost_batch_size"),
    (["--mnist1d_samples=10"], "--mnist1d_samples"),
    (["--sam_rho=-0.05"], "--sam_rho"),
    (["--experiment=sharpness", "--checkpoint=CORRUPT"], "cannot load checkpoint"),
])
def test_bad_input_is_one_line_and_leaves_no_run(args, expect, data_dir, tmp_path, monkeypatch):
    """In-process: the flags as absl parses them, then the experiment; the error is one line and
    nothing is written (the command line's printing and exit codes: test_command_line_errors)."""
    out = tmp_path / "runs"
    if not any(a.startswith("--output_dir") for a in args):
        args = [*args, f"--output_dir={out}"]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for a in args:
        if "=" in a and not a.startswith("-"):
            monkeypatch.setenv(*a.split("=", 1))
    args = [_make_bad_file(a, tmp_path) for a in args if a.startswith("-") or "=" not in a]
    with pytest.raises((flags.Error, UsageError)) as error:
        run_experiment(*args, f"--data_dir={data_dir}", *TINY)
    message = str(error.value)
    assert expect in message and "\n" not in message, message
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args,expect,code", [
    (["--network=F9"], "--network", 1),                              # absl's flag validation
    (["--sb_batch_size=100000"], "exceeds the 400 training examples", 2),  # lbtf's UsageError
    (["stray"], "unexpected arguments", 1),
    (["--output_dir=/etc/hostname/runs"], "not writable", 2),
])
def test_command_line_errors(args, expect, code, data_dir):
    """The command line turns every kind of error into one line on stderr and a non-zero exit."""
    proc = run_cli(*args, f"--data_dir={data_dir}", *TINY)
    assert proc.returncode == code and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr) or [ln for ln in proc.stderr.splitlines() if expect in ln]
    assert len(lines) == 1 and expect in lines[0], proc.stderr[-2000:]


def _make_bad_file(arg: str, tmp_path) -> str:
    """Replaces a placeholder in a flag by a bad file made for it."""
    name, _, value = arg.partition("=")
    path = tmp_path / value.lower()
    if value == "TIMIT_WRONG_SHAPE":  # 40 features, not 360
        np.savez(path, x_train=np.zeros((8, 40)), y_train=np.zeros(8), x_test=np.zeros((4, 40)),
                 y_test=np.zeros(4))
        return f"{name}={path}.npz"
    if value == "TIMIT_NOT_NPZ":
        path.write_text("not an archive")
        return f"{name}={path}"
    if value == "CORRUPT":  # a checkpoint whose files are garbage
        path.mkdir()
        (path / "weights-1.index").write_bytes(b"\x00garbage" * 10)
        (path / "weights-1.data-00000-of-00001").write_bytes(b"garbage")
        return f"{name}={path / 'weights-1'}"
    return arg


def test_table2_end_to_end(data_dir, tmp_path):
    proc = run_cli(f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *TINY,
                   "--sb_batch_size=256")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch   1" in proc.stdout and "report:" in proc.stdout
    (run,) = tmp_path.iterdir()
    assert run.name.startswith("table2_")
    results = json.loads((run / "results.json").read_text())
    assert results["batch_sizes"] == {"SB": 256, "LB": 40}
    assert [(r["trial"], r["regime"]) for r in results["runs"]] == [
        (0, "SB"), (0, "LB"), (1, "SB"), (1, "LB")]
    # Accuracies are counts over the 100 test and 400 training examples, not any number in [0, 1].
    for r in results["runs"]:
        assert r["epochs"] <= 3 and round(r["test_acc"] * 100, 6) == round(r["test_acc"] * 100)
        assert round(r["train_acc"] * 400, 4) == round(r["train_acc"] * 400)
    history = pd.read_csv(run / "history.csv")
    assert set(history.regime) == {"SB", "LB"} and {"train_loss", "test_acc"} <= set(history)
    report = (run / "report.md").read_text()
    table = [ln for ln in report.splitlines() if ln.startswith("| lbtf") or ln.startswith("| paper")]
    assert len(table) == 2 and "98.03 ± 0.07" in table[1]
    header = next(ln for ln in report.splitlines() if "SB train" in ln)
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "SB train", "LB train", "SB test", "LB test"]
    flags_txt = (run / "flags.txt").read_text()
    assert "--network=F1" in flags_txt and "--trials=2" in flags_txt
    assert (run / "tb" / "trial0_SB").is_dir()
    # Each run keeps its start, its measured point and its last epoch; no resume checkpoint.
    for r in results["runs"]:
        ckpt = run / "checkpoints" / f"trial{r['trial']}_{r['regime']}"
        assert set(kept_weights(ckpt)) == {0, r["measured_epoch"], r["epochs"]}
        assert not (ckpt / "resume").exists()
    assert "run folder" in proc.stdout and " MB in " in proc.stdout
    # Figures 2 and 3 as PNG and PDF, embedded in the report and logged to TensorBoard.
    for name in ("figure2_training_curves", "figure3_parametric_linear_movingbn",
                 "figure3_parametric_linear_batchbn"):
        assert (run / f"{name}.png").stat().st_size > 1000 and (run / f"{name}.pdf").is_file()
        assert f"]({name}.png)" in report
    assert any((run / "tb" / "figures").iterdir())
    for mode in ("moving", "batch"):
        linear = pd.DataFrame(results["parametric"][f"linear/{mode}"])
        assert list(linear.alpha) == [-1, 0, 1, 2] and linear.train_loss.notna().all()
    # Every run is measured at its epoch of lowest training loss; Table 2 reports that epoch.
    for r in results["runs"]:
        rows = history[(history.trial == r["trial"]) & (history.regime == r["regime"])]
        best = rows.loc[rows.train_loss.idxmin()]
        assert r["measured_epoch"] == best.epoch and r["test_acc"] == pytest.approx(best.test_acc)
        assert r["checkpoint"].endswith(f"weights-{int(best.epoch)}")
    # What produced the numbers: versions and the L-BFGS-B path.
    env = results["environment"]
    assert {"python", "tensorflow", "keras", "numpy", "scipy", "mnist1d"} <= env.keys()
    assert env["scipy"] == scipy.__version__ and env["lbfgsb"].startswith("setulb")
    assert env["cpu"] == cpu_model()  # the instruction set decides the rounding
    assert results["measurement"]["loss_clip"] == 1e-7 and results["measurement"]["point"] == "best"
    dist = pd.DataFrame(results["distances"])
    assert list(dist.trial) == [0, 1] and (dist.sb_distance > 0).all()
    assert dist.ratio.to_numpy() == pytest.approx(dist.sb_distance / dist.lb_distance)
    # Both distances again, from the saved .weights.h5 files through Keras' own loader and NumPy:
    # from the trial's start (weights-0), not from the other regime's minimiser.
    model = build_model("F1", input_shape=(40,), num_classes=10)

    def trainable(path) -> np.ndarray:
        model.load_weights(str(path) + KERAS_WEIGHTS)
        return np.concatenate([np.ravel(w.numpy()) for w in model.trainable_weights]).astype("f8")
    for d in dist.itertuples():
        at = {r["regime"]: r for r in results["runs"] if r["trial"] == d.trial}
        start = trainable(run / "checkpoints" / f"trial{d.trial}_SB" / "weights-0")
        assert np.array_equal(start, trainable(run / "checkpoints" / f"trial{d.trial}_LB"
                                               / "weights-0"))  # one start for both regimes
        for regime, got in (("SB", d.sb_distance), ("LB", d.lb_distance)):
            w = trainable(at[regime]["checkpoint"])
            assert got == pytest.approx(np.sqrt(np.sum((w - start) ** 2)), rel=1e-6)
    assert "## Distance from the starting point" in report


def test_train_experiment_and_info(data_dir, tmp_path):
    run, _ = run_experiment("--experiment=train", "--batch_size=10%", f"--data_dir={data_dir}",
                            f"--output_dir={tmp_path}", *TINY[:2], "--trials=1", "--nojit_compile")
    assert json.loads((run / "results.json").read_text())["batch_size"] == 40
    _, log = run_experiment("--experiment=info", f"--data_dir={data_dir}", "--mnist1d_samples=500")
    # Parameter counts derived layer by layer in test_models.py.
    assert "1462794" in log and "14991946" in log


# In-process runs skip XLA, whose compilation costs more than it saves at these sizes;
# test_table2_end_to_end runs the command line with its defaults.
SHARP = ["--epsilons=1e-3", "--subspace_dim=3", "--sharpness_maxiter=2", "--nojit_compile"]


def test_table2_reports_sharpness_tables(data_dir, tmp_path):
    run, log = run_experiment(f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *TINY[:2],
                              "--trials=1", *SHARP, "--hessian_k=1")
    results = json.loads((run / "results.json").read_text())
    m = pd.DataFrame(results["measurements"])
    sharp = m[m.measure == "sharpness"]
    assert sorted(zip(sharp.bn, sharp.regime, sharp.space, strict=True)) == [
        (bn, r, s) for bn in ("batch", "moving") for r in ("LB", "SB") for s in ("full", "subspace")]
    assert (sharp.nit <= 2).all() and (sharp.loss_clip == 1e-7).all()
    assert (sharp.driver == FAST).all() and (sharp.bn_chunk[sharp.bn == "batch"] == 400).all()
    assert not sharp.message.str.contains("ABNORMAL").any()
    assert (m[m.measure == "hessian"].value > 0).sum() == 4
    report = (run / "report.md").read_text()
    assert "## Table 3" in report and "## Table 4" in report
    assert "moving BN" in report and "batch-statistics BN" in report
    assert "largest Hessian eigenvalue" in report
    summary = log.rsplit("measuring the sharpness", 1)[1]  # printed at the end of the run
    assert "## Table 3" in summary and "## Curvature cross-check" in summary
    # Every value is Metric 2.1 of its own f(x) and max f, and f(x) is the training loss of the
    # saved minimiser computed here independently: the checkpoint loaded into a fresh F1, its
    # probabilities on the training set, Keras 1's clipped cross-entropy in NumPy.
    np.testing.assert_allclose(sharp.value, (sharp.f_max - sharp.f_x) / (1 + sharp.f_x) * 100,
                               rtol=1e-9)
    assert (sharp.f_max > sharp.f_x).all()
    from lbtf.checkpoints import restore_weights
    from lbtf.data import load_mnist1d
    from lbtf.models import build_model

    data = load_mnist1d(num_samples=500, data_dir=str(data_dir))
    for regime in ("SB", "LB"):
        row = next(r for r in results["runs"] if r["regime"] == regime)
        model = build_model("F1", input_shape=data.input_shape, num_classes=data.num_classes)
        restore_weights(model, row["checkpoint"])
        probs = model(data.x_train, training=False).numpy().astype(np.float64)
        f_x = -np.mean(np.log(np.clip(probs[np.arange(len(data.y_train)), data.y_train],
                                      1e-7, 1 - 1e-7)))
        moving = sharp[(sharp.regime == regime) & (sharp.bn == "moving")].f_x
        assert moving.to_numpy() == pytest.approx(f_x, rel=1e-5)


@pytest.mark.parametrize("checkpoint,expect", [
    (None, "needs --checkpoint"), ("/nonexistent/weights-3", "not found"),
    ("WRONG_NETWORK", "cannot load checkpoint")])
def test_sharpness_bad_checkpoint(checkpoint, expect, data_dir, tmp_path):
    args = ["--experiment=sharpness", f"--data_dir={data_dir}", "--mnist1d_samples=500",
            f"--output_dir={tmp_path / 'runs'}"]
    if checkpoint == "WRONG_NETWORK":  # a checkpoint of a small dense model, not F2
        import keras
        import tensorflow as tf

        model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(3)])
        checkpoint = tf.train.Checkpoint(model=model).save(str(tmp_path / "other" / "weights"))
        args.append("--network=F2")
    if checkpoint:
        args.append(f"--checkpoint={checkpoint}")
    with pytest.raises(UsageError, match=expect) as error:
        run_experiment(*args)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_table2_measures_every_measure_asked_for(data_dir, tmp_path):
    """--measures: each measure at each minimiser under each BN mode, recorded with its settings,
    and counted LB against SB in the report."""
    run, log = run_experiment(f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *TINY[:2],
                              "--trials=1", *SHARP, "--subspace_dim=0", "--measure_samples=3",
                              "--bn_measure=moving", "--epsilons=1e-3",
                              "--measures=keskar,adaptive,average,pacbayes,hessian,trace")
    results = json.loads((run / "results.json").read_text())
    m = pd.DataFrame(results["measurements"])
    counts = m.groupby(["measure", "bn"]).size().to_dict()
    assert counts == {(k, "moving"): 2 for k in ("sharpness", "adaptive", "average", "pacbayes",
                                                 "hessian", "trace")}
    assert (m[m.measure == "adaptive"].eta == 0).all() and (m[m.measure == "sharpness"].eta == 1).all()
    average = m[m.measure == "average"]
    assert (average.samples == 3).all() and (average.sigma == 0.01).all() and average.stderr.notna().all()
    pac = m[m.measure == "pacbayes"]
    assert np.allclose(pac.value, 1 / pac.sigma**2) and (pac.rise <= pac.target + 1e-9).all()
    assert results["measurement"]["measures"] == ["keskar", "adaptive", "average", "pacbayes",
                                                  "hessian", "trace"]
    assert {r["measure"] for r in results["lb_sharper"]} == {
        "sharpness", "adaptive", "average", "pacbayes", "hessian", "trace"}
    assert "| adaptive " in (run / "report.md").read_text()


def test_table2_without_bn_trains_and_measures(data_dir, tmp_path):
    """--bn_layer=none end to end: measured with the network it trained (no BN variables), and
    the convergence figure drawn from every measurement's trace; the two BN modes are one function
    without BN, so it is measured once (under the first)."""
    run, _ = run_experiment(f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *TINY[:2],
                            "--trials=1", *SHARP, "--subspace_dim=0", "--bn_layer=none",
                            "--bn_measure=moving,batch", "--epsilons=1e-3")
    results = json.loads((run / "results.json").read_text())
    assert {r["bn_layers"] for r in results["runs"]} == {"none"}
    m = pd.DataFrame(results["measurements"])
    assert set(m.bn) == {"moving"}
    assert len(m) == 2 and all(len(t) == n for t, n in zip(m.trace, m.nit, strict=True))
    assert (run / "convergence_movingbn.png").stat().st_size > 1000
    assert "## Does the maximisation converge? (moving BN)" in (run / "report.md").read_text()


def test_table2_rescale_check_reports_which_measures_move(data_dir, tmp_path):
    """--rescale_check=4: every minimiser measured again with the weights feeding BN x4 (the same
    function). The average-case measure cannot move (the same draws in the original coordinates:
    within BN's epsilon); Keskar's box must (its +1 floor does not scale)."""
    run, _ = run_experiment(f"--data_dir={data_dir}", f"--output_dir={tmp_path}", *TINY[:2],
                            "--trials=1", *SHARP, "--subspace_dim=0", "--bn_measure=batch",
                            "--measures=keskar,average", "--measure_samples=3",
                            "--rescale_check=4")
    results = json.loads((run / "results.json").read_text())
    before = pd.DataFrame(results["measurements"]).set_index(["measure", "regime"]).value
    after = pd.DataFrame(results["rescaled_measurements"]).set_index(["measure", "regime"]).value
    ratio = after / before
    assert ratio["average"].to_numpy() == pytest.approx([1, 1], rel=1e-2)
    assert (abs(ratio["sharpness"] - 1) > 0.05).all()
    assert "## Reparametrisation check" in (run / "report.md").read_text()
