"""``dualnet study overfit``."""
from __future__ import annotations

import os


from .. import plots
from ..optimizers import make_optimizer
from ..training import train_steps
from ..models import MultiLayerNet
from .common import source, study_data, subset


def study_overfit(dev, out, quick, data_dir, seed, **_):
    data = study_data(data_dir)
    x, t = subset(data.x_train, data.t_train, 300, seed)
    xte, tte = subset(data.x_test, data.t_test, 2000 if quick else data.x_test.shape[0], seed)
    src, test = source(dev, x, t, 100), source(dev, xte, tte)
    epochs = 60 if quick else 201
    configs = {"none": {}, "L2 0.1": {"weight_decay": 0.1}, "L1 0.005": {"weight_decay": 0.005, "regularization": "l1"},
               "dropout 0.2": {"dropout": 0.2}, "L2 0.1 + dropout 0.2": {"weight_decay": 0.1, "dropout": 0.2}}
    res = {}
    fig, axes = plots._fig(1, len(configs), figsize=(4 * len(configs), 3.5), sharey=True)
    for ax, (name, kw) in zip(axes, configs.items()):
        net = MultiLayerNet(x.shape[1], [100] * 6, data.num_classes, device=dev, seed=seed, **kw)
        opt = make_optimizer("sgd", 0.01)
        tr, te = [], []
        for e in range(epochs):
            train_steps(net, opt, src, 3, seed * 1000 + e)
            tr.append(net.accuracy(src.x, src.t))
            te.append(net.accuracy(test.x, test.t))
        res[name] = {"train_acc": tr, "test_acc": te, "final_gap": tr[-1] - te[-1]}
        ax.plot(tr, label="train")
        ax.plot(te, label="test")
        ax.set_title(f"{name}\ngap {tr[-1] - te[-1]:.2f}", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    plots.save_fig(fig, os.path.join(out, "overfit.png"))
    return {"data": data.name, "train_images": 300, "epochs": epochs, "configs": res}
