"""``dualnet study init``."""
from __future__ import annotations

import os

import numpy as np

from .. import plots
from ..optimizers import make_optimizer
from ..models import MultiLayerNet
from .common import mlp_loss_curves


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


def study_init(dev, out, quick, data_dir, seed, **_):
    hist = {}
    fig, axes = plots._fig(9, 5, figsize=(13, 20))
    row = 0
    for act in ("sigmoid", "tanh", "relu"):
        for name in ("std=1", "std=0.01", "xavier" if act != "relu" else "he"):
            acts = activation_histograms(dev, act, INIT_STDS[name], seed)
            hist[f"{act}/{name}"] = {"mean": [float(a.mean()) for a in acts], "std": [float(a.std()) for a in acts]}
            rng = (0, 1) if act == "sigmoid" else ((-1, 1) if act == "tanh" else (0, max(1e-6, acts[0].max())))
            for i, a in enumerate(acts):
                axes[row, i].hist(a, 30, range=rng)
                axes[row, i].set_yticks([])
                axes[row, i].set_title(f"{act}, {name}: layer {i + 1}", fontsize=8)
            row += 1
    fig.tight_layout()
    plots.save_fig(fig, os.path.join(out, "init_histograms.png"))

    variants = {name: ({"weight_init": INIT_STDS[name]}, lambda: make_optimizer("sgd", 0.01))
                for name in ("std=0.01", "xavier", "he")}
    data, iters, curves = mlp_loss_curves(dev, data_dir, quick, seed, variants, 300,
                                          "weight init, 5-layer ReLU MLP, SGD lr 0.01, {data}",
                                          os.path.join(out, "init_training.png"))
    return {"data": data.name, "histograms": hist, "final_loss": {k: float(np.mean(c[-20:])) for k, c in curves.items()},
            "iters": iters, "curves": curves}
