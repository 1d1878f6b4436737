"""The ``dualnet`` command: train, evaluate, gradcheck, info, bench, study.

This is the front end: it parses flags, calls the library, and turns the errors a
user can cause (every :class:`dualnet.errors.DualnetError`: bad arguments, missing or
damaged data, an unusable device, a diverging loss) into one line on stderr and the
error's exit code.  Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time

from . import __version__
from .cliparse import build_parser
from .errors import DualnetError

EXIT_INTERRUPTED = 130  # what a shell reports for a process ended by Ctrl-C

_COMM = None  # under mpiexec: this rank's dualnet.distributed communicator (train, bench --distributed)


def _launch_comm(spec):
    """The data-parallel communicator when mpiexec started this process among 2 or more, else
    None.  Rank 0 alone prints: the others' stdout goes nowhere (their errors still reach stderr)."""
    from .distributed import init, launch_info
    info = launch_info()
    if info is None or info[1] == 1:
        return None
    comm = init(spec or "auto")
    if not comm.distributed:
        return None
    if not comm.is_root:
        sys.stdout = open(os.devnull, "w")
    return comm


def _rank_prefix():
    return f"rank {_COMM.rank} of {_COMM.size}: " if _COMM is not None else ""


def _end_ranks(code, agreed=False):
    """Under mpiexec, an error that this rank alone met ends every rank (the others would wait for
    it in their next all-reduce); one that all ranks met together (a NaN loss) just returns."""
    if _COMM is not None and not agreed:
        _COMM.abort(code)
    return code


class _OtherRanksRunDir:
    """Ranks other than 0 neither create, lock nor check the run directory: rank 0 writes there."""

    def acquire(self):
        return self

    def release(self):
        pass

    def entries(self):
        return []


class UserError(DualnetError):
    """A mistake on the command line that only the command line can make."""


# --------------------------------------------------------------------------- train
TRAIN_DEFAULTS = {"model": "simple_convnet", "dataset": "digits", "epochs": None, "batch_size": 100,
                  "optimizer": "adam", "lr": None, "lr_decay": 1.0, "weight_decay": 0.0, "seed": 0,
                  "dtype": "float32", "val_fraction": 0.0, "augment": False}

def _model_kwargs(args, data):
    kw = {}
    if args.dropout is not None:
        if args.model not in ("mlp", "deep_convnet", "alexnet"):
            raise UserError(f"--dropout applies to alexnet, mlp and deep_convnet, not {args.model}")
        kw["dropout"] = args.dropout
    if args.batchnorm:
        if args.model not in ("mlp", "simple_convnet"):
            raise UserError(f"--batchnorm applies to mlp and simple_convnet, not {args.model}")
        kw["use_batchnorm"] = True
    if args.conv is not None:
        if args.model not in ("simple_convnet", "deep_convnet", "alexnet"):
            raise UserError(f"--conv applies to simple_convnet, deep_convnet and alexnet, not {args.model}")
        kw["conv_method"] = args.conv
    if getattr(args, "image_size", None) is not None and args.model != "alexnet":
        raise UserError(f"--image-size applies to alexnet, not {args.model}")
    if args.model == "alexnet":
        kw.update(_alexnet_kwargs(getattr(args, "image_size", None), data.sample_shape))
    if args.model == "simple_convnet" and data.sample_shape[-1] < 16:
        kw.update(filter_size=3, pad=1)  # 8x8 digits: keep the spatial size before pooling
    return kw


def _alexnet_kwargs(size, sample_shape):
    """AlexNet's ``resize``: the asked size, else none where the images fit it, else the course's 224."""
    from .errors import ShapeError
    from .models import AlexNet
    if size is None:
        try:
            AlexNet(input_dim=tuple(sample_shape), output_size=2, widths=(1,) * 5, hidden_size=1)
            return {}
        except ShapeError:
            return {"resize": 224}
    return {"resize": size}


# A run's files in its directory (--overwrite replaces them; nothing else there is touched).
RUN_FILES = ("checkpoint.npz", "interrupted.npz", "metrics.json", "loss.png", "accuracy.png", "filters.png")
# What a resumed run continues: a flag left out takes the checkpoint's value, a contradicting one
# is refused (--epochs, --device, --conv, --log-every, --out may change).
RESUME_FIXED = ("model", "dataset", "val_fraction", "batch_size", "optimizer", "lr", "lr_decay",
                "weight_decay", "seed", "dtype", "augment")


def _flag(key):
    return "--" + key.replace("_", "-")


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(abs(float(a)), abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def _resume_settings(args, doc, path):
    """Fill the flags left out from checkpoint ``path``'s run; refuse those that contradict it."""
    cfg = doc["meta"].get("config") or {}
    mc = doc["model"]
    kw = mc.get("model_kwargs") or {}
    facts = {k: cfg[k] for k in RESUME_FIXED if k in cfg}
    facts["dtype"], facts["weight_decay"] = mc["dtype"], mc["weight_decay"]  # what the weights are
    if mc.get("name"):
        facts["model"] = mc["name"]
    if doc.get("optimizer"):
        facts["optimizer"] = doc["optimizer"]["type"].lower()

    from .data import DATASETS
    if cfg.get("dataset") is not None and cfg["dataset"] not in DATASETS:
        raise UserError(f"checkpoint {path} records dataset {cfg['dataset']!r}, none of {', '.join(DATASETS)}")

    def refuse(flag, given, have):
        return UserError(f"{flag} {given} contradicts checkpoint {path}, whose run used {have}; leave "
                         f"{flag} out to continue that run exactly, or start a new run (another --out)")
    for k in RESUME_FIXED:
        given = getattr(args, k)
        if given is not None and k in facts and not _same(given, facts[k]):
            raise refuse(_flag(k), given, f"{k} {facts[k]}")
        if given is None and k in facts:
            setattr(args, k, facts[k])
    if args.dropout is not None and not _same(float(args.dropout), float(kw.get("dropout", 0.0))):
        raise refuse("--dropout", args.dropout, f"dropout {kw.get('dropout', 0.0)}")
    if args.batchnorm and not kw.get("use_batchnorm"):
        raise refuse("--batchnorm", "", "no batch normalization")
    if getattr(args, "image_size", None) is not None and args.image_size != kw.get("resize"):
        raise refuse("--image-size", args.image_size, f"image size {kw.get('resize') or 'of the data'}")
    if args.data_dir is None and cfg.get("data_dir"):
        args.data_dir = cfg["data_dir"]
    if args.epochs is None and _is_count(cfg.get("epochs")):
        args.epochs = cfg["epochs"]
    return cfg


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _raise_interrupted(signum, frame):
    from .training import Interrupted
    raise Interrupted(signum)


def cmd_train(args):
    global _COMM
    from .checkpoint import read_checkpoint
    from .io import RunDir

    comm = _COMM = _launch_comm(args.device)  # None unless mpiexec started several processes

    resume_doc, cfg = None, {}
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues a run and --overwrite starts a new one; pass only one")
        resume_doc, _ = read_checkpoint(args.resume)
        cfg = _resume_settings(args, resume_doc, args.resume)
    for k, default in TRAIN_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    if args.data_dir is not None:
        args.data_dir = os.path.abspath(args.data_dir)
    epochs = args.epochs or (20 if args.dataset == "digits" else 10)
    done = int(resume_doc["meta"].get("epoch", 0)) if resume_doc else 0
    if resume_doc and epochs < done:
        raise UserError(f"--epochs {epochs} is fewer than the {done} epochs checkpoint {args.resume} has "
                        f"already trained; pass --epochs {done + 1} or more to continue it")
    out = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume else
                       os.path.join("runs", f"{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"))
    # The run directory is checked (created, probed, locked) before anything is loaded or trained.
    run_dir = RunDir(out, param="out_dir") if comm is None or comm.is_root else _OtherRanksRunDir()
    run_dir.acquire()
    old_term = None
    try:
        if not args.resume and not args.overwrite:
            there = run_dir.entries()
            if there:
                raise UserError(f"run directory {out} is not empty (it holds {', '.join(there[:4])}"
                                f"{', ...' if len(there) > 4 else ''}); pass --resume "
                                f"{os.path.join(out, 'checkpoint.npz')} to continue that run, --overwrite "
                                f"to replace it, or another --out")
        try:  # SIGTERM ends the command like Ctrl-C (the trainer defers both to a safe point)
            old_term = signal.signal(signal.SIGTERM, _raise_interrupted)
        except ValueError:  # not the main thread
            old_term = None
        return _train(args, out, run_dir, resume_doc, cfg, epochs, comm)
    except KeyboardInterrupt as e:
        if comm is not None and getattr(e, "position", None) is None:
            # stopped outside the trainer, where the ranks do not agree on a step: end them all
            print(f"\ndualnet: {comm.describe()} stopped by a signal outside training; ending every rank",
                  file=sys.stderr)
            _end_ranks(getattr(e, "exit_code", EXIT_INTERRUPTED))
        if comm is not None and not comm.is_root:  # every rank stopped after the same step
            return e.exit_code
        what = "terminated" if getattr(e, "signum", signal.SIGINT) == signal.SIGTERM else "interrupted"
        path = getattr(e, "checkpoint", None)
        if path:
            pos = e.position
            where = (f"step {pos['step']}, {pos['epoch_step']} steps into epoch {pos['epoch'] + 1}"
                     if pos["epoch_step"] else f"step {pos['step']}, after epoch {pos['epoch']}")
            print(f"\n{what}: saved {path} ({where}); resume with: dualnet train --resume {path}",
                  file=sys.stderr)
        else:
            ck = os.path.join(out, "checkpoint.npz")
            print(f"\n{what}: " + (f"nothing new to save; the last checkpoint is {ck}: resume with "
                                   f"dualnet train --resume {ck}" if os.path.exists(ck)
                                   else "stopped before training started; nothing was saved"),
                  file=sys.stderr)
        return getattr(e, "exit_code", EXIT_INTERRUPTED)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        run_dir.release()


def _train(args, out, run_dir, resume_doc, cfg, epochs, comm=None):
    from .backend import get_device
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .errors import DataError, DeviceError
    from .io import WriteError, write_json
    from .models import build_model
    from .optimizers import make_optimizer, LRSchedule
    from .training import Trainer, TrainingDiverged

    note = None
    if comm is not None:
        dev = comm.device  # picked per rank (cuda:<local rank>, or the CPU)
    elif args.device is None and resume_doc is not None and cfg.get("device"):
        try:
            dev = get_device(cfg["device"])
        except DeviceError as e:
            dev = get_device("auto")
            note = (f"note: the checkpoint was trained on {cfg['device']}, which is not usable here ({e}); "
                    f"continuing on {dev.spec}, whose shuffles and dropout masks differ from that device's")
    else:
        dev = get_device(args.device or "auto")
    print(f"device: {dev.describe()}", flush=True)
    if comm is not None:
        print(f"data-parallel: {comm.size} processes ({'one host' if comm.local_size == comm.size else 'several hosts'}), "
              f"gradients all-reduced by {comm.reduce_backend}; each trains on its 1/{comm.size} of every "
              f"batch of {args.batch_size}", flush=True)
    if note:
        print(note, flush=True)
    data = load_dataset(args.dataset, data_dir=args.data_dir, flatten=False,
                        val_fraction=args.val_fraction, seed=args.seed)
    print(data.summary(), flush=True)
    fingerprint = data.fingerprint()
    if resume_doc is not None and cfg.get("data_fingerprint") not in (None, fingerprint):
        raise DataError(f"the {args.dataset} data loaded from {data.source} is not the data checkpoint "
                        f"{args.resume} was trained on (data_dir {cfg.get('data_dir') or 'not given'}, "
                        f"val_fraction {cfg.get('val_fraction')}); pass the data_dir of that run",
                        param="data_dir")
    lr = args.lr
    if lr is None and args.dataset == "digits" and args.optimizer == "adam":
        lr = 0.003  # tuned for the small default run: >= 0.97 in 20 epochs
    opt = make_optimizer(args.optimizer, lr)
    lr = opt.lr
    if resume_doc is not None:
        model, meta = load_checkpoint(args.resume, dev, optimizer=opt, conv_method=args.conv)
        if model.input_shape != tuple(data.sample_shape) or model.output_shape[-1] != data.num_classes:
            raise UserError(f"checkpoint {args.resume} holds a model for samples {model.input_shape} and "
                            f"{model.output_shape[-1]} classes but {args.dataset} has {data.sample_shape} "
                            f"and {data.num_classes}; pass the --dataset it was trained on")
    else:
        model = build_model(args.model, data.sample_shape, data.num_classes, device=dev, dtype=args.dtype,
                            seed=args.seed, weight_decay=args.weight_decay, **_model_kwargs(args, data))
        meta = None
    config = {"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir,
              "data_fingerprint": fingerprint, "device": dev.spec, "device_name": dev.name,
              "epochs": epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": lr,
              "lr_decay": args.lr_decay, "weight_decay": model.weight_decay, "seed": args.seed,
              "dtype": model.dtype, "val_fraction": args.val_fraction, "num_params": model.num_params(),
              "processes": comm.size if comm is not None else 1, "augment": bool(args.augment),
              "mirror_classes": list(data.mirror_classes) if args.augment else [],
              "model_kwargs": dict(getattr(model, "model_kwargs", None) or {}), "conv": args.conv or "auto"}
    if comm is not None:  # ranks started with other flags or data would train apart, silently; each has
        # its own device, and the data's fingerprint (not its folder) must agree
        comm.check_same(dict({k: v for k, v in config.items() if k not in ("device", "device_name", "data_dir")},
                             log_every=args.log_every,
                             resume_position=[meta.get(k) for k in ("epoch", "epoch_step", "step")] if meta else None))
    n_train = data.x_train.shape[0]
    batch = (f"batch {args.batch_size}" if args.batch_size <= n_train else  # the trainer takes what there is
             f"batch {args.batch_size} (more than the {n_train} training images: one step of all {n_train} per epoch)")
    print(model.summary(short=True), flush=True)
    print(f"model: {args.model} ({model.num_params():,} parameters), {args.optimizer} lr {lr:g}, "
          f"{epochs} epochs, {batch}, {model.dtype}; run directory {out}", flush=True)
    tr = Trainer(model, opt, data, epochs=epochs, batch_size=args.batch_size,
                 schedule=LRSchedule(lr, args.lr_decay), out_dir=out, log_every=args.log_every,
                 progress=not args.no_progress, seed=args.seed, config=config, comm=comm,
                 augment=(max(1, round(data.sample_shape[-1] / 14)), data.mirror_classes)
                 if args.augment else None)  # shifts of 2 pixels on 28x28 and 32x32, 1 on 8x8
    if meta is not None:
        tr.restore(meta, args.resume)
        print(f"resuming after epoch {tr.start_epoch}" +
              (f", {tr.start_step} steps into epoch {tr.start_epoch + 1}" if tr.start_step else "") +
              f" (step {tr.step})", flush=True)
        if tr.start_epoch >= epochs:
            print(f"the checkpoint has trained all {epochs} epochs: nothing left to train (pass --epochs "
                  f"{epochs + 1} or more to train further); writing the metrics and plots", flush=True)
    if args.overwrite and (comm is None or comm.is_root):  # everything checked: only now are the earlier run's files replaced
        for name in RUN_FILES:
            p = os.path.join(out, name)
            if os.path.exists(p):
                try:
                    os.unlink(p)
                except OSError as e:
                    raise WriteError(f"cannot remove {p} for --overwrite: {e.strerror or e}; remove it "
                                     f"yourself or choose another --out", param="out_dir") from None
    t0 = time.perf_counter()
    try:
        tr.fit()
    except TrainingDiverged as e:
        ck = os.path.join(out, "checkpoint.npz")
        kept = f"; last good checkpoint: {ck}" if os.path.exists(ck) else "; no checkpoint was written yet"
        e.args = (f"{e}{kept}",)
        raise
    wall = time.perf_counter() - t0
    if comm is not None and not comm.is_root:  # rank 0 alone writes metrics and plots
        return 0
    h = tr.history
    val_acc = h["val_acc"][-1] if h.get("val_acc") else None
    metrics = {"config": config, "device": dev.info(), "history": h,
               "test_acc": h["test_acc"][-1] if h["test_acc"] else None,
               "val_acc": val_acc, "wall_time_s": wall, "steps": tr.step}
    try:
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
    except WriteError as e:
        ck = os.path.join(out, "checkpoint.npz")
        raise WriteError(f"{e}; training finished and {ck} holds the trained model "
                         f"(dualnet evaluate --checkpoint {ck})", param="out_dir") from None
    acc = f"{h['test_acc'][-1]:.4f}" if h["test_acc"] else "n/a"
    print(f"final test accuracy: {acc}" +
          (f" (validation {val_acc:.4f})" if val_acc is not None else "") +
          f"  [{wall:.1f} s; {out}]")
    return 0


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args):
    from .backend import get_device
    from .checkpoint import read_checkpoint, load_checkpoint
    from .data import load_dataset
    doc, _ = read_checkpoint(args.checkpoint)
    cfg = doc["meta"].get("config") or {}
    dataset = args.dataset or cfg.get("dataset")
    if not dataset:
        raise UserError(f"{args.checkpoint} does not record its dataset: pass --dataset")
    data_dir = args.data_dir
    if data_dir is None and dataset == cfg.get("dataset"):
        data_dir = cfg.get("data_dir")  # the folder the run was trained from
    dev = get_device(args.device)
    print(f"device: {dev.describe()}")
    model, _ = load_checkpoint(args.checkpoint, dev)
    data = load_dataset(dataset, data_dir=data_dir)
    if tuple(data.sample_shape) != model.input_shape or data.num_classes != model.output_shape[-1]:
        raise UserError(f"{dataset} samples have shape {data.sample_shape} ({data.num_classes} classes) but "
                        f"the model expects {model.input_shape} ({model.output_shape[-1]} classes); pass "
                        f"the --dataset it was trained on")
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
             "two_layer_net": dict(hidden_size=10, weight_init=0.3),
             "alexnet": dict(widths=[3, 4, 4, 4, 3], hidden_size=6, dropout=0.3, resize=139)}[args.model]
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
# What a device name may be (whether that device is usable here is get_device's question).
_KNOWN_DEVICE = re.compile(r"(cpu|auto|cuda|cuda:\d+|sim|sim:\d+)\Z")


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
    devices = _csv(args.devices)
    unknown = [d for d in devices if not _KNOWN_DEVICE.match(d.strip().lower())]
    if unknown or not devices:  # a device that is not usable here is skipped; one that cannot exist is a mistake
        raise UserError(f"--devices {args.devices!r}: unknown device(s) {', '.join(unknown) or '(none given)'}; "
                        f"name devices as cpu, cuda, cuda:N, auto, sim or sim:N, comma-separated")
    if args.distributed:
        return _bench_distributed(args, models, batches)
    from .io import RunDir
    with RunDir(args.out, param="out"):  # an unusable --out is found before the benchmarks, not after
        result = run_bench(devices, models, batches, args.dtype, args.steps, args.warmup,
                           args.time_budget, args.compare_torch, args.layers, args.conv_batch,
                           count_ops=args.count_ops)
        if not result["records"]:
            why = "; ".join(f"{s['device']}: {s['reason']}" for s in result["skipped"] if s["impl"] == "dualnet")
            raise UserError(f"nothing was measured: no device of --devices {args.devices} is usable "
                            f"({why or 'no record'}); nothing was written")
        print()
        print(table(result))
        j, p = write_result(result, args.out)
    print(f"\nwrote {j} and {p}" if p else f"\nwrote {j} (no bench.png: matplotlib is not installed)")
    return 0


def _bench_distributed(args, models, batches):
    global _COMM
    from .bench import distributed_table, run_distributed_bench
    from .io import write_json
    devices = _csv(args.devices)
    comm = _COMM = _launch_comm(devices[0] if len(devices) == 1 else "auto")
    if comm is None:
        raise UserError("--distributed measures data-parallel training, so it runs under mpiexec with 2 or more "
                        "processes, e.g. mpiexec -n 2 dualnet bench --distributed --devices cpu; this process "
                        "was not started that way")
    print(f"device: {comm.device.describe()}; {comm.size} processes, all-reduce by {comm.reduce_backend}")
    result = run_distributed_bench(comm, models, batches, args.dtype, args.steps, args.warmup)
    if comm.is_root:
        print()
        print(distributed_table(result))
        path = write_json(os.path.join(args.out, "bench-distributed.json"), result)
        print(f"\nwrote {path}")
    return 0


# --------------------------------------------------------------------------- study
def cmd_study(args):
    from .backend import get_device
    from .studies import STUDIES, run_study
    from .io import RunDir
    dev = get_device(args.device)
    print(f"device: {dev.describe()}")
    # --out is created, probed and locked before any study runs (a failed write later is one line too).
    with RunDir(args.out, param="out"):
        for name in (STUDIES if args.name == "all" else (args.name,)):
            doc = run_study(name, dev, args.quick, args.out, args.data_dir, args.seed, args.workers,
                            dataset=args.dataset)
            print(f"{name}: data {doc.get('data', '-')}, {doc['seconds']:.1f} s -> {args.out}/{name}.json")
    return 0


# --------------------------------------------------------------------------- main
FLAG_OF = {"method": "--conv", "conv_method": "--conv",  # arguments whose flag has another name
           "out_dir": "--out"}


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
    global _COMM
    _COMM = None  # set by a command that runs under mpiexec
    ap = build_parser()
    args = ap.parse_args(argv)
    from .backend import tune_allocator
    tune_allocator()  # the process is ours: keep freed blocks for the next step
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "gradcheck": cmd_gradcheck,
                "info": cmd_info, "bench": cmd_bench, "study": cmd_study}
    try:
        return handlers[args.command](args)
    except DualnetError as e:
        from .errors import TrainingDiverged
        agreed = isinstance(e, TrainingDiverged) or getattr(e, "agreed", False)  # met by every rank alike
        if getattr(e, "quiet", False):  # another rank (rank 0) reports it
            return e.exit_code
        if _COMM is None or _COMM.is_root or not agreed:
            print(f"dualnet: error: {_rank_prefix()}{_with_flag(e, ap, args.command)}", file=sys.stderr)
        return _end_ranks(e.exit_code, agreed)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return _end_ranks(EXIT_INTERRUPTED)
    except Exception:
        if _COMM is not None:  # a bug on one rank: show it, then end the others instead of leaving them waiting
            import traceback
            traceback.print_exc()
            _end_ranks(1)
        raise


if __name__ == "__main__":
    sys.exit(main())
