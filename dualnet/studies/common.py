"""What the studies share: their data, subsets, and device batch sources."""
from __future__ import annotations

import math

import numpy as np

from .. import plots
from ..data import DataError, load_dataset
from ..errors import ConfigError
from ..models import MultiLayerNet
from ..training import BatchSource, train_steps

__all__ = ["DATASETS", "study_data", "subset", "source", "finite", "progress", "mlp_loss_curves"]

DATASETS = ("auto", "mnist", "fashion-mnist", "digits")


def study_data(data_dir=None, flatten=True, dataset="auto"):
    """The images a study runs on; never downloads.

    Parameters
    ----------
    data_dir : str, optional
        Searched first for MNIST-style files (see :func:`dualnet.data.load_mnist`).
    flatten : bool
    dataset : {"auto", "mnist", "fashion-mnist", "digits"}
        ``"auto"`` (or None): MNIST if its files are present, else Fashion-MNIST, else the
        bundled 8x8 digits.  A name forces that set, so a machine with Debian's Fashion-MNIST
        can still run (and test) what a bare machine runs: ``dataset="digits"``.

    Raises
    ------
    DataError
        ``dataset`` names MNIST or Fashion-MNIST and its files are not found.
    ConfigError
        ``dataset`` is none of the above.
    """
    dataset = dataset or "auto"
    if dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}", param="dataset")
    if dataset == "digits":
        return load_dataset("digits", flatten=flatten)
    if dataset != "auto":
        return load_dataset(dataset, data_dir=data_dir, flatten=flatten, download=False)
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


def progress(iterable, desc, total=None):
    """``iterable`` with a tqdm bar while a long study runs in a terminal.

    ``disable=None`` turns the bar off when stderr is not a terminal, so a study run under
    ``nohup`` or in the tests writes no bar into its log; ``leave=False`` clears a finished
    bar, leaving the one summary line ``dualnet study`` prints per study.
    """
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


def mlp_loss_curves(dev, data_dir, quick, seed, variants, quick_iters, title, path, dataset="auto"):
    """Train the book's 5-layer, 100-unit ReLU MLP once per variant (batch 128, 2000 iterations;
    ``quick``: 2000 images, ``quick_iters``) and plot the smoothed loss curves.

    variants : {name: (MultiLayerNet kwargs, optimizer factory)}
    title : str, formatted with ``data`` (the dataset's name)
    Returns (dataset, iterations, {name: per-step losses}).
    """
    data = study_data(data_dir, dataset=dataset)
    n, iters = (2000, quick_iters) if quick else (data.x_train.shape[0], 2000)
    x, t = subset(data.x_train, data.t_train, n, seed)
    src = source(dev, x, t, 128)
    curves = {}
    for name, (kw, make_opt) in progress(variants.items(), "variants", len(variants)):
        net = MultiLayerNet(x.shape[1], [100] * 4, data.num_classes, device=dev, seed=seed, **kw)
        curves[name] = train_steps(net, make_opt(), src, iters, seed)
    k = 21 if iters >= 500 else 11  # a quick run's 200 steps would lose their shape under 21
    fig, ax = plots._fig(figsize=(7, 4.5))
    steps = np.arange(1, iters + 1)
    for name, c in curves.items():
        ax.plot(steps, plots.smooth(c, k), label=name)
    ax.set_xlabel("iteration (mini-batch of 128)")
    ax.set_ylabel(f"training loss ({plots.smooth_label(k)})")
    ax.set_title(title.format(data=data.name) + f", {n} images")
    ax.set_xlim(0, iters)
    ax.set_ylim(0, None)
    ax.legend()
    plots.save_fig(fig, path)
    return data, iters, curves
