"""Figures (lbtf.figures): each plots the numbers it is given, where the paper puts them; save
writes PNG and PDF and returns the Markdown that embeds the PNG."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lbtf import figures


def _lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {ln.get_label(): (np.asarray(ln.get_xdata()), np.asarray(ln.get_ydata()))
            for ln in ax.get_lines()}


def test_training_curves_plot_accuracy_in_percent_per_regime():
    history = pd.DataFrame({"regime": ["SB", "SB", "LB", "LB"], "epoch": [1, 2, 1, 2],
                            "train_acc": [0.5, 0.75, 0.25, 1.0], "test_acc": [0.5, 0.5, 0.2, 0.4]})
    fig = figures.training_curves(history, title="t")
    lines = _lines(fig.axes[0])
    assert lines["SB – Training"][1].tolist() == [50.0, 75.0]
    assert lines["LB – Testing"][1].tolist() == [20.0, 40.0]
    plt.close(fig)


def test_parametric_puts_loss_on_the_left_and_accuracy_on_the_right():
    table = pd.DataFrame({"alpha": [-1.0, 0.0, 1.0, 2.0], "train_loss": [3.0, 0.1, 0.2, 4.0],
                          "test_loss": [3.5, 0.6, 0.7, 4.5], "train_acc": [0.1, 1.0, 1.0, 0.1],
                          "test_acc": [0.1, 0.8, 0.75, 0.1]})
    fig = figures.parametric(table, title="t", xlabel="α")
    loss_ax, acc_ax = fig.axes
    loss = [y.tolist() for _, y in _lines(loss_ax).values()]
    acc = [y.tolist() for _, y in _lines(acc_ax).values()]
    assert [3.0, 0.1, 0.2, 4.0] in loss and [3.5, 0.6, 0.7, 4.5] in loss
    assert [10.0, 80.0, 75.0, 10.0] in acc  # test accuracy in percent
    plt.close(fig)


def test_sharpness_vs_loss_runs_the_loss_axis_from_large_to_small():
    table = pd.DataFrame({"regime": ["SB", "SB"], "train_loss": [2.0, 0.1], "space": "full",
                          "epsilon": 1e-3, "value": [5.0, 1.0]})
    fig = figures.sharpness_vs_loss(table, title="t")
    left, right = fig.axes[0].get_xlim()
    assert left > right  # inverted: training moves left to right as the loss falls
    plt.close(fig)


def test_batch_sweep_averages_trials_per_batch_size():
    accuracy = pd.DataFrame({"batch_size": [64, 64, 256], "test_acc": [0.8, 0.6, 0.5]})
    sharp = pd.DataFrame({"batch_size": [64, 64, 256], "space": "full", "epsilon": 1e-3,
                          "value": [1.0, 3.0, 10.0]})
    fig = figures.batch_sweep(accuracy, sharp, title="t")
    (x, y), = [v for k, v in _lines(fig.axes[0]).items() if k == "test accuracy"]
    assert x.tolist() == [64, 256] and y.tolist() == [70.0, 50.0]
    sharp_lines = [y.tolist() for ax in fig.axes[1:] for _, y in _lines(ax).values()]
    assert [2.0, 10.0] in sharp_lines
    plt.close(fig)


def test_diffusion_gives_every_curve_its_own_colour():
    table = pd.DataFrame({"regime": ["SB", "LB", "LB+ghost", "LB+sam"],
                          "diffusion": [[(1, 0.1), (10, 0.5)]] * 4})
    fig = figures.diffusion(table, title="t")
    styles = {(str(ln.get_color()), ln.get_linestyle()) for ln in fig.axes[0].get_lines()}
    assert len(styles) == 4 and fig.axes[0].get_xscale() == "log"
    plt.close(fig)


def test_save_writes_png_and_pdf_and_embeds_the_png(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    text = figures.save(fig, tmp_path, "curve", caption="A line.")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curve.pdf").read_bytes()[:5] == b"%PDF-"
    assert "](curve.png)" in text and "A line." in text
    assert not plt.fignum_exists(fig.number)  # closed, so long runs do not accumulate figures
