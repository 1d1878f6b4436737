"""``dualnet study search``."""
from __future__ import annotations

import math
import os

import numpy as np

from .. import plots
from ..optimizers import make_optimizer
from ..training import train_steps
from ..backend import get_device, tune_allocator
from ..models import MultiLayerNet
from .common import progress, source, study_data, subset


def _trial(args):
    """One random-search trial (runs in a worker process on CPU)."""
    spec, lr, wd, x, t, xv, tv, epochs, seed = args
    dev = get_device(spec)
    net = MultiLayerNet(x.shape[1], [100] * 5, 10, weight_decay=wd, device=dev, seed=seed)
    opt = make_optimizer("sgd", lr)
    src, val_src = source(dev, x, t, 100), source(dev, xv, tv)
    val, train = [], []
    for e in range(epochs):
        train_steps(net, opt, src, max(1, x.shape[0] // 100), seed + e)
        train.append(net.accuracy(src.x, src.t))
        val.append(net.accuracy(val_src.x, val_src.t))
    return {"lr": lr, "weight_decay": wd, "val_acc": val, "train_acc": train, "final_val_acc": val[-1]}


def study_search(dev, out, quick, data_dir, seed, workers=None, dataset="auto", **_):
    data = study_data(data_dir, dataset=dataset)
    x, t = subset(data.x_train, data.t_train, 500, seed)
    n_val = int(0.2 * 500)  # the validation split is carved from the training images only
    xv, tv, x, t = x[:n_val], t[:n_val], x[n_val:], t[n_val:]
    trials = 8 if quick else 100
    epochs = 15 if quick else 50
    rng = np.random.default_rng(seed)
    params = [(10 ** rng.uniform(-6, -2), 10 ** rng.uniform(-8, -4)) for _ in range(trials)]
    jobs = [(dev.spec, lr, wd, x, t, xv, tv, epochs, seed + i) for i, (lr, wd) in enumerate(params)]
    if dev.is_host and (workers or os.cpu_count() or 1) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=tune_allocator) as ex:
            results = list(progress(ex.map(_trial, jobs), "trials", len(jobs)))
    else:
        results = [_trial(j) for j in progress(jobs, "trials")]
    ranked = sorted(results, key=lambda r: -r["final_val_acc"])
    best = ranked[:min(5 if quick else 20, len(ranked))]
    for i, r in enumerate(best):
        print(f"best-{i + 1}: val acc {r['final_val_acc']:.3f}  lr {r['lr']:.2e}  weight decay {r['weight_decay']:.2e}")
    cols = 5
    rows = int(math.ceil(len(best) / cols))
    fig, axes = plots._fig(rows, cols, figsize=(3 * cols, 2.3 * rows + 0.9), squeeze=False, sharex=True, sharey=True)
    for ax in axes.ravel()[len(best):]:
        ax.set_axis_off()
    ep = np.arange(1, epochs + 1)
    for i, (ax, r) in enumerate(zip(axes.ravel(), best)):
        ax.plot(ep, r["val_acc"], label="validation")
        ax.plot(ep, r["train_acc"], "--", label="train")
        ax.set_ylim(0, 1)
        plots.epoch_axis(ax, None)
        ax.set_title(f"#{i + 1}: lr {r['lr']:.1e}, wd {r['weight_decay']:.1e}", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("epoch")
    fig.supylabel("accuracy")
    fig.suptitle(f"Random search: the {len(best)} best of {trials} (learning rate, weight decay) draws by final "
                 f"validation accuracy ({data.name}, {x.shape[0]} training / {n_val} validation images)")
    plots.save_fig(fig, os.path.join(out, "search.png"))
    return {"data": data.name, "scored_on": "validation", "train_images": int(x.shape[0]),
            "validation_images": int(n_val), "epochs": epochs, "trials": ranked}
