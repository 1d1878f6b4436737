"""The ``dualnet`` command: train, evaluate, gradcheck, info, bench, study.

Errors a user can cause (bad arguments, missing or damaged data, an unusable
device, a diverging loss) end with a one-line reason and a non-zero exit code,
never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class UserError(Exception):
    """Ends the command with this one-line message and exit code 2."""


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
_positive_float = _checked(float, lambda v: v > 0, "a positive number")
_fraction = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _device_arg(p):
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, auto (default) or sim")


def build_parser():
    from .models import MODELS
    from .optimizers import OPTIMIZERS
    from .data import DATASETS
    ap = argparse.ArgumentParser(prog="dualnet", description="From-scratch deep learning on NumPy or CuPy.")
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
    t.add_argument("--weight-decay", type=float, help="L2 lambda on weights (default 0)")
    t.add_argument("--dropout", type=_fraction, default=None, help="dropout ratio (mlp, deep_convnet)")
    t.add_argument("--batchnorm", action="store_true", help="batch normalization (mlp, simple_convnet)")
    t.add_argument("--seed", type=int, help="default: 0")
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
    g.add_argument("--tol", type=_positive_float, default=1e-6)
    g.add_argument("--checks", type=_positive_int, default=10, help="elements checked per parameter")
    g.add_argument("--seed", type=int, default=0)

    sub.add_parser("info", help="versions, BLAS, CuPy and GPU status")

    from .bench import add_bench_args
    add_bench_args(sub.add_parser("bench", help="throughput of dualnet (and PyTorch) on each device"))
    from .studies import add_study_args
    add_study_args(sub.add_parser("study", help="the book's experiments, as plots and JSON"))
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
    if args.model == "simple_convnet" and data.sample_shape[-1] < 16:
        kw.update(filter_size=3, pad=1)  # 8x8 digits: keep the spatial size before pooling
    return kw


def cmd_train(args):
    from .backend import get_device
    from .data import load_dataset
    from .models import build_model
    from .optimizers import make_optimizer, LRSchedule
    from .checkpoint import read_checkpoint, load_checkpoint
    from .trainer import Trainer

    resume_doc = None
    cfg = {}
    if args.resume:
        resume_doc, _ = read_checkpoint(args.resume)
        cfg = resume_doc["meta"].get("config", {})
    for k, default in TRAIN_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, cfg.get(k, default))
    dev = get_device(args.device)
    print(f"device: {dev.spec} ({dev.name})" + (f" - {dev.reason}" if dev.reason else ""), flush=True)
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
        model, meta = load_checkpoint(args.resume, dev, optimizer=opt)
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
    except Exception as e:
        from .trainer import TrainingDiverged
        if isinstance(e, TrainingDiverged):
            ck = os.path.join(out, "checkpoint.npz")
            kept = f"; last good checkpoint: {ck}" if os.path.exists(ck) else "; no checkpoint was written yet"
            print(f"dualnet: error: {e}{kept}", file=sys.stderr)
            return EXIT_DIVERGED
        raise
    wall = time.perf_counter() - t0
    h = tr.history
    val_acc = None
    if data.x_val is not None:
        val_acc = model.accuracy(dev.asarray(data.x_val, model.dtype), dev.asarray(data.t_val))
    metrics = {"config": config, "device": dev.info(), "history": h, "test_acc": h["test_acc"][-1],
               "val_acc": val_acc, "wall_time_s": wall, "steps": tr.step}
    from .checkpoint import atomic_write
    atomic_write(os.path.join(out, "metrics.json"),
                 lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    if not args.no_plots:
        from . import plots
        plots.plot_loss(tr.iter_loss, os.path.join(out, "loss.png"), f"{args.model} on {args.dataset}")
        plots.plot_accuracy(h, os.path.join(out, "accuracy.png"), f"{args.model} on {args.dataset}")
        first = next(k for k in model.params if k.endswith(".W"))
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
    print(f"device: {dev.spec} ({dev.name})" + (f" - {dev.reason}" if dev.reason else ""))
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
    print(f"gradient check of {args.model} on {dev.spec}, float64, {args.checks} elements per parameter")
    ok = True
    for k, e in errors.items():
        good = e < args.tol
        ok &= good
        print(f"  {k:>8} {tuple(model.params[k].shape)!s:>18}  rel error {e:.2e}  {'ok' if good else 'FAIL'}")
    print("PASS" if ok else f"FAIL: some relative errors are >= {args.tol:g}")
    return 0 if ok else 1


# --------------------------------------------------------------------------- info
def blas_info():
    """BLAS library and thread count of NumPy, via threadpoolctl when present."""
    try:
        from threadpoolctl import threadpool_info
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            return {"blas": libs[0].get("internal_api"), "blas_threads": libs[0].get("num_threads"),
                    "blas_version": libs[0].get("version")}
    except Exception:
        pass
    return {"blas": None, "blas_threads": None, "blas_version": None}


def versions():
    import platform
    import numpy
    v = {"python": platform.python_version(), "numpy": numpy.__version__, **blas_info(),
         "cpu_count": os.cpu_count()}
    for mod in ("cupy", "array_api_strict", "array_api_compat", "torch"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            v[mod] = None
    return v


def cmd_info(args):
    from .backend import cuda_status, _cpu_name
    v = versions()
    print(f"dualnet {__import__('dualnet').__version__}")
    print(f"python {v['python']}, numpy {v['numpy']}, array-api-compat {v['array_api_compat']}, "
          f"array-api-strict {v['array_api_strict']}")
    print(f"CPU: {_cpu_name()} ({v['cpu_count']} logical cores); BLAS {v['blas']} {v['blas_version']} "
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


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    from .backend import DeviceError
    from .data import DataError
    from .checkpoint import CheckpointError
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "gradcheck": cmd_gradcheck,
                "info": cmd_info}
    try:
        if args.command == "bench":
            from .bench import cmd_bench
            return cmd_bench(args)
        if args.command == "study":
            from .studies import cmd_study
            return cmd_study(args)
        return handlers[args.command](args)
    except (UserError, DeviceError, DataError, CheckpointError) as e:
        print(f"dualnet: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError) as e:  # shape and configuration mismatches from the library
        print(f"dualnet: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
