"""What the studies share: their data, subsets, and device batch sources."""
from __future__ import annotations

import math

import numpy as np

from .. import plots
from ..data import DataError, load_dataset
from ..models import MultiLayerNet
from ..training import BatchSource, train_steps

__all__ = ["study_data", "subset", "source", "finite", "mlp_loss_curves"]


def study_data(data_dir=None, flatten=True):
    """MNIST if present, else Fashion-MNIST, else digits; never downloads."""
    for name in ("mnist", "fashion-mnist"):
        try:
            return load_dataset(name, data_dir=data_dir, flatten=flatten, download=False)
        except DataError:
            continue
    return load_dataset("digits", flatten=flatten)


def subset(x, t, n, seed=0):
    idx = np.random.default_rng(seed).permutation(x.shape[0])[:n]
    return x[idx], t[idx]


def source(dev, x, t, batch=100):
    """Host arrays ``x``, ``t`` as a :class:`BatchSource` held on ``dev`` (``.x``, ``.t`` are the
    device arrays)."""
    return BatchSource(x, t, dev, "float32", batch, on_device=True)


def finite(v):
    return float(v) if math.isfinite(v) else None


def mlp_loss_curves(dev, data_dir, quick, seed, variants, quick_iters, title, path):
    """Train the book's 5-layer, 100-unit ReLU MLP once per variant (batch 128, 2000 iterations;
    ``quick``: 2000 images, ``quick_iters``) and plot the smoothed loss curves.

    variants : {name: (MultiLayerNet kwargs, optimizer factory)}
    Returns (dataset, iterations, {name: per-step losses}).
    """
    data = study_data(data_dir)
    n, iters = (2000, quick_iters) if quick else (data.x_train.shape[0], 2000)
    x, t = subset(data.x_train, data.t_train, n, seed)
    src = source(dev, x, t, 128)
    curves = {}
    for name, (kw, make_opt) in variants.items():
        net = MultiLayerNet(x.shape[1], [100] * 4, data.num_classes, device=dev, seed=seed, **kw)
        curves[name] = train_steps(net, make_opt(), src, iters, seed)
    fig, ax = plots._fig(figsize=(7, 4.5))
    for name, c in curves.items():
        ax.plot(plots.smooth(c, 20), label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(title.format(data=data.name))
    ax.set_ylim(0, None)
    ax.legend()
    plots.save_fig(fig, path)
    return data, iters, curves
