"""The ``dualnet`` command: train, evaluate, gradcheck, info, bench, study.

This is the front end: it parses flags, calls the library, and turns the errors a
user can cause (every :class:`dualnet.errors.DualnetError`: bad arguments, missing or
damaged data, an unusable device, a diverging loss) into one line on stderr and the
error's exit code.  Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time

from . import __version__
from .cliparse import build_parser
from .errors import DualnetError, SettingError

EXIT_INTERRUPTED = 130  # what a shell reports for a process ended by Ctrl-C


# --------------------------------------------------------------------------- ranks
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


@contextlib.contextmanager
def _on_ranks(comm):
    """A command's work on the ranks of ``comm`` (None: one process).  An exception leaving it
    carries ``comm`` (as ``e.ranks``) to :func:`main`, which then names this rank in the error and
    ends the other ranks."""
    try:
        yield comm
    except BaseException as e:
        if comm is not None:
            e.ranks = comm
        raise


def _rank_prefix(comm):
    return f"rank {comm.rank} of {comm.size}: " if comm is not None else ""


def _end_ranks(comm, code, agreed=False):
    """Under mpiexec, an error that this rank alone met ends every rank (the others would wait for
    it in their next all-reduce); one that all ranks met together (a NaN loss) just returns."""
    if comm is not None and not agreed:
        comm.abort(code)
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
# A run's files in its directory (--overwrite replaces them; nothing else there is touched).
RUN_FILES = ("checkpoint.npz", "interrupted.npz", "metrics.json", "loss.png", "accuracy.png", "filters.png")


def _raise_interrupted(signum, frame):
    from .training import Interrupted
    raise Interrupted(signum)


def _run_config(args):
    """The run's settings (dualnet.runconfig) from the flags (every one left out is None) and, with
    --resume, the checkpoint: ``(RunConfig, CheckpointRun or None)``, every setting decided."""
    from .runconfig import CheckpointRun, RunConfig
    checkpoint = None
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues a run and --overwrite starts a new one; pass only one")
        checkpoint = CheckpointRun.read(args.resume)
    given = RunConfig(**{k: getattr(args, k) for k in RunConfig.names()})
    return given.resolved(checkpoint), checkpoint


def cmd_train(args):
    from .io import RunDir
    with _on_ranks(_launch_comm(args.device)) as comm:  # None unless mpiexec started several processes
        cfg, checkpoint = _run_config(args)
        out = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume else
                           os.path.join("runs", f"{cfg.dataset}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"))
        # The run directory is checked (created, probed, locked) before anything is loaded or trained.
        run_dir = RunDir(out, param="out_dir") if comm is None or comm.is_root else _OtherRanksRunDir()
        run_dir.acquire()
        old_term = None
        try:
            there = run_dir.entries() if not args.resume and not args.overwrite else []
            if there:
                raise UserError(f"run directory {out} is not empty (it holds {', '.join(there[:4])}"
                                f"{', ...' if len(there) > 4 else ''}); pass --resume "
                                f"{os.path.join(out, 'checkpoint.npz')} to continue that run, --overwrite "
                                f"to replace it, or another --out")
            try:  # SIGTERM ends the command like Ctrl-C (the trainer defers both to a safe point)
                old_term = signal.signal(signal.SIGTERM, _raise_interrupted)
            except ValueError:  # not the main thread
                old_term = None
            return _train(args, cfg, checkpoint, out, comm)
        except KeyboardInterrupt as e:
            return _interrupted(e, out, comm)
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            run_dir.release()


def _interrupted(e, out, comm):
    """Ctrl-C or SIGTERM in ``dualnet train``: say what was saved and how to resume; the exit code."""
    if comm is not None and getattr(e, "position", None) is None:
        # stopped outside the trainer, where the ranks do not agree on a step: end them all
        print(f"\ndualnet: {comm.describe()} stopped by a signal outside training; ending every rank",
              file=sys.stderr)
        _end_ranks(comm, getattr(e, "exit_code", EXIT_INTERRUPTED))
    if comm is not None and not comm.is_root:  # every rank stopped after the same step
        return e.exit_code
    what = "terminated" if getattr(e, "signum", signal.SIGINT) == signal.SIGTERM else "interrupted"
    path = getattr(e, "checkpoint", None)
    if path:
        pos = e.position
        where = (f"step {pos['step']}, {pos['epoch_step']} steps into epoch {pos['epoch'] + 1}"
                 if pos["epoch_step"] else f"step {pos['step']}, after epoch {pos['epoch']}")
        print(f"\n{what}: saved {path} ({where}); resume with: dualnet train --resume {path}", file=sys.stderr)
    else:
        ck = os.path.join(out, "checkpoint.npz")
        print(f"\n{what}: " + (f"nothing new to save; the last checkpoint is {ck}: resume with "
                               f"dualnet train --resume {ck}" if os.path.exists(ck)
                               else "stopped before training started; nothing was saved"), file=sys.stderr)
    return getattr(e, "exit_code", EXIT_INTERRUPTED)


def _train(args, cfg, checkpoint, out, comm):
    """Train the run ``cfg`` (continuing ``checkpoint`` when not None) in run directory ``out``."""
    from .optimizers import LRSchedule
    from .runconfig import rank_settings
    from .training import Trainer
    dev, data, fingerprint = _device_and_data(cfg, checkpoint, comm)
    opt = cfg.make_optimizer()
    lr = opt.lr
    if checkpoint is not None:
        from .checkpoint import load_checkpoint
        model, meta = load_checkpoint(checkpoint.path, dev, optimizer=opt, conv_method=cfg.conv)
        checkpoint.check_model(model, data, cfg)
    else:
        model, meta = cfg.build_model(data, dev), None
    record = cfg.record(fingerprint=fingerprint, data=data, device=dev, model=model, lr=lr,
                        processes=comm.size if comm is not None else 1)
    if comm is not None:  # ranks started with other flags or data would train apart, silently
        comm.check_same(rank_settings(record, args.log_every, meta))
    n_train = data.x_train.shape[0]
    batch = (f"batch {cfg.batch_size}" if cfg.batch_size <= n_train else  # the trainer takes what there is
             f"batch {cfg.batch_size} (more than the {n_train} training images: one step of all {n_train} per epoch)")
    print(model.summary(short=True), flush=True)
    print(f"model: {cfg.model} ({model.num_params():,} parameters), {cfg.optimizer} lr {lr:g}, "
          f"{cfg.epochs} epochs, {batch}, {model.dtype}; run directory {out}", flush=True)
    tr = Trainer(model, opt, data, epochs=cfg.epochs, batch_size=cfg.batch_size,
                 schedule=LRSchedule(lr, cfg.lr_decay), out_dir=out, log_every=args.log_every,
                 progress=not args.no_progress, seed=cfg.seed, config=record, comm=comm,
                 augment=cfg.augmentation(data))
    if meta is not None:
        _restore(tr, meta, checkpoint.path, cfg.epochs)
    if args.overwrite and (comm is None or comm.is_root):  # everything checked: only now are the earlier run's files replaced
        _remove_run_files(out)
    wall = _fit(tr, out)
    if comm is not None and not comm.is_root:  # rank 0 alone writes metrics and plots
        return 0
    _write_results(tr, model, cfg, record, out, wall, plots=not args.no_plots)
    return 0


def _device_and_data(cfg, checkpoint, comm):
    """The run's device (printed, with the data-parallel layout) and its data (printed, and checked
    against the checkpoint's): ``(device, dataset, its fingerprint)``."""
    from .data import load_dataset
    # under mpiexec, each rank's device is picked per rank (cuda:<local rank>, or the CPU)
    dev, note = (comm.device, None) if comm is not None else cfg.device_for(checkpoint)
    print(f"device: {dev.describe()}", flush=True)
    if comm is not None:
        print(f"data-parallel: {comm.size} processes ({'one host' if comm.local_size == comm.size else 'several hosts'}), "
              f"gradients all-reduced by {comm.reduce_backend}; each trains on its 1/{comm.size} of every "
              f"batch of {cfg.batch_size}", flush=True)
    if note:
        print(note, flush=True)
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, flatten=False,
                        val_fraction=cfg.val_fraction, seed=cfg.seed)
    print(data.summary(), flush=True)
    fingerprint = data.fingerprint()
    if checkpoint is not None:
        checkpoint.check_data(data, fingerprint, cfg)
    return dev, data, fingerprint


def _restore(tr, meta, path, epochs):
    tr.restore(meta, path)
    print(f"resuming after epoch {tr.start_epoch}" +
          (f", {tr.start_step} steps into epoch {tr.start_epoch + 1}" if tr.start_step else "") +
          f" (step {tr.step})", flush=True)
    if tr.start_epoch >= epochs:
        print(f"the checkpoint has trained all {epochs} epochs: nothing left to train (pass --epochs "
              f"{epochs + 1} or more to train further); writing the metrics and plots", flush=True)


def _remove_run_files(out):
    from .io import WriteError
    for name in RUN_FILES:
        p = os.path.join(out, name)
        if os.path.exists(p):
            try:
                os.unlink(p)
            except OSError as e:
                raise WriteError(f"cannot remove {p} for --overwrite: {e.strerror or e}; remove it "
                                 f"yourself or choose another --out", param="out_dir") from None


def _fit(tr, out):
    """Run the trainer; the seconds it took.  A diverged loss names the last good checkpoint."""
    from .training import TrainingDiverged
    t0 = time.perf_counter()
    try:
        tr.fit()
    except TrainingDiverged as e:
        ck = os.path.join(out, "checkpoint.npz")
        kept = f"; last good checkpoint: {ck}" if os.path.exists(ck) else "; no checkpoint was written yet"
        e.args = (f"{e}{kept}",)
        raise
    return time.perf_counter() - t0


def _write_results(tr, model, cfg, record, out, wall, plots=True):
    """metrics.json (the run's record, device, history and result) and the plots; the last line."""
    from .io import WriteError, write_json
    h = tr.history
    val_acc = h["val_acc"][-1] if h.get("val_acc") else None
    metrics = {"config": record, "device": model.device.info(), "history": h,
               "test_acc": h["test_acc"][-1] if h["test_acc"] else None,
               "val_acc": val_acc, "wall_time_s": wall, "steps": tr.step}
    try:
        write_json(os.path.join(out, "metrics.json"), metrics)
        if plots:
            _plot(tr, model, cfg, out)
    except WriteError as e:
        ck = os.path.join(out, "checkpoint.npz")
        raise WriteError(f"{e}; training finished and {ck} holds the trained model "
                         f"(dualnet evaluate --checkpoint {ck})", param="out_dir") from None
    acc = f"{h['test_acc'][-1]:.4f}" if h["test_acc"] else "n/a"
    print(f"final test accuracy: {acc}" +
          (f" (validation {val_acc:.4f})" if val_acc is not None else "") +
          f"  [{wall:.1f} s; {out}]")


def _plot(tr, model, cfg, out):
    from . import plots
    title = f"{cfg.model} on {cfg.dataset}"
    plots.plot_loss(tr.iter_loss, os.path.join(out, "loss.png"), title)
    plots.plot_accuracy(tr.history, os.path.join(out, "accuracy.png"), title)
    first = next(k for k, role in model.roles().items() if role == "weight")
    try:
        plots.plot_filters(model.device.to_numpy(model.params[first]), os.path.join(out, "filters.png"))
    except ValueError:
        pass  # affine weights of a non-square input cannot be drawn as images


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
    from .models import MODELS, build_model
    dev = get_device(args.device)
    shape, small = MODELS[args.model].gradcheck_build  # a small version, as the model declares it
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
    from .bench import distributed_table, run_distributed_bench
    from .io import write_json
    devices = _csv(args.devices)
    with _on_ranks(_launch_comm(devices[0] if len(devices) == 1 else "auto")) as comm:
        if comm is None:
            raise UserError("--distributed measures data-parallel training, so it runs under mpiexec with 2 or "
                            "more processes, e.g. mpiexec -n 2 dualnet bench --distributed --devices cpu; this "
                            "process was not started that way")
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


def _flag_namer(parser, command):
    """The command's flag for a Python argument or run setting (``batch_size``: ``--batch-size``), or
    None where the command has no such flag."""
    sub = parser._subparsers._group_actions[0].choices.get(command) if parser._subparsers else None

    def flag(name):
        f = FLAG_OF.get(name, "--" + name.replace("_", "-"))
        return f if sub is not None and f in sub._option_string_actions else None
    return flag


def _with_flag(e, parser, command):
    """The error's message in the command's terms: a run setting's error names the flags, any
    other adds the flag that sets the Python argument it names."""
    flag = _flag_namer(parser, command)
    if isinstance(e, SettingError):
        return e.render(lambda name: flag(name) or name)
    msg = str(e)
    if e.param and flag(e.param):
        msg += f" (command line: {flag(e.param)})"
    return msg


def main(argv=None):
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
        comm = getattr(e, "ranks", None)  # set by a command that runs under mpiexec (_on_ranks)
        agreed = isinstance(e, TrainingDiverged) or getattr(e, "agreed", False)  # met by every rank alike
        if getattr(e, "quiet", False):  # another rank (rank 0) reports it
            return e.exit_code
        if comm is None or comm.is_root or not agreed:
            print(f"dualnet: error: {_rank_prefix(comm)}{_with_flag(e, ap, args.command)}", file=sys.stderr)
        return _end_ranks(comm, e.exit_code, agreed)
    except KeyboardInterrupt as e:
        print("\ninterrupted", file=sys.stderr)
        return _end_ranks(getattr(e, "ranks", None), EXIT_INTERRUPTED)
    except Exception as e:
        comm = getattr(e, "ranks", None)
        if comm is not None:  # a bug on one rank: show it, then end the others instead of leaving them waiting
            import traceback
            traceback.print_exc()
            _end_ranks(comm, 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
