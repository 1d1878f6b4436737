"""PNG plots with matplotlib's Agg backend (no display needed); every file is written atomically."""
from __future__ import annotations

import io
import math

import numpy as np

from .io import atomic_write


def _fig(nrows=1, ncols=1, **kw):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(nrows, ncols, **kw)


def save_fig(fig, path):
    """Render ``fig`` to PNG at ``path`` atomically, then close it."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def smooth(values, k=20):
    """Moving average over ``k`` points (shorter at the start), as a NumPy array."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_loss(iter_loss, path, title="training loss"):
    fig, ax = _fig(figsize=(6, 4))
    ax.plot(iter_loss, lw=0.5, alpha=0.4, label="per iteration")
    ax.plot(smooth(iter_loss), lw=1.5, label="moving average (20)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return save_fig(fig, path)


def plot_accuracy(history, path, title="accuracy"):
    fig, ax = _fig(figsize=(6, 4))
    ax.plot(history["epoch"], history["train_acc"], "o-", label="train")
    ax.plot(history["epoch"], history["test_acc"], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    return save_fig(fig, path)


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
    g = filter_grid(W)
    fig, ax = _fig(figsize=(5, 5))
    ax.imshow(g, cmap=None if g.ndim == 3 else "gray", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return save_fig(fig, path)
