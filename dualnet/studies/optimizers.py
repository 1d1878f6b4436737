"""``dualnet study optimizers``."""
from __future__ import annotations

import os

import numpy as np

from .. import plots
from ..optimizers import make_optimizer
from .common import mlp_loss_curves


def quadratic_paths(device, steps=30):
    """The book's f(x, y) = x**2/20 + y**2 from (-7, 2), each optimizer with its chapter-6 lr."""
    lrs = {"sgd": 0.95, "momentum": 0.1, "nesterov": 0.1, "adagrad": 1.5, "rmsprop": 0.1, "adam": 0.3}
    paths = {}
    for name, lr in lrs.items():
        p = {"x": device.asarray(np.array([-7.0]), "float64"), "y": device.asarray(np.array([2.0]), "float64")}
        opt = make_optimizer(name, lr)
        hist = []
        for _ in range(steps):
            hist.append(p["x"] * 1.0)
            hist.append(p["y"] * 1.0)
            opt.update(p, {"x": p["x"] / 10.0, "y": 2.0 * p["y"]})
        hist += [p["x"], p["y"]]
        xy = device.to_numpy(device.xp.concat(hist)).reshape(-1, 2)
        paths[name] = {"lr": lr, "path": xy.tolist(), "final_f": float(xy[-1, 0] ** 2 / 20 + xy[-1, 1] ** 2)}
    return paths


def plot_quadratic_paths(paths, path):
    """One panel per optimizer: its path over the contours of f, the minimum marked +."""
    fig, axes = plots._fig(2, 3, figsize=(12, 7), sharex=True, sharey=True)
    X, Y = np.meshgrid(np.arange(-10, 10, 0.05), np.arange(-5, 5, 0.05))
    for ax, (name, d) in zip(axes.ravel(), paths.items()):
        xy = np.array(d["path"])
        ax.contour(X, Y, X ** 2 / 20 + Y ** 2, levels=15, colors="0.7", linewidths=0.6)
        ax.plot(xy[:, 0], xy[:, 1], "o-", color="tab:red", ms=3, lw=1)
        ax.plot(0, 0, "+k", ms=10)
        ax.set_title(f"{name} (lr {d['lr']}): final f = {d['final_f']:.2g}")
        ax.set_xlim(-10, 10)
        ax.set_ylim(-5, 5)
        ax.set_xticks([-10, -5, 0, 5, 10])  # the default 2.5 steps run into the next panel's labels
    fig.supxlabel("x")
    fig.supylabel("y")
    fig.suptitle(f"{len(d['path']) - 1} steps on f(x, y) = x²/20 + y² from (−7, 2); minimum at +")
    return plots.save_fig(fig, path)


def study_optimizers(dev, out, quick, data_dir, seed, dataset="auto", **_):
    paths = quadratic_paths(dev)
    plot_quadratic_paths(paths, os.path.join(out, "optimizers_quadratic.png"))

    variants = {name: ({}, lambda name=name: make_optimizer(name, 0.01 if name == "sgd" else None))
                for name in paths}
    data, iters, curves = mlp_loss_curves(dev, data_dir, quick, seed, variants, 200,
                                          "Optimizers: 5-layer ReLU MLP on {data}", os.path.join(out, "optimizers_mlp.png"),
                                          dataset=dataset)
    final = {k: float(np.mean(c[-20:])) for k, c in curves.items()}
    return {"data": data.name, "quadratic": paths, "mlp_final_loss": final, "mlp_iters": iters,
            "mlp_curves": curves}
