"""The figures: every one has a title and labelled axes, smoothing has no lag, epochs are whole numbers.

:func:`recording_figures` is also used by test_studies.py, so every figure the studies draw is
checked the same way without running them twice.
"""
import contextlib

import numpy as np
import pytest

from dualnet import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def recording_figures():
    """Within the block, every figure passed to ``plots.save_fig`` (by the plot functions or
    the studies) is kept in the yielded list as ``(path, fig)``; it is still written."""
    saved, real = [], plots.save_fig

    def record(fig, path):
        saved.append((path, fig))
        return real(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save_fig", record)
        yield saved


def _figure_xlabel(ax):
    own = ax.get_xlabel().strip()
    sup = getattr(ax.figure, "_supxlabel", None)
    return own or (sup.get_text().strip() if sup is not None else "")


def check_figures(saved):
    """Each recorded figure was written as a PNG, is fully labelled, and its epoch axes
    have whole-number ticks."""
    assert saved
    for path, fig in saved:
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC, path
        assert plots.unlabelled(fig) == [], path
        for ax in fig.axes:
            if ax.axison and _figure_xlabel(ax).startswith("epoch"):
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks), (path, ticks)


@pytest.fixture
def figures():
    with recording_figures() as saved:
        yield saved


def history(epochs=3, val=None):
    h = {"epoch": list(range(1, epochs + 1)), "train_acc": [0.5, 0.7, 0.8][:epochs],
         "test_acc": [0.45, 0.6, 0.7][:epochs]}
    if val is not None:
        h["val_acc"] = val
    return h


def legend_labels(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


# --------------------------------------------------------------------------- every figure function
def test_plot_loss(figures, tmp_path):
    rng = np.random.default_rng(0)
    path = plots.plot_loss(list(2.3 * np.exp(-np.arange(300) / 80) + 0.1 * rng.random(300)),
                           str(tmp_path / "loss.png"), "mlp on digits")
    assert path == str(tmp_path / "loss.png")
    check_figures(figures)
    ax = figures[0][1].axes[0]
    assert ax.get_title() == "mlp on digits" and ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()


def test_plot_accuracy_train_and_test(figures, tmp_path):
    plots.plot_accuracy(history(), str(tmp_path / "acc.png"), "mlp on digits")
    check_figures(figures)  # includes: the epoch ticks of 3 epochs are 1, 2, 3 (not 1.25, 1.5 ...)
    assert legend_labels(figures[0][1]) == ["train", "test"]


def test_plot_accuracy_draws_validation(figures, tmp_path):
    plots.plot_accuracy(history(val=[0.4, None, 0.65]), str(tmp_path / "a.png"))  # an epoch without a score
    plots.plot_accuracy(history(val=[None, None, None]), str(tmp_path / "b.png"))  # no validation split
    check_figures(figures)
    assert legend_labels(figures[0][1]) == ["train", "validation", "test"]
    y = figures[0][1].axes[0].get_lines()[1].get_ydata()
    assert y[0] == 0.4 and np.isnan(y[1]) and y[2] == 0.65
    assert legend_labels(figures[1][1]) == ["train", "test"]


def test_epoch_ticks_are_whole_numbers(figures, tmp_path):
    for epochs in (2, 3, 7):
        plots.plot_accuracy({"epoch": list(range(1, epochs + 1)), "train_acc": [0.5] * epochs,
                             "test_acc": [0.4] * epochs}, str(tmp_path / f"{epochs}.png"))
    check_figures(figures)
    for _, fig in figures:
        assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())


@pytest.mark.parametrize("W", [np.random.default_rng(0).standard_normal((30, 1, 5, 5)),  # conv filters
                               np.random.default_rng(0).standard_normal((784, 16)),  # 28x28 per hidden unit
                               np.random.default_rng(0).standard_normal((8, 3, 3, 3))],  # RGB filters
                         ids=["conv", "affine", "rgb"])
def test_plot_filters(figures, tmp_path, W):
    plots.plot_filters(W, str(tmp_path / "filters.png"), "first-layer filters")
    check_figures(figures)
    assert not figures[0][1].axes[0].axison  # images carry no axes, only the title


def test_unlabelled_names_what_is_missing(tmp_path):
    fig, axes = plots._fig(1, 2)
    axes[0].plot([1, 2])
    axes[1].plot([1, 2])
    axes[1].set_title("b")
    axes[1].set_xlabel("x")
    missing = plots.unlabelled(fig)
    assert "figure: no title" in missing and "panel 0 (untitled): no title" in missing
    assert "panel 0 (untitled): no x label" in missing and "panel 1 (b): no y label" in missing
    assert "panel 1 (b): no x label" not in missing
    fig.suptitle("t")
    fig.supxlabel("x")
    fig.supylabel("y")
    axes[0].set_title("a")
    assert plots.unlabelled(fig) == []
    plots.save_fig(fig, str(tmp_path / "f.png"))


# --------------------------------------------------------------------------- smoothing
def test_smooth_has_no_lag_on_a_step():
    v = np.r_[np.zeros(50), np.ones(50)]
    s = plots.smooth(v, 21)
    # centred: the response is antisymmetric about the step, so it crosses 1/2 at the step ...
    np.testing.assert_allclose(s[49 - np.arange(50)] + s[50 + np.arange(50)], 1.0)
    assert s[49] < 0.5 < s[50]
    # ... and starts 10 points before it and ends 10 points after (a trailing mean of 21 would
    # still read 0 at the step and reach 1 only 20 points later)
    assert s[39] == 0 and s[40] > 0 and s[59] < 1 and s[60] == 1


def test_smooth_is_unbiased_at_the_ends():
    # an EMA started at 0 reads 0.1 * 2.3 at the first point; the centred mean reads the data
    np.testing.assert_allclose(plots.smooth(np.full(40, 2.3), 21), 2.3)
    # a trend is followed without lag, to the first and last points
    np.testing.assert_allclose(plots.smooth(np.arange(40.0), 21), np.arange(40.0))
    np.testing.assert_allclose(plots.smooth([3.0, 1.0]), [3.0, 1.0])


def test_smooth_odd_window_and_noise():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(1000)
    s = plots.smooth(v, 20)  # rounded up to 21 points
    np.testing.assert_allclose(s[500], v[490:511].mean())
    assert s[20:-20].std() < 0.35 * v.std()  # about 1 / sqrt(21) of the noise is left
    assert plots.smooth_label(20) == "centred mean of 21 steps"
    assert plots.smooth([]).size == 0 and plots.smooth([5.0], 1).tolist() == [5.0]


def test_smooth_skips_non_finite_values():
    v = np.r_[np.ones(10), np.nan, np.ones(10), np.inf]
    s = plots.smooth(v, 5)
    np.testing.assert_allclose(s[:-1], 1.0)  # a NaN does not turn every later mean into NaN
    assert np.isnan(plots.smooth([np.nan, np.nan], 3)).all()
