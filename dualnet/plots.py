"""PNG plots with matplotlib's Agg backend (no display needed); every file is written atomically.

Conventions every figure of dualnet follows (the tests check them with :func:`unlabelled`):

- a title (the figure's ``suptitle``, or the axes title when there is one panel), and a title
  on every panel of a multi-panel figure;
- labelled x and y axes, on the panel itself or once for the whole figure (``supxlabel``,
  ``supylabel``) when the panels share them;
- curves over iterations are smoothed by :func:`smooth`, a centred window, so a drop in the
  loss is drawn where it happened rather than half a window later;
- curves over epochs start at epoch 1 and have whole-number epoch ticks (:func:`epoch_axis`).
"""
from __future__ import annotations

import io
import math

import numpy as np

from .io import atomic_write

__all__ = ["save_fig", "smooth", "smooth_label", "epoch_axis", "unlabelled", "plot_loss", "plot_accuracy",
           "filter_grid", "plot_filters"]


def _fig(nrows=1, ncols=1, **kw):
    """A new figure and its axes (``plt.subplots``) on the Agg backend.

    Constrained layout is the default: it keeps a figure's suptitle, supxlabel and the panel
    titles from overlapping, which ``tight_layout`` does not do for figure-level labels.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, **kw)


def save_fig(fig, path):
    """Render ``fig`` to PNG at ``path`` atomically, then close it; returns ``path``.

    The closed figure keeps its artists, so a caller (or a test) holding ``fig`` can still
    inspect its titles and labels.
    """
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


# --------------------------------------------------------------------------- smoothing
def smooth(values, k=21):
    """Centred moving average: the mean of the ``k`` points around each point.

    A trailing average of ``k`` points draws every change ``k / 2`` steps late; a centred
    window has no lag (a step in the data stays where it was), and, unlike an EMA started at
    zero, no bias at the start.  Near the ends the window shrinks symmetrically (the first and
    last points are their own mean), so a steep start of a loss curve is not flattened by
    points that come after it.  Non-finite values (a diverged run) are left out of the means
    instead of turning every later mean into NaN; a window with none finite gives NaN.

    Parameters
    ----------
    values : sequence of float, shape (n,)
    k : int
        Window length; an even ``k`` is rounded up to the next odd number (a window centred
        on a point has as many points on each side).

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        return v
    half = max(0, int(k) // 2)
    ok = np.isfinite(v)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(n)
    r = np.minimum(half, np.minimum(i, n - 1 - i))  # the half-width each point can afford
    s, c = sums[i + r + 1] - sums[i - r], counts[i + r + 1] - counts[i - r]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def smooth_label(k=21):
    """How :func:`smooth` with window ``k`` is named in legends and axis labels."""
    return f"centred mean of {2 * (int(k) // 2) + 1} steps"


# --------------------------------------------------------------------------- axes
def epoch_axis(ax, label="epoch"):
    """Label ``ax``'s x axis as epochs, with whole-number ticks only (no "epoch 2.5")."""
    from matplotlib.ticker import MaxNLocator
    if label:
        ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def _text(artist):
    return artist.get_text().strip() if artist is not None else ""


def unlabelled(fig):
    """What ``fig`` lacks of the conventions in the module docstring, as a list of strings
    (empty when nothing is missing).

    Panels that are hidden, or have their axis turned off and show no image (the spare cells
    of a grid), are not counted; image panels (axis off) need only a title.
    """
    # Figure-level texts; private attributes because the public getters (get_suptitle,
    # get_supxlabel) only arrived in matplotlib 3.8 / 3.10 and dualnet supports 3.7.
    title, xlabel, ylabel = (_text(getattr(fig, a, None)) for a in ("_suptitle", "_supxlabel", "_supylabel"))
    panels = [ax for ax in fig.axes if ax.get_visible() and (ax.axison or ax.images)]
    missing = []
    if not panels:
        return ["the figure has no visible panel"]
    if not title and not (len(panels) == 1 and _ax_title(panels[0])):
        missing.append("figure: no title")
    for k, ax in enumerate(panels):
        name = f"panel {k} ({_ax_title(ax) or 'untitled'})"
        if len(panels) > 1 and not _ax_title(ax):
            missing.append(f"{name}: no title")
        if ax.axison:
            if not (ax.get_xlabel().strip() or xlabel):
                missing.append(f"{name}: no x label")
            if not (ax.get_ylabel().strip() or ylabel):
                missing.append(f"{name}: no y label")
    return missing


def _ax_title(ax):
    """The panel's title, whichever of matplotlib's three title slots holds it."""
    return " ".join(t for t in (ax.get_title(loc).strip() for loc in ("left", "center", "right")) if t)


# --------------------------------------------------------------------------- training curves
def plot_loss(iter_loss, path, title="training loss", k=21):
    """Per-step loss (faint) and its centred mean over ``k`` steps."""
    fig, ax = _fig(figsize=(6, 4))
    ax.plot(np.arange(1, len(iter_loss) + 1), iter_loss, lw=0.5, alpha=0.4, label="per step")
    ax.plot(np.arange(1, len(iter_loss) + 1), smooth(iter_loss, k), lw=1.5, label=smooth_label(k))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    return save_fig(fig, path)


def plot_accuracy(history, path, title="accuracy"):
    """Accuracy per epoch: train and test, and validation when ``history["val_acc"]`` has values.

    ``history`` is :attr:`dualnet.training.Trainer.history`: lists ``epoch``, ``train_acc``,
    ``test_acc`` and optionally ``val_acc`` (None, or missing, for epochs without a validation
    score; such epochs are left as gaps in the curve).
    """
    fig, ax = _fig(figsize=(6, 4))
    epochs = history["epoch"]
    ax.plot(epochs, history["train_acc"], "o-", label="train")
    val = history.get("val_acc") or []
    if any(v is not None for v in val):
        ys = [np.nan if v is None else float(v) for v in val]
        ax.plot(epochs[:len(ys)], ys[:len(epochs)], "^-", label="validation")
    if history.get("test_acc"):
        ax.plot(epochs, history["test_acc"], "s-", label="test")
    epoch_axis(ax)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    return save_fig(fig, path)


# --------------------------------------------------------------------------- weights as images
def filter_grid(W):
    """Tile first-layer weights into one image.

    W : (FN, C, FH, FW) conv filters, or (D, H) affine weights with D a square number of
    pixels (one image per hidden unit, as in CS231n's weight visualisation).
    Returns a 2-D (or RGB) array scaled to [0, 1] per tile.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 2:
        side = int(round(math.sqrt(W.shape[0])))
        if side * side == W.shape[0]:
            W = W.T.reshape(-1, 1, side, side)
        elif W.shape[0] % 3 == 0 and int(round(math.sqrt(W.shape[0] // 3))) ** 2 * 3 == W.shape[0]:
            side = int(round(math.sqrt(W.shape[0] // 3)))
            W = W.T.reshape(-1, 3, side, side)
        else:
            raise ValueError(f"cannot show affine weights of shape {W.shape} as images")
    FN, C, FH, FW = W.shape
    cols = int(math.ceil(math.sqrt(FN)))
    rows = int(math.ceil(FN / cols))
    grid = np.ones((rows * (FH + 1) + 1, cols * (FW + 1) + 1, 3 if C == 3 else 1))
    for k in range(FN):
        w = W[k].transpose(1, 2, 0) if C == 3 else W[k, :1].transpose(1, 2, 0)
        lo, hi = w.min(), w.max()
        w = (w - lo) / (hi - lo) if hi > lo else np.zeros_like(w)
        r, c = divmod(k, cols)
        grid[1 + r * (FH + 1):1 + r * (FH + 1) + FH, 1 + c * (FW + 1):1 + c * (FW + 1) + FW] = w
    return grid if C == 3 else grid[:, :, 0]


def plot_filters(W, path, title="first-layer filters"):
    """First-layer weights as a grid of images (:func:`filter_grid`), each scaled to its own
    range: dark is the filter's most negative weight, light its most positive."""
    g = filter_grid(W)
    fig, ax = _fig(figsize=(5, 5))
    ax.imshow(g, cmap=None if g.ndim == 3 else "gray", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return save_fig(fig, path)
