"""The flags of the ``dualnet`` command: one parser function per command, the argument types
they share, and the help formatter.  :mod:`dualnet.cli` runs what they parse."""
from __future__ import annotations

import argparse

from . import __version__


def _checked(convert, ok, what):
    """An argparse type: ``convert`` the string, then require ``ok(value)``; errors say ``what``."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a finite positive number")
_fraction = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_nonneg_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_nonneg_float = _checked(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def _device_arg(p):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, auto (default) or sim")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (None, off) or its help
    already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The ``dualnet`` argument parser: one sub-parser per command, each built by its own function."""
    ap = argparse.ArgumentParser(prog="dualnet", description="From-scratch deep learning on NumPy or CuPy.",
                                 formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"dualnet {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _train_flags(sub)
    _evaluate_flags(sub)
    _gradcheck_flags(sub)
    sub.add_parser("info", formatter_class=_Help, help="versions, BLAS, CuPy and GPU status")
    _bench_flags(sub)
    _study_flags(sub)
    return ap


def _takers(option):
    """The models that take run setting ``option`` (each declares its own: ``run_options``)."""
    from .models import MODELS
    return ", ".join(n for n, m in MODELS.items() if option in m.run_options)


def _train_flags(sub):
    from .conv import method_names
    from .data import DATASETS
    from .models import MODELS
    from .optimizers import OPTIMIZERS
    from .runconfig import DEFAULTS as D, EPOCHS_DIGITS, EPOCHS_OTHER, LR_DIGITS_ADAM
    t = sub.add_parser("train", formatter_class=_Help, help="train a model and write metrics, checkpoint and plots")
    # The flags of the run settings (dualnet.runconfig.RunConfig, by their dest) are None when left
    # out: they take the checkpoint's value with --resume, else the run configuration's defaults.
    t.add_argument("--model", choices=list(MODELS), help=f"default: {D['model']}")
    t.add_argument("--dataset", choices=list(DATASETS), help=f"default: {D['dataset']} (embedded, no download)")
    _device_arg(t)
    t.set_defaults(device=None)  # auto; with --resume, the checkpoint's device when it is usable here
    t.add_argument("--epochs", type=_positive_int, help=f"default: {EPOCHS_DIGITS} on digits, {EPOCHS_OTHER} otherwise")
    t.add_argument("--batch-size", type=_positive_int, help=f"default: {D['batch_size']}")
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), help=f"default: {D['optimizer']}")
    t.add_argument("--lr", type=_positive_float, help="default: the optimizer's usual one "
                   f"(adam: 0.001; {LR_DIGITS_ADAM:g} on digits)")
    t.add_argument("--lr-decay", type=_positive_float, help=f"lr *= this after every epoch (default {D['lr_decay']:g})")
    t.add_argument("--weight-decay", type=_nonneg_float, help=f"L2 lambda on weights (default {D['weight_decay']:g})")
    t.add_argument("--dropout", type=_fraction, default=None, help=f"dropout ratio ({_takers('dropout')})")
    t.add_argument("--image-size", type=_positive_int, default=None,
                   help="alexnet: resize images to this side first (default: none when they fit alexnet, "
                        "else 224)")
    t.add_argument("--batchnorm", action="store_true", default=None, help=f"batch normalization ({_takers('batchnorm')})")
    t.add_argument("--seed", type=_nonneg_int, help=f"default: {D['seed']}")
    t.add_argument("--conv", choices=method_names(), default=None,
                   help="convolution algorithm (default: auto; im2col is the book's)")
    t.add_argument("--dtype", choices=["float32", "float64"], help=f"default: {D['dtype']}")
    t.add_argument("--augment", action="store_true", default=None,
                   help="shift training images by up to 2 pixels (1 on 8x8) and mirror at random the "
                        "classes whose mirror image is still that class (clothes, not shoes, in "
                        "fashion-mnist; all of cifar10; no digits) (the book's ch. 8)")
    t.add_argument("--data-dir", default=None, help="folder with the dataset's files (default: the "
                   "cache ~/.cache/dualnet/<name>, then /usr/share/datasets/<name>, then a download)")
    t.add_argument("--val-fraction", type=_fraction,
                   help=f"carve a validation split from the training data (default {D['val_fraction']:g})")
    t.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<model>-<time>); "
                   "must be new or empty unless --resume or --overwrite")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue exactly where CHECKPOINT (checkpoint.npz or interrupted.npz) stopped; "
                        "flags left out take the checkpoint's values, contradicting ones are refused")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in a non-empty --out, replacing its run files")
    t.add_argument("--log-every", type=_positive_int, default=50, help="steps between host syncs")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (none is drawn into "
                   "redirected output anyway)")
    t.add_argument("--no-plots", action="store_true", help="write no PNG figures")


def _evaluate_flags(sub):
    from .data import DATASETS
    e = sub.add_parser("evaluate", formatter_class=_Help, help="test accuracy of a saved model")
    e.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by dualnet train")
    e.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="default: the dataset the checkpoint was trained on")
    e.add_argument("--data-dir", default=None, help="folder with the dataset's files (default: the "
                   "checkpoint's, then the usual lookup)")
    _device_arg(e)


def _gradcheck_flags(sub):
    from .models import MODELS
    g = sub.add_parser("gradcheck", formatter_class=_Help, help="numerical vs backprop gradients, per parameter")
    g.add_argument("--model", choices=list(MODELS), default="simple_convnet", help="model to check")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto or sim")
    g.add_argument("--tol", type=_positive_float, default=1e-6, help="relative error bound (CS231n's rule)")
    g.add_argument("--atol", type=_positive_float, default=1e-8,
                   help="absolute error bound, for gradients that are ~0 (e.g. a bias before batch norm)")
    g.add_argument("--checks", type=_positive_int, default=10, help="elements checked per parameter")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the weights, data and checked elements")


def _bench_flags(sub):
    b = sub.add_parser("bench", formatter_class=_Help, help="throughput of dualnet (and PyTorch) on each device")
    b.add_argument("--devices", default="cpu,cuda", help="comma-separated, e.g. cpu,cuda (default)")
    b.add_argument("--models", default="simple_convnet,deep_convnet,mlp", help="comma-separated")
    b.add_argument("--batch-sizes", default="32,100,256,1024", help="comma-separated batch sizes")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="dtype of the models")
    b.add_argument("--steps", type=_positive_int, default=20,
                   help="timed steps per measurement at least; more (up to 3x) while the spread is above 10%% of the median")
    b.add_argument("--warmup", type=_positive_int, default=3, help="untimed calls of each contender first")
    b.add_argument("--time-budget", type=_positive_float, default=10.0,
                   help="seconds of timed steps per measurement; fewer steps (at least 3) when exceeded")
    b.add_argument("--compare-torch", action="store_true", help="also time PyTorch on the same device")
    b.add_argument("--layers", action="store_true",
                   help="also time a 64->64 conv layer, a large GEMM (the device's peak) and the Adam update")
    b.add_argument("--count-ops", action="store_true",
                   help="count array operations per step (kernel launches on a GPU); works on any device")
    b.add_argument("--conv-batch", type=_positive_int, default=256, help="batch of the 64->64 conv layer benchmark")
    b.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png")
    b.add_argument("--distributed", action="store_true",
                   help="under mpiexec -n K: data-parallel training images/s per rank, the scaling efficiency "
                        "against one process, and the time of the all-reduce (writes bench-distributed.json)")


def _study_flags(sub):
    from .studies import STUDIES
    s = sub.add_parser("study", formatter_class=_Help, help="the book's experiments, as plots and JSON")
    s.add_argument("name", choices=list(STUDIES) + ["all"], help="which experiment (all: every one)")
    _device_arg(s)
    s.add_argument("--quick", action="store_true", help="small version: under a minute on 2 CPU cores")
    s.add_argument("--data-dir", default=None, help="folder with MNIST or Fashion-MNIST (or CIFAR-10 for cs231n)")
    s.add_argument("--dataset", choices=["auto", "mnist", "fashion-mnist", "digits"], default="auto",
                   help="auto: MNIST, else Fashion-MNIST, else the bundled digits")
    s.add_argument("--out", default="studies-out", help="folder for the PNGs and NAME.json")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="seed of weights, subsets and shuffles")
    s.add_argument("--workers", type=_positive_int, default=None, help="parallel processes for `search` on CPU")
