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


def _train(net, opt, src, epochs, steps, seed):
    """Training accuracy after each epoch, and the epoch (1-based) whose losses stopped being
    finite, or None.  A diverged network is not trained further: its accuracy after that would be
    argmax over NaN scores, a number that looks like chance but measures nothing."""
    accs = []
    for epoch in range(1, epochs + 1):
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected and recorded below
            losses = train_steps(net, opt, src, steps, seed + len(accs))
        if not all(math.isfinite(v) for v in losses):
            return accs, epoch
        accs.append(net.accuracy(src.x, src.t))
    return accs, None


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
            key = "bn" if bn else "plain"
            accs, row[key + "_diverged_epoch"] = _train(net, opt, src, epochs, iters // epochs, seed)
            row[key] = accs
            ax.plot(range(1, len(accs) + 1), accs, "-" if bn else "--", color="tab:blue" if bn else "tab:orange",
                    label="batchnorm" if bn else "no batchnorm", marker="x" if 0 < len(accs) < epochs else None,
                    markevery=[len(accs) - 1])
            if row[key + "_diverged_epoch"] is not None:
                ax.text(0.98, 0.04 if bn else 0.14, f"{'batchnorm' if bn else 'no batchnorm'}: diverged in epoch "
                        f"{row[key + '_diverged_epoch']}", transform=ax.transAxes, ha="right", fontsize=7)
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
