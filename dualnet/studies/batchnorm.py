"""``dualnet study batchnorm``."""
from __future__ import annotations

import math
import os

import numpy as np

from .. import plots
from ..optimizers import make_optimizer
from ..training import train_steps
from ..models import MultiLayerNet
from .common import progress, source, study_data, subset


def study_batchnorm(dev, out, quick, data_dir, seed, dataset="auto", **_):
    data = study_data(data_dir, dataset=dataset)
    x, t = subset(data.x_train, data.t_train, 1000, seed)
    src = source(dev, x, t, 100)
    scales = np.logspace(0, -4, num=8 if quick else 16)
    epochs = 10 if quick else 20
    iters = epochs * (1000 // 100)
    res = []
    rows = int(math.ceil(len(scales) / 4))
    fig, axes = plots._fig(rows, 4, figsize=(13, 2.6 * rows + 0.8), sharex=True, sharey=True)
    for ax, w in zip(axes.ravel(), progress(scales, "weight scales")):
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
            ax.plot(range(1, epochs + 1), accs, "-" if bn else "--", color="tab:blue" if bn else "tab:orange",
                    label="batchnorm" if bn else "no batchnorm")
        ax.set_title(f"weight std {w:.2g}", fontsize=9)
        ax.set_ylim(0, 1)
        plots.epoch_axis(ax, None)
        res.append(row)
    axes.ravel()[0].legend(fontsize=8, loc="upper left")  # the empty corner at every scale
    fig.supxlabel("epoch")
    fig.supylabel("training accuracy")
    fig.suptitle(f"Batch normalization over {len(scales)} initial weight scales: 6-layer ReLU MLP, "
                 f"SGD lr 0.01, 1000 {data.name} images")
    plots.save_fig(fig, os.path.join(out, "batchnorm.png"))
    return {"data": data.name, "epochs": epochs, "train_images": 1000, "scales": res}
