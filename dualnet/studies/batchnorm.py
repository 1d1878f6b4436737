"""``dualnet study batchnorm``."""
from __future__ import annotations

import math
import os

import numpy as np

from .. import plots
from ..optimizers import make_optimizer
from ..training import train_steps
from ..models import MultiLayerNet
from .common import source, study_data, subset


def study_batchnorm(dev, out, quick, data_dir, seed, **_):
    data = study_data(data_dir)
    x, t = subset(data.x_train, data.t_train, 1000, seed)
    src = source(dev, x, t, 100)
    scales = np.logspace(0, -4, num=8 if quick else 16)
    epochs = 10 if quick else 20
    iters = epochs * (1000 // 100)
    res = []
    fig, axes = plots._fig(int(math.ceil(len(scales) / 4)), 4, figsize=(13, 3 * math.ceil(len(scales) / 4)))
    for ax, w in zip(axes.ravel(), scales):
        row = {"weight_std": float(w)}
        for bn in (True, False):
            net = MultiLayerNet(x.shape[1], [100] * 5, data.num_classes, weight_init=float(w),
                                use_batchnorm=bn, device=dev, seed=seed)
            opt = make_optimizer("sgd", 0.01)
            accs = []
            for _ in range(epochs):
                train_steps(net, opt, src, iters // epochs, seed + len(accs))
                accs.append(net.accuracy(src.x, src.t))
            row["bn" if bn else "plain"] = accs
            ax.plot(range(1, epochs + 1), accs, "-" if bn else "--", label="batchnorm" if bn else "no batchnorm")
        ax.set_title(f"w std {w:.2g}", fontsize=9)
        ax.set_ylim(0, 1)
        res.append(row)
    axes.ravel()[0].legend(fontsize=8)
    plots.save_fig(fig, os.path.join(out, "batchnorm.png"))
    return {"data": data.name, "epochs": epochs, "train_images": 1000, "scales": res}
