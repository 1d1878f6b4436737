"""The ``dualnet`` command: train, evaluate, gradcheck, info, bench, study.

This is the front end: it parses flags, calls the library, and turns the errors a
user can cause (every :class:`dualnet.errors.DualnetError`: bad arguments, missing or
damaged data, an unusable device, a diverging loss) into one line on stderr and the
error's exit code.  Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .errors import DualnetError

EXIT_INTERRUPTED = 130  # what a shell reports for a process ended by Ctrl-C

class UserError(DualnetError):
    """A mistake on the command line that only the command line can make."""


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


def build_parser():
    from .data import DATASETS
    from .functions import CONV_METHODS
    from .models import MODELS
    from .optimizers import OPTIMIZERS
    ap = argparse.ArgumentParser(prog="dualnet", description="From-scratch deep learning on NumPy or CuPy.")
    ap.add_argument("--version", action="version", version=f"dualnet {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write metrics, checkpoint and plots")
    # Options left unset (None) take the checkpoint's value with --resume, else TRAIN_DEFAULTS.
    t.add_argument("--model", choices=list(MODELS), help="default: simple_convnet")
    t.add_argument("--dataset", choices=list(DATASETS), help="default: digits (embedded, no download)")
    _device_arg(t)
    t.add_argument("--epochs", type=_positive_int, help="default: 20 on digits, 10 otherwise")
    t.add_argument("--batch-size", type=_positive_int, help="default: 100")
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), help="default: adam")
    t.add_argument("--lr", type=_positive_float, help="default: the optimizer's usual one "
                   "(adam: 0.001; 0.003 on digits)")
    t.add_argument("--lr-decay", type=_positive_float, help="lr *= this after every epoch (default 1)")
    t.add_argument("--weight-decay", type=_nonneg_float, help="L2 lambda on weights (default 0)")
    t.add_argument("--dropout", type=_fraction, default=None, help="dropout ratio (mlp, deep_convnet)")
    t.add_argument("--batchnorm", action="store_true", help="batch normalization (mlp, simple_convnet)")
    t.add_argument("--seed", type=_nonneg_int, help="default: 0")
    t.add_argument("--conv", choices=CONV_METHODS, default=None,
                   help="convolution algorithm (default: auto; im2col is the book's)")
    t.add_argument("--dtype", choices=["float32", "float64"], help="default: float32")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--val-fraction", type=_fraction,
                   help="carve a validation split from the training data (default 0)")
    t.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<model>-<time>)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT")
    t.add_argument("--log-every", type=_positive_int, default=50, help="steps between host syncs")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-plots", action="store_true")

    e = sub.add_parser("evaluate", help="test accuracy of a saved model")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="default: the dataset the checkpoint was trained on")
    e.add_argument("--data-dir", default=None)
    _device_arg(e)

    g = sub.add_parser("gradcheck", help="numerical vs backprop gradients, per parameter")
    g.add_argument("--model", choices=list(MODELS), default="simple_convnet")
    g.add_argument("--device", default="cpu")
    g.add_argument("--tol", type=_positive_float, default=1e-6, help="relative error bound (CS231n's rule)")
    g.add_argument("--atol", type=_positive_float, default=1e-8,
                   help="absolute error bound, for gradients that are ~0 (e.g. a bias before batch norm)")
    g.add_argument("--checks", type=_positive_int, default=10, help="elements checked per parameter")
    g.add_argument("--seed", type=_nonneg_int, default=0)

    sub.add_parser("info", help="versions, BLAS, CuPy and GPU status")

    b = sub.add_parser("bench", help="throughput of dualnet (and PyTorch) on each device")
    b.add_argument("--devices", default="cpu,cuda", help="comma-separated, e.g. cpu,cuda (default)")
    b.add_argument("--models", default="simple_convnet,deep_convnet,mlp", help="comma-separated")
    b.add_argument("--batch-sizes", default="32,100,256,1024")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    b.add_argument("--steps", type=_positive_int, default=20,
                   help="timed steps per measurement at least; more (up to 3x) while the spread is above 10%% of the median")
    b.add_argument("--warmup", type=_positive_int, default=3)
    b.add_argument("--time-budget", type=_positive_float, default=10.0,
                   help="seconds of timed steps per measurement; fewer steps (at least 3) when exceeded")
    b.add_argument("--compare-torch", action="store_true", help="also time PyTorch on the same device")
    b.add_argument("--layers", action="store_true",
                   help="also time a 64->64 conv layer, a large GEMM (the device's peak) and the Adam update")
    b.add_argument("--count-ops", action="store_true",
                   help="count array operations per step (kernel launches on a GPU); works on any device")
    b.add_argument("--conv-batch", type=_positive_int, default=256, help="batch of the 64->64 conv layer benchmark")
    b.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png")

    from .studies import STUDIES
    s = sub.add_parser("study", help="the book's experiments, as plots and JSON")
    s.add_argument("name", choices=list(STUDIES) + ["all"])
    _device_arg(s)
    s.add_argument("--quick", action="store_true", help="small version: under a minute on 2 CPU cores")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--out", default="studies-out")
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--workers", type=_positive_int, default=None, help="parallel processes for `search` on CPU")
    return ap


# --------------------------------------------------------------------------- train
TRAIN_DEFAULTS = {"model": "simple_convnet", "dataset": "digits", "epochs": None, "batch_size": 100,
                  "optimizer": "adam", "lr": None, "lr_decay": 1.0, "weight_decay": 0.0, "seed": 0,
                  "dtype": "float32", "val_fraction": 0.0}

def _model_kwargs(args, data):
    kw = {}
    if args.dropout is not None:
        if args.model not in ("mlp", "deep_convnet"):
            raise UserError(f"--dropout applies to mlp and deep_convnet, not {args.model}")
        kw["dropout"] = args.dropout
    if args.batchnorm:
        if args.model not in ("mlp", "simple_convnet"):
            raise UserError(f"--batchnorm applies to mlp and simple_convnet, not {args.model}")
        kw["use_batchnorm"] = True
    if args.conv is not None:
        if args.model not in ("simple_convnet", "deep_convnet"):
            raise UserError(f"--conv applies to simple_convnet and deep_convnet, not {args.model}")
        kw["conv_method"] = args.conv
    if args.model == "simple_convnet" and data.sample_shape[-1] < 16:
        kw.update(filter_size=3, pad=1)  # 8x8 digits: keep the spatial size before pooling
    return kw


def cmd_train(args):
    from .backend import get_device
    from .data import load_dataset
    from .models import build_model
    from .optimizers import make_optimizer, LRSchedule
    from .checkpoint import read_checkpoint, load_checkpoint
    from .training import Trainer, TrainingDiverged

    resume_doc = None
    cfg = {}
    if args.resume:
        resume_doc, _ = read_checkpoint(args.resume)
        cfg = resume_doc["meta"].get("config", {})
    for k, default in TRAIN_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, cfg.get(k, default))
    dev = get_device(args.device)
    print(f"device: {dev.describe()}", flush=True)
    epochs = args.epochs or (20 if args.dataset == "digits" else 10)
    data = load_dataset(args.dataset, data_dir=args.data_dir, flatten=False,
                        val_fraction=args.val_fraction, seed=args.seed)
    print(data.summary(), flush=True)
    lr = args.lr
    if lr is None and args.dataset == "digits" and args.optimizer == "adam":
        lr = 0.003  # tuned for the small default run: >= 0.97 in 20 epochs
    opt = make_optimizer(args.optimizer, lr)
    lr = opt.lr
    if resume_doc is not None:
        model, meta = load_checkpoint(args.resume, dev, optimizer=opt, conv_method=args.conv)
    else:
        model = build_model(args.model, data.sample_shape, data.num_classes, device=dev, dtype=args.dtype,
                            seed=args.seed, weight_decay=args.weight_decay, **_model_kwargs(args, data))
        meta = None
    out = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume else
                       os.path.join("runs", f"{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.makedirs(out, exist_ok=True)
    config = {"model": args.model, "dataset": args.dataset, "device": dev.spec, "device_name": dev.name,
              "epochs": epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": lr,
              "lr_decay": args.lr_decay, "weight_decay": args.weight_decay, "seed": args.seed,
              "dtype": args.dtype, "val_fraction": args.val_fraction, "num_params": model.num_params()}
    print(f"model: {args.model} ({model.num_params():,} parameters), {args.optimizer} lr {lr:g}, "
          f"{epochs} epochs, batch {args.batch_size}, {args.dtype}; run directory {out}", flush=True)
    tr = Trainer(model, opt, data, epochs=epochs, batch_size=args.batch_size,
                 schedule=LRSchedule(lr, args.lr_decay), out_dir=out, log_every=args.log_every,
                 progress=not args.no_progress, seed=args.seed, config=config)
    if meta is not None:
        tr.restore(meta)
        print(f"resuming after epoch {tr.start_epoch} (step {tr.step})", flush=True)
    t0 = time.perf_counter()
    try:
        tr.fit()
    except KeyboardInterrupt:
        print(f"\ninterrupted: saved {getattr(tr, 'interrupted_checkpoint', None)}; "
              f"resume with --resume {getattr(tr, 'interrupted_checkpoint', '')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDiverged as e:
        ck = os.path.join(out, "checkpoint.npz")
        kept = f"; last good checkpoint: {ck}" if os.path.exists(ck) else "; no checkpoint was written yet"
        e.args = (f"{e}{kept}",)
        raise
    wall = time.perf_counter() - t0
    h = tr.history
    val_acc = None
    if data.x_val is not None:
        val_acc = model.accuracy(dev.asarray(data.x_val, model.dtype), dev.asarray(data.t_val))
    metrics = {"config": config, "device": dev.info(), "history": h, "test_acc": h["test_acc"][-1],
               "val_acc": val_acc, "wall_time_s": wall, "steps": tr.step}
    from .io import write_json
    write_json(os.path.join(out, "metrics.json"), metrics)
    if not args.no_plots:
        from . import plots
        plots.plot_loss(tr.iter_loss, os.path.join(out, "loss.png"), f"{args.model} on {args.dataset}")
        plots.plot_accuracy(h, os.path.join(out, "accuracy.png"), f"{args.model} on {args.dataset}")
        first = next(k for k, role in model.roles().items() if role == "weight")
        try:
            plots.plot_filters(dev.to_numpy(model.params[first]), os.path.join(out, "filters.png"))
        except ValueError:
            pass  # affine weights of a non-square input cannot be drawn as images
    print(f"final test accuracy: {h['test_acc'][-1]:.4f}" +
          (f" (validation {val_acc:.4f})" if val_acc is not None else "") +
          f"  [{wall:.1f} s; {out}]")
    return 0


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args):
    from .backend import get_device
    from .checkpoint import read_checkpoint, load_checkpoint
    from .data import load_dataset
    doc, _ = read_checkpoint(args.checkpoint)
    dataset = args.dataset or doc["meta"].get("config", {}).get("dataset")
    if not dataset:
        raise UserError(f"{args.checkpoint} does not record its dataset: pass --dataset")
    dev = get_device(args.device)
    print(f"device: {dev.describe()}")
    model, _ = load_checkpoint(args.checkpoint, dev)
    data = load_dataset(dataset, data_dir=args.data_dir)
    if tuple(data.sample_shape) != model.input_shape:
        raise UserError(f"{dataset} samples have shape {data.sample_shape} but the model expects "
                        f"{model.input_shape}; pass the --dataset it was trained on")
    acc = model.accuracy(dev.asarray(data.x_test, model.dtype), dev.asarray(data.t_test))
    print(f"test accuracy on {dataset}: {acc:.4f} ({data.x_test.shape[0]} images)")
    return 0


# --------------------------------------------------------------------------- gradcheck
def cmd_gradcheck(args):
    from .backend import get_device
    from .gradcheck import check_model
    from .models import build_model
    dev = get_device(args.device)
    small = {"simple_convnet": dict(filter_num=4, hidden_size=10, weight_init=0.3),
             "deep_convnet": dict(dropout=0.3), "mlp": dict(hidden_sizes=[12, 12], use_batchnorm=True),
             "two_layer_net": dict(hidden_size=10, weight_init=0.3)}[args.model]
    shape = (1, 28, 28) if args.model == "deep_convnet" else (1, 10, 10)
    model = build_model(args.model, shape, 10, device=dev, dtype="float64", seed=args.seed,
                        weight_decay=0.01, **small)
    import numpy as np
    hr = np.random.default_rng(args.seed)
    x = dev.asarray(hr.standard_normal((4,) + shape), "float64")
    t = dev.asarray(hr.integers(0, 10, 4))
    errors = check_model(model, x, t, max_checks=args.checks, seed=args.seed)
    print(f"gradient check of {args.model} on {dev.spec}, float64, {args.checks} elements per parameter; "
          f"a parameter passes when its relative error < {args.tol:g} or its absolute error < {args.atol:g}")
    ok = True
    for k, e in errors.items():
        good = e.ok(args.tol, args.atol)
        ok &= good
        print(f"  {k:>8} {tuple(model.params[k].shape)!s:>18}  rel error {e.rel:.2e}  abs error {e.abs:.2e}  "
              f"{'ok' if good else 'FAIL'}")
    print("PASS" if ok else f"FAIL: some relative errors are >= {args.tol:g} with absolute errors >= {args.atol:g}")
    return 0 if ok else 1


# --------------------------------------------------------------------------- info
def cmd_info(args):
    from .backend import cpu_name, cuda_status, versions
    v = versions()
    print(f"dualnet {__version__}")
    print(f"python {v['python']}, numpy {v['numpy']}, array-api-compat {v['array_api_compat']}, "
          f"array-api-strict {v['array_api_strict']}")
    print(f"CPU: {cpu_name()} ({v['cpu_count']} logical cores); BLAS {v['blas']} {v['blas_version']} "
          f"with {v['blas_threads']} threads")
    st = cuda_status()
    print(f"CuPy: {st['cupy_version'] or 'not installed'}" +
          (f", CUDA runtime {st['cuda_runtime']}, driver {st['driver']}" if st["driver"] else ""))
    if st["available"]:
        for d in st["devices"]:
            print(f"  cuda:{d['index']}: {d['name']}, {d['memory_bytes'] / 2**30:.1f} GiB, "
                  f"compute capability {d['compute_capability']}")
    else:
        print(f"GPU: not usable: {st['reason']}")
    print(f"torch (optional, bench only): {v['torch'] or 'not installed'}")
    return 0


# --------------------------------------------------------------------------- bench
def _csv(s, conv=str, flag=""):
    try:
        return [conv(v.strip()) for v in s.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} must be a comma-separated list of integers, got {s!r}") from None


def cmd_bench(args):
    from .bench import BENCH_MODELS, run_bench, table, write_result
    models = _csv(args.models)
    bad = [m for m in models if m not in BENCH_MODELS]
    if bad:
        raise UserError(f"unknown bench model(s) {', '.join(bad)}; choose from {', '.join(BENCH_MODELS)}")
    batches = _csv(args.batch_sizes, int, "--batch-sizes")
    if not batches or min(batches) < 1:
        raise UserError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    result = run_bench(_csv(args.devices), models, batches, args.dtype, args.steps, args.warmup,
                       args.time_budget, args.compare_torch, args.layers, args.conv_batch,
                       count_ops=args.count_ops)
    print()
    print(table(result))
    j, p = write_result(result, args.out)
    print(f"\nwrote {j} and {p}")
    return 0


# --------------------------------------------------------------------------- study
def cmd_study(args):
    from .backend import get_device
    from .studies import STUDIES, run_study
    dev = get_device(args.device)
    print(f"device: {dev.describe()}")
    for name in (STUDIES if args.name == "all" else (args.name,)):
        doc = run_study(name, dev, args.quick, args.out, args.data_dir, args.seed, args.workers)
        print(f"{name}: data {doc.get('data', '-')}, {doc['seconds']:.1f} s -> {args.out}/{name}.json")
    return 0


# --------------------------------------------------------------------------- main
FLAG_OF = {"method": "--conv", "conv_method": "--conv"}  # arguments whose flag has another name


def _with_flag(e, parser, command):
    """The error's message, plus the flag that sets the Python argument it names."""
    msg = str(e)
    if e.param:
        flag = FLAG_OF.get(e.param, "--" + e.param.replace("_", "-"))
        sub = parser._subparsers._group_actions[0].choices.get(command) if parser._subparsers else None
        if sub is not None and flag in sub._option_string_actions:
            msg += f" (command line: {flag})"
    return msg


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "gradcheck": cmd_gradcheck,
                "info": cmd_info, "bench": cmd_bench, "study": cmd_study}
    try:
        return handlers[args.command](args)
    except DualnetError as e:
        print(f"dualnet: error: {_with_flag(e, ap, args.command)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
