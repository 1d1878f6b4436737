"""``dualnet study NAME``: the experiments of *Deep Learning from Scratch* ch. 6-8 and CS231n.

Each study writes PNG plots and ``NAME.json`` (the numbers behind the plots, the data
used, the device) into ``--out``, runs on any device, and has a ``--quick`` mode for a
2-core CPU in under a minute.  Data: MNIST when its files are present (never
downloaded here), else Fashion-MNIST (``--data-dir``, cache, or Debian's package),
else the embedded 8x8 digits.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from .backend import get_device
from .data import DataError, load_dataset
from .models import MultiLayerNet, Sequential, SimpleConvNet, TwoLayerNet
from .optimizers import make_optimizer, LRSchedule
from . import plots

STUDIES = ("optimizers", "init", "batchnorm", "overfit", "search", "filters", "cs231n")


def add_study_args(p):
    p.add_argument("name", choices=STUDIES + ("all",))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, auto (default) or sim")
    p.add_argument("--quick", action="store_true", help="small version: under a minute on 2 CPU cores")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="studies-out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="parallel processes for `search` on CPU")


# --------------------------------------------------------------------------- shared helpers
def study_data(data_dir=None, flatten=True):
    """MNIST if present, else Fashion-MNIST, else digits; never downloads."""
    for name in ("mnist", "fashion-mnist"):
        try:
            return load_dataset(name, data_dir=data_dir, flatten=flatten, download=False)
        except DataError:
            continue
    return load_dataset("digits", flatten=flatten)


def subset(x, t, n, seed=0):
    idx = np.random.default_rng(seed).permutation(x.shape[0])[:n]
    return x[idx], t[idx]


def train_steps(model, opt, x, t, iters, batch, seed=0, schedule_every=None, schedule=None):
    """Train for ``iters`` random mini-batches of device data; returns the per-step losses.

    Batches are drawn on the device and the losses are read back once, at the end.
    """
    dev = model.device
    xp = dev.xp
    rng = dev.rng(seed)
    N = x.shape[0]
    losses = []
    perm, pos, epoch = rng.permutation(N), 0, 0
    for i in range(iters):
        if pos + batch > N:
            perm, pos = rng.permutation(N), 0
            epoch += 1
            if schedule is not None:
                opt.lr = schedule(epoch)
        idx = perm[pos:pos + batch]
        pos += batch
        losses.append(model.loss(xp.take(x, idx, axis=0), xp.take(t, idx, axis=0), train=True))
        model.backward()
        opt.update(model.params, model.grads)
    return dev.to_numpy(xp.stack(losses)).tolist() if losses else []


def write_json(out, name, doc):
    from .checkpoint import atomic_write
    path = os.path.join(out, f"{name}.json")
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode()))
    return path


def _finite(v):
    return float(v) if math.isfinite(v) else None


# --------------------------------------------------------------------------- optimizers
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


def study_optimizers(dev, out, quick, data_dir, seed):
    paths = quadratic_paths(dev)
    fig, axes = plots._fig(2, 3, figsize=(12, 7))
    X, Y = np.meshgrid(np.arange(-10, 10, 0.05), np.arange(-5, 5, 0.05))
    for ax, (name, d) in zip(axes.ravel(), paths.items()):
        xy = np.array(d["path"])
        ax.contour(X, Y, X ** 2 / 20 + Y ** 2, levels=15, colors="0.7", linewidths=0.6)
        ax.plot(xy[:, 0], xy[:, 1], "o-", color="tab:red", ms=3)
        ax.plot(0, 0, "+k")
        ax.set_title(f"{name} (lr {d['lr']}): f = {d['final_f']:.2g}")
        ax.set_xlim(-10, 10)
        ax.set_ylim(-5, 5)
    plots.save_fig(fig, os.path.join(out, "optimizers_quadratic.png"))

    variants = {name: ({}, lambda name=name: make_optimizer(name, 0.01 if name == "sgd" else None))
                for name in paths}
    data, iters, curves = mlp_loss_curves(dev, data_dir, quick, seed, variants, 200,
                                          "5-layer ReLU MLP on {data}", os.path.join(out, "optimizers_mlp.png"))
    final = {k: float(np.mean(c[-20:])) for k, c in curves.items()}
    return {"data": data.name, "quadratic": paths, "mlp_final_loss": final, "mlp_iters": iters,
            "mlp_curves": curves}


def mlp_loss_curves(dev, data_dir, quick, seed, variants, quick_iters, title, path):
    """Train the book's 5-layer, 100-unit ReLU MLP once per variant (batch 128, 2000 iterations;
    ``quick``: 2000 images, ``quick_iters``) and plot the smoothed loss curves.

    variants : {name: (MultiLayerNet kwargs, optimizer factory)}
    Returns (dataset, iterations, {name: per-step losses}).
    """
    data = study_data(data_dir)
    n, iters = (2000, quick_iters) if quick else (data.x_train.shape[0], 2000)
    x, t = subset(data.x_train, data.t_train, n, seed)
    xd, td = dev.asarray(x, "float32"), dev.asarray(t)
    curves = {}
    for name, (kw, make_opt) in variants.items():
        net = MultiLayerNet(x.shape[1], [100] * 4, data.num_classes, device=dev, seed=seed, **kw)
        curves[name] = train_steps(net, make_opt(), xd, td, iters, 128, seed)
    fig, ax = plots._fig(figsize=(7, 4.5))
    for name, c in curves.items():
        ax.plot(plots.smooth(c, 20), label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(title.format(data=data.name))
    ax.set_ylim(0, None)
    ax.legend()
    plots.save_fig(fig, path)
    return data, iters, curves


# --------------------------------------------------------------------------- init
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


def study_init(dev, out, quick, data_dir, seed):
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


# --------------------------------------------------------------------------- batchnorm
def study_batchnorm(dev, out, quick, data_dir, seed):
    data = study_data(data_dir)
    x, t = subset(data.x_train, data.t_train, 1000, seed)
    xd, td = dev.asarray(x, "float32"), dev.asarray(t)
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
                train_steps(net, opt, xd, td, iters // epochs, 100, seed + len(accs))
                accs.append(net.accuracy(xd, td))
            row["bn" if bn else "plain"] = accs
            ax.plot(range(1, epochs + 1), accs, "-" if bn else "--", label="batchnorm" if bn else "no batchnorm")
        ax.set_title(f"w std {w:.2g}", fontsize=9)
        ax.set_ylim(0, 1)
        res.append(row)
    axes.ravel()[0].legend(fontsize=8)
    plots.save_fig(fig, os.path.join(out, "batchnorm.png"))
    return {"data": data.name, "epochs": epochs, "train_images": 1000, "scales": res}


# --------------------------------------------------------------------------- overfit
def study_overfit(dev, out, quick, data_dir, seed):
    data = study_data(data_dir)
    x, t = subset(data.x_train, data.t_train, 300, seed)
    xte, tte = subset(data.x_test, data.t_test, 2000 if quick else data.x_test.shape[0], seed)
    xd, td, xtd, ttd = (dev.asarray(x, "float32"), dev.asarray(t), dev.asarray(xte, "float32"), dev.asarray(tte))
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
            train_steps(net, opt, xd, td, 3, 100, seed * 1000 + e)
            tr.append(net.accuracy(xd, td))
            te.append(net.accuracy(xtd, ttd))
        res[name] = {"train_acc": tr, "test_acc": te, "final_gap": tr[-1] - te[-1]}
        ax.plot(tr, label="train")
        ax.plot(te, label="test")
        ax.set_title(f"{name}\ngap {tr[-1] - te[-1]:.2f}", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    plots.save_fig(fig, os.path.join(out, "overfit.png"))
    return {"data": data.name, "train_images": 300, "epochs": epochs, "configs": res}


# --------------------------------------------------------------------------- search
def _trial(args):
    """One random-search trial (runs in a worker process on CPU)."""
    spec, lr, wd, x, t, xv, tv, epochs, seed = args
    dev = get_device(spec)
    net = MultiLayerNet(x.shape[1], [100] * 5, 10, weight_decay=wd, device=dev, seed=seed)
    opt = make_optimizer("sgd", lr)
    xd, td, xvd, tvd = dev.asarray(x, "float32"), dev.asarray(t), dev.asarray(xv, "float32"), dev.asarray(tv)
    val, train = [], []
    for e in range(epochs):
        train_steps(net, opt, xd, td, max(1, x.shape[0] // 100), 100, seed + e)
        train.append(net.accuracy(xd, td))
        val.append(net.accuracy(xvd, tvd))
    return {"lr": lr, "weight_decay": wd, "val_acc": val, "train_acc": train, "final_val_acc": val[-1]}


def study_search(dev, out, quick, data_dir, seed, workers=None):
    data = study_data(data_dir)
    x, t = subset(data.x_train, data.t_train, 500, seed)
    n_val = int(0.2 * 500)  # the validation split is carved from the training images only
    xv, tv, x, t = x[:n_val], t[:n_val], x[n_val:], t[n_val:]
    trials = 8 if quick else 100
    epochs = 15 if quick else 50
    rng = np.random.default_rng(seed)
    params = [(10 ** rng.uniform(-6, -2), 10 ** rng.uniform(-8, -4)) for _ in range(trials)]
    jobs = [(dev.spec, lr, wd, x, t, xv, tv, epochs, seed + i) for i, (lr, wd) in enumerate(params)]
    if dev.kind == "cpu" and (workers or os.cpu_count() or 1) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=multiprocessing.get_context("spawn")) as ex:
            results = list(ex.map(_trial, jobs))
    else:
        results = [_trial(j) for j in jobs]
    ranked = sorted(results, key=lambda r: -r["final_val_acc"])
    best = ranked[:min(5 if quick else 20, len(ranked))]
    for i, r in enumerate(best):
        print(f"best-{i + 1}: val acc {r['final_val_acc']:.3f}  lr {r['lr']:.2e}  weight decay {r['weight_decay']:.2e}")
    cols = 5
    rows = int(math.ceil(len(best) / cols))
    fig, axes = plots._fig(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel()[len(best):]:
        ax.set_axis_off()
    for i, (ax, r) in enumerate(zip(axes.ravel(), best)):
        ax.plot(r["val_acc"], label="validation")
        ax.plot(r["train_acc"], "--", label="train")
        ax.set_ylim(0, 1)
        ax.set_title(f"best-{i + 1} lr {r['lr']:.1e}\nwd {r['weight_decay']:.1e}", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    plots.save_fig(fig, os.path.join(out, "search.png"))
    return {"data": data.name, "scored_on": "validation", "train_images": int(x.shape[0]),
            "validation_images": int(n_val), "epochs": epochs, "trials": ranked}


# --------------------------------------------------------------------------- filters
def study_filters(dev, out, quick, data_dir, seed):
    data = study_data(data_dir, flatten=False)
    n = 3000 if quick else data.x_train.shape[0]
    x, t = subset(data.x_train, data.t_train, n, seed)
    shape = x.shape[1:]
    small = shape[-1] < 16
    net = SimpleConvNet(shape, filter_num=30 if not small else 16, filter_size=5 if not small else 3,
                        pad=0 if not small else 1, output_size=data.num_classes, device=dev, seed=seed)
    before = dev.to_numpy(net.params["0.W"]).copy()
    xd, td = dev.asarray(x, "float32"), dev.asarray(t)
    iters = 300 if quick else 3000
    losses = train_steps(net, make_optimizer("adam"), xd, td, iters, 100, seed)
    after = dev.to_numpy(net.params["0.W"])
    xte, tte = subset(data.x_test, data.t_test, 2000, seed)
    acc = net.accuracy(dev.asarray(xte, "float32"), dev.asarray(tte))
    plots.plot_filters(before, os.path.join(out, "filters_before.png"), "conv filters before training")
    plots.plot_filters(after, os.path.join(out, "filters_after.png"), f"after training (test acc {acc:.3f})")
    # CS231n: the first-layer weights of a two-layer net, one image per hidden unit
    xf = x.reshape(x.shape[0], -1)
    two = TwoLayerNet(xf.shape[1], 50 if not small else 25, data.num_classes, weight_init=1e-2, device=dev,
                      seed=seed)
    two_losses = train_steps(two, make_optimizer("sgd", 0.1), dev.asarray(xf, "float32"), td, iters, 100, seed)
    plots.plot_filters(dev.to_numpy(two.params["0.W"]), os.path.join(out, "filters_two_layer_net.png"),
                       "two-layer net: first-layer weights")
    change = float(np.linalg.norm(after - before) / np.linalg.norm(before))
    return {"data": data.name, "iters": iters, "conv_test_acc": acc, "relative_filter_change": change,
            "final_loss": float(np.mean(losses[-20:])), "two_layer_final_loss": float(np.mean(two_losses[-20:]))}


# --------------------------------------------------------------------------- cs231n
def study_cs231n(dev, out, quick, data_dir, seed):
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
    xd, td = dev.asarray(x, "float32"), dev.asarray(t)
    xv, tv = dev.asarray(data.x_val, "float32"), dev.asarray(data.t_val)
    iters = 200 if quick else 1000
    configs = [(1e-4, 0.95, 0.25)] if quick else [(1e-4, 0.95, 0.25), (1e-3, 0.95, 0.25), (1e-3, 0.95, 0.1),
                                                  (5e-4, 0.95, 0.5)]
    trials = []
    best = None
    for lr, decay, reg in configs:
        # CS231n writes L2 as reg * sum(W**2): lambda = 2 * reg here.
        net = TwoLayerNet(x.shape[1], 50, 10, weight_init=1e-4, weight_decay=2 * reg, device=dev, seed=seed)
        opt = make_optimizer("sgd", lr)
        per_epoch = max(1, x.shape[0] // 200)
        losses = train_steps(net, opt, xd, td, iters, 200, seed, schedule=LRSchedule(lr, decay))
        val = net.accuracy(xv, tv)
        trials.append({"lr": lr, "lr_decay": decay, "reg": reg, "val_acc": val,
                       "final_loss": _finite(float(np.mean(losses[-20:]))), "iters_per_epoch": per_epoch})
        if best is None or val > best[0]:
            best = (val, net)
    test_acc = best[1].accuracy(dev.asarray(data.x_test, "float32"), dev.asarray(data.t_test))
    fig, ax = plots._fig(figsize=(6, 4))
    ax.bar(range(len(trials)), [tr["val_acc"] for tr in trials])
    ax.set_xticks(range(len(trials)), [f"lr {tr['lr']:.0e}\nreg {tr['reg']}" for tr in trials], fontsize=7)
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"CS231n two-layer net on CIFAR-10 (best test acc {test_acc:.3f})")
    plots.save_fig(fig, os.path.join(out, "cs231n.png"))
    return {"data": "cifar10", "iters": iters, "trials": trials, "best_val_acc": best[0], "test_acc_of_best": test_acc}


# --------------------------------------------------------------------------- driver
def run_study(name, device="auto", quick=False, out="studies-out", data_dir=None, seed=0, workers=None):
    """Run one study; returns its JSON document (also written to ``out/NAME.json``)."""
    dev = get_device(device)
    os.makedirs(out, exist_ok=True)
    fns = {"optimizers": study_optimizers, "init": study_init, "batchnorm": study_batchnorm,
           "overfit": study_overfit, "filters": study_filters, "cs231n": study_cs231n}
    t0 = time.perf_counter()
    if name == "search":
        doc = study_search(dev, out, quick, data_dir, seed, workers)
    else:
        doc = fns[name](dev, out, quick, data_dir, seed)
    doc.update(study=name, quick=quick, device=dev.spec, device_name=dev.name, seconds=time.perf_counter() - t0)
    write_json(out, name, doc)
    return doc


def cmd_study(args):
    dev = get_device(args.device)
    print(f"device: {dev.spec} ({dev.name})" + (f" - {dev.reason}" if dev.reason else ""))
    for name in (STUDIES if args.name == "all" else (args.name,)):
        doc = run_study(name, dev, args.quick, args.out, args.data_dir, args.seed, args.workers)
        print(f"{name}: data {doc.get('data', '-')}, {doc['seconds']:.1f} s -> {args.out}/{name}.json")
    return 0
