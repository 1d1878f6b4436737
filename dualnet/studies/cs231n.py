"""``dualnet study cs231n``."""
from __future__ import annotations

import os

import numpy as np

from .. import plots
from ..optimizers import LRSchedule, make_optimizer
from ..training import train_steps
from ..data import DataError, load_dataset
from ..models import TwoLayerNet
from .common import finite, progress, source


def study_cs231n(dev, out, quick, data_dir, seed, **_):
    try:
        data = load_dataset("cifar10", data_dir=data_dir, flatten=True, subtract_mean=True, val_fraction=0.02,
                            seed=seed, normalize=False)
    except DataError as e:
        msg = f"skipped: CIFAR-10 is not in --data-dir ({str(e).splitlines()[0]})"
        print(msg)
        return {"skipped": msg}
    x, t = data.x_train, data.t_train
    if quick:
        x, t = x[:5000], t[:5000]
    src = source(dev, x, t, 200)
    xv, tv = dev.asarray(data.x_val, "float32"), dev.asarray(data.t_val)
    iters = 200 if quick else 1000
    configs = [(1e-4, 0.95, 0.25)] if quick else [(1e-4, 0.95, 0.25), (1e-3, 0.95, 0.25), (1e-3, 0.95, 0.1),
                                                  (5e-4, 0.95, 0.5)]
    trials = []
    best = None
    for lr, decay, reg in progress(configs, "trials"):
        # CS231n writes L2 as reg * sum(W**2): lambda = 2 * reg here.
        net = TwoLayerNet(x.shape[1], 50, 10, weight_init=1e-4, weight_decay=2 * reg, device=dev, seed=seed)
        opt = make_optimizer("sgd", lr)
        per_epoch = max(1, x.shape[0] // 200)
        losses = train_steps(net, opt, src, iters, seed, schedule=LRSchedule(lr, decay))
        val = net.accuracy(xv, tv)
        trials.append({"lr": lr, "lr_decay": decay, "reg": reg, "val_acc": val,
                       "final_loss": finite(float(np.mean(losses[-20:]))), "iters_per_epoch": per_epoch})
        if best is None or val > best[0]:
            best = (val, net)
    test_acc = best[1].accuracy(dev.asarray(data.x_test, "float32"), dev.asarray(data.t_test))
    fig, ax = plots._fig(figsize=(6, 4))
    ax.bar(range(len(trials)), [tr["val_acc"] for tr in trials])
    ax.set_xticks(range(len(trials)), [f"lr {tr['lr']:.0e}\nreg {tr['reg']}" for tr in trials], fontsize=7)
    ax.set_xlabel("trial (learning rate, regularization strength)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"CS231n two-layer net on CIFAR-10 (best test acc {test_acc:.3f})")
    plots.save_fig(fig, os.path.join(out, "cs231n.png"))
    return {"data": "cifar10", "iters": iters, "trials": trials, "best_val_acc": best[0], "test_acc_of_best": test_acc}
