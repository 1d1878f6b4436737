"""``dualnet study init``."""
from __future__ import annotations

import os

import numpy as np

from .. import plots
from ..optimizers import make_optimizer
from ..models import MultiLayerNet
from .common import mlp_loss_curves, progress


INIT_STDS = {"std=1": 1.0, "std=0.01": 0.01, "xavier": "xavier", "he": "he"}


def activation_histograms(dev, activation, init, seed, n=1000, layers=5, width=100):
    """Activations of a ``layers``-deep net of ``width`` units on Gaussian input (no training)."""
    net = MultiLayerNet(width, [width] * layers, 10, activation=activation, weight_init=init,
                        device=dev, dtype="float64", seed=seed)
    x = dev.asarray(np.random.default_rng(seed).standard_normal((n, width)), "float64")
    acts = []
    for layer in net.layers[:-1]:
        x = layer.forward(x)
        if type(layer).__name__ in ("ReLU", "Sigmoid", "Tanh"):
            acts.append(dev.to_numpy(x).ravel())
    return acts


def study_init(dev, out, quick, data_dir, seed, dataset="auto", **_):
    hist = {}
    rows = [(act, name) for act in ("sigmoid", "tanh", "relu")
            for name in ("std=1", "std=0.01", "xavier" if act != "relu" else "he")]
    fig, axes = plots._fig(len(rows), 5, figsize=(13, 2 * len(rows)))
    for row, (act, name) in enumerate(progress(rows, "histograms")):
        acts = activation_histograms(dev, act, INIT_STDS[name], seed)
        hist[f"{act}/{name}"] = {"mean": [float(a.mean()) for a in acts], "std": [float(a.std()) for a in acts]}
        # sigmoid and tanh have fixed ranges; ReLU's is set by the first layer, so the later
        # layers show whether the spread shrinks against the same scale
        rng = (0, 1) if act == "sigmoid" else ((-1, 1) if act == "tanh" else (0, max(1e-6, acts[0].max())))
        for i, a in enumerate(acts):
            ax = axes[row, i]
            ax.hist(a, 30, range=rng)
            ax.set_yticks([])  # counts of 100,000 activations: the shape is what matters
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{act}, {name}: layer {i + 1}", fontsize=8)
    fig.supxlabel("activation value")
    fig.supylabel("count (1000 Gaussian inputs × 100 units per layer)")
    fig.suptitle("Activations of a 5-layer, 100-unit net per weight init (no training)")
    plots.save_fig(fig, os.path.join(out, "init_histograms.png"))

    variants = {name: ({"weight_init": INIT_STDS[name]}, lambda: make_optimizer("sgd", 0.01))
                for name in ("std=0.01", "xavier", "he")}
    data, iters, curves = mlp_loss_curves(dev, data_dir, quick, seed, variants, 300,
                                          "Weight init: 5-layer ReLU MLP, SGD lr 0.01, {data}",
                                          os.path.join(out, "init_training.png"), dataset=dataset)
    return {"data": data.name, "histograms": hist, "final_loss": {k: float(np.mean(c[-20:])) for k, c in curves.items()},
            "iters": iters, "curves": curves}
