"""``dualnet study filters``."""
from __future__ import annotations

import os

import numpy as np

from .. import plots
from ..optimizers import make_optimizer
from ..training import train_steps
from ..models import SimpleConvNet, TwoLayerNet
from .common import source, study_data, subset


def study_filters(dev, out, quick, data_dir, seed, dataset="auto", **_):
    data = study_data(data_dir, flatten=False, dataset=dataset)
    n = 3000 if quick else data.x_train.shape[0]
    x, t = subset(data.x_train, data.t_train, n, seed)
    shape = x.shape[1:]
    small = shape[-1] < 16
    net = SimpleConvNet(shape, filter_num=30 if not small else 16, filter_size=5 if not small else 3,
                        pad=0 if not small else 1, output_size=data.num_classes, device=dev, seed=seed)
    before = dev.to_numpy(net.params["0.W"]).copy()
    iters = 300 if quick else 3000
    losses = train_steps(net, make_optimizer("adam"), source(dev, x, t, 100), iters, seed)
    after = dev.to_numpy(net.params["0.W"])
    xte, tte = subset(data.x_test, data.t_test, 2000, seed)
    acc = net.accuracy(dev.asarray(xte, "float32"), dev.asarray(tte))
    fn, _, fh, fw = before.shape
    what = f"SimpleConvNet's {fn} first-layer {fh}×{fw} filters"
    plots.plot_filters(before, os.path.join(out, "filters_before.png"), f"{what}\nbefore training (random init)")
    plots.plot_filters(after, os.path.join(out, "filters_after.png"),
                       f"{what}\nafter {iters} Adam steps on {data.name} (test acc {acc:.3f})")
    # CS231n: the first-layer weights of a two-layer net, one image per hidden unit
    xf = x.reshape(x.shape[0], -1)
    two = TwoLayerNet(xf.shape[1], 50 if not small else 25, data.num_classes, weight_init=1e-2, device=dev,
                      seed=seed)
    two_losses = train_steps(two, make_optimizer("sgd", 0.1), source(dev, xf, t, 100), iters, seed)
    plots.plot_filters(dev.to_numpy(two.params["0.W"]), os.path.join(out, "filters_two_layer_net.png"),
                       f"Two-layer net on {data.name}: first-layer weights,\n"
                       f"one {shape[-2]}×{shape[-1]} image per hidden unit ({iters} SGD steps)")
    change = float(np.linalg.norm(after - before) / np.linalg.norm(before))
    return {"data": data.name, "iters": iters, "conv_test_acc": acc, "relative_filter_change": change,
            "final_loss": float(np.mean(losses[-20:])), "two_layer_final_loss": float(np.mean(two_losses[-20:]))}
