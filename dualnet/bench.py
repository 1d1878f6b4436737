"""``dualnet bench``: throughput of the same code on each device, with PyTorch as a yardstick.

Measurements go through :mod:`dualnet.timing` with the device's own timer
(``device.timer()``: its ``stop`` synchronizes the device before reading the clock, CUDA
events on a GPU): warm-up first, dualnet and PyTorch interleaved call by call, the median
and inter-quartile range reported.  All devices, models and batch sizes run in one process,
so the ratios compare like with like.  PyTorch (``--compare-torch``) is optional and never a
dependency; its network is the twin derived from the dualnet model's own layers
(:mod:`dualnet.torch_twin`), with the same initial weights and the same batch.
"""
from __future__ import annotations

import os
import platform

import numpy as np

from . import microbatch
from .backend import cuda_status, get_device, tune_allocator, versions
from .errors import DeviceError
from .io import write_json
from .timing import SPREAD_WARN, summarize, time_interleaved, time_stages, time_steps

__all__ = ["BENCH_MODELS", "SCHEMA_KEYS", "run_bench", "measure", "table", "write_result", "plot",
           "run_distributed_bench", "distributed_table", "time_interleaved", "time_stages", "time_steps",
           "summarize"]

BENCH_MODELS = ("simple_convnet", "deep_convnet", "mlp", "alexnet")
# The largest batch a model is benched at on the host (the CPU): AlexNet at 227x227 takes seconds
# per training step of 32 images on a laptop CPU, minutes per measurement at 1024.
HOST_MAX_BATCH = {"alexnet": 32}
SCHEMA_KEYS = ("impl", "device", "device_name", "model", "batch_size", "dtype", "phase", "images_per_s",
               "step_ms_median", "step_ms_iqr", "peak_mem_bytes", "steps")


# --------------------------------------------------------------------------- the models and their batch
def input_shape(name):
    """One sample's shape for bench model ``name`` (MNIST-sized; AlexNet at its own 227x227x3),
    the same for dualnet and torch."""
    return {"mlp": (784,), "alexnet": (3, 227, 227)}.get(name, (1, 28, 28))


def num_classes(name):
    return 1000 if name == "alexnet" else 10


def make_model(name, device, dtype, seed=0):
    """Bench model ``name`` on ``device``; one seed gives the same initial weights on every device."""
    from .models import build_model
    shape = input_shape(name)
    kw = {"hidden_sizes": [100, 100, 100, 100]} if name == "mlp" else {}
    return build_model(name, shape, num_classes(name), device=device, dtype=dtype, seed=seed, **kw), shape


def bench_batch(name, batch):
    """The host batch both libraries train on: x (batch, *input_shape) uniform in [0, 1) and
    labels t (batch,) in 0..9, float64 and int64 NumPy arrays."""
    rng = np.random.default_rng(0)
    return rng.random((batch,) + input_shape(name)), rng.integers(0, 10, batch)


# --------------------------------------------------------------------------- dualnet side
def dualnet_contenders(device, model_name, batch, dtype):
    """``{"train": fn, "infer": fn}`` for one dualnet model on ``device`` (a training step is
    :func:`dualnet.training.train_step` with Adam)."""
    from .optimizers import Adam
    from .training import train_step
    model, _ = make_model(model_name, device, dtype)
    opt = Adam(1e-3)
    xh, th = bench_batch(model_name, batch)
    x, t = device.asarray(xh, dtype), device.asarray(th)

    def train():
        with device.bind():
            train_step(model, opt, x, t)

    def infer():
        with device.bind():
            model.predict(x, train=False)
    # what "auto" makes of the batch (dualnet.microbatch: cache-sized parts on the host), recorded
    train.micro_batch, infer.micro_batch = (microbatch.size(model, batch, p) for p in (True, False))
    return {"train": train, "infer": infer}


def ops_per_step(device, model_name, batch, dtype):
    """Array operations (kernel launches on a GPU) of one training step and one inference pass,
    counted on a :class:`dualnet.backend.CountingDevice` around ``device`` after a first step
    (which creates the optimizer's state)."""
    from .backend import CountingDevice
    counting = CountingDevice(device)
    fns = dualnet_contenders(counting, model_name, batch, dtype)
    out = {}
    with counting.bind():
        for phase, fn in fns.items():
            fn()
            counting.ops = 0
            fn()
            out[phase] = counting.ops
    return out


# --------------------------------------------------------------------------- torch side
def torch_status():
    try:
        import torch
        return torch, None
    except Exception as e:
        return None, f"PyTorch is not installed ({type(e).__name__}); pip install torch to compare"


def torch_model(torch, name):
    """PyTorch's twin of bench model ``name``: derived from the dualnet model's layers, with its
    initial weights (float64, on the host; the caller moves it)."""
    from .torch_twin import torch_twin
    return torch_twin(torch, make_model(name, get_device("cpu"), "float32")[0], copy_weights=True)


def torch_contenders(torch, device, model_name, batch, dtype):
    """``({"train": fn, "infer": fn}, timer_factory, peak_memory(fn))`` for the same model in
    PyTorch on the same hardware, trained on the same batch; raises where PyTorch has no such device.

    The timer is ``device``'s own: on a GPU its events are recorded on the default stream,
    which PyTorch's kernels run on too, so one clock times both libraries.
    """
    if device.torch_device is None:
        raise DeviceError(f"PyTorch has no counterpart of {device.spec}")
    tdev = torch.device(device.torch_device)
    tdtype = getattr(torch, dtype)
    torch.manual_seed(0)   # the dropout masks
    net = torch_model(torch, model_name).to(tdev, tdtype)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    xh, th = bench_batch(model_name, batch)
    x, t = torch.from_numpy(xh).to(tdev, tdtype), torch.from_numpy(th).to(tdev)

    def train():
        net.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), t).backward()
        opt.step()

    def infer():
        net.eval()
        with torch.no_grad():
            net(x)
    return {"train": train, "infer": infer}, device.timer, lambda fn: _torch_peak(torch, tdev, fn)


def _torch_peak(torch, tdev, fn):
    """Bytes PyTorch allocated at the peak of ``fn()`` beyond what was allocated before it, as
    :meth:`dualnet.backend.Device.peak_memory` counts; None on the CPU, whose allocator reports
    nothing (see :func:`torch_cpu_peak`)."""
    if tdev.type != "cuda":
        return None
    torch.cuda.synchronize(tdev)
    torch.cuda.reset_peak_memory_stats(tdev)
    before = torch.cuda.memory_allocated(tdev)
    fn()
    torch.cuda.synchronize(tdev)
    return int(torch.cuda.max_memory_allocated(tdev) - before)


def torch_cpu_peak(model_name, batch, dtype, phase, timeout=120):
    """PyTorch's peak host memory for one ``phase`` ("train" or "infer") of ``model_name``, in a
    fresh process; None when the child fails or the kernel offers no resettable high water.

    PyTorch's CPU allocator reports to no tracer, so the measure is the resident set: after one
    warm-up call (Adam's moments, oneDNN's primitives, library pages read in on first use), the
    high water is reset (``/proc/self/clear_refs``, Linux >= 4.0) and the result is the high
    water of a second call minus the resident set just before it.  The child runs with glibc's
    ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB, so each large block is mapped when allocated and
    returned when freed: the resident set then follows the live blocks instead of memory that
    malloc keeps for reuse (without it a second call reused the first's pages and measured
    0-11 MB for DeepConvNet; the process-lifetime ``ru_maxrss`` counted the ~300 MB of
    importing PyTorch instead).
    """
    import json
    import subprocess
    import sys
    code = ("import json, resource, sys, torch; from dualnet import bench; torch.set_num_threads(%d); "
            "fns, _, _ = bench.torch_contenders(torch, bench.get_device('cpu'), %r, %d, %r); "
            "fn = fns[%r]; fn(); "
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize(); "
            "open('/proc/self/clear_refs', 'w').write('5'); "
            "before = rss(); fn(); "
            "hwm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
            "print(json.dumps(hwm - before))"
            % (torch_threads(), model_name, batch, dtype, phase))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
        return max(0, int(json.loads(r.stdout.strip().splitlines()[-1]))) if r.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return None


def torch_threads():
    try:
        import torch
        return torch.get_num_threads()
    except Exception:  # no torch: the child fails and says so by returning nothing
        return 1


# --------------------------------------------------------------------------- layer micro-benchmarks
def bench_layers(device, dtype, batch, steps, warmup, budget, gemm_n=None):
    """Conv 64->64 3x3 on 32x32 (forward, backward, achieved GEMM FLOP/s), a large GEMM as the
    device's measured peak, and the Adam update of SimpleConvNet's parameters."""
    with device.bind():
        return _bench_layers(device, dtype, batch, steps, warmup, budget, gemm_n)


def _bench_layers(device, dtype, batch, steps, warmup, budget, gemm_n):
    from .layers import Convolution
    from .optimizers import Adam
    xp = device.xp
    rng = np.random.default_rng(0)
    conv = Convolution(64, 64, 3, 1, 1, device=device, dtype=dtype)
    x = device.asarray(rng.random((batch, 64, 32, 32)), dtype)
    out = conv.forward(x)
    dout = device.asarray(rng.random(tuple(out.shape)), dtype)
    recs = []
    flops_fwd = 2.0 * batch * 64 * 32 * 32 * 64 * 9        # the forward GEMM
    for phase, fn, flops in (("conv_forward", lambda: conv.forward(x), flops_fwd),
                             ("conv_backward", lambda: conv.backward(dout), 2 * flops_fwd)):
        times = time_steps(device.timer, fn, steps, warmup, budget)
        s = summarize(times, batch)
        recs.append({"impl": "dualnet", "model": "conv64x64_3x3_32x32", "phase": phase,
                     "gflops": flops / (s["step_ms_median"] / 1e3) / 1e9, "peak_mem_bytes": None, **s})
    n = gemm_n or (2048 if device.is_host else 8192)
    a = device.asarray(rng.random((n, n)), dtype)
    b = device.asarray(rng.random((n, n)), dtype)
    times = time_steps(device.timer, lambda: xp.matmul(a, b), steps, warmup, budget)
    s = summarize(times, 1)
    recs.append({"impl": "dualnet", "model": f"gemm{n}", "phase": "gemm_peak", "peak_mem_bytes": None,
                 "gflops": 2.0 * n ** 3 / (s["step_ms_median"] / 1e3) / 1e9, **s})
    model, shape = make_model("simple_convnet", device, dtype)
    grads = {k: xp.ones_like(v) * 1e-3 for k, v in model.params.items()}
    opt = Adam(1e-3)
    times = time_steps(device.timer, lambda: opt.update(model.params, grads), steps, warmup, budget)
    recs.append({"impl": "dualnet", "model": "simple_convnet", "phase": "adam_update", "peak_mem_bytes": None,
                 "params": model.num_params(), **summarize(times, 1)})
    for r in recs:
        r["batch_size"] = batch if r["phase"].startswith("conv") else None
    return recs


# --------------------------------------------------------------------------- driver
def environment():
    v = versions()
    st = cuda_status()
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        load = None
    v.update({"platform": platform.platform(), "cuda_driver": st["driver"], "cuda_runtime": st["cuda_runtime"],
              "gpus": [d["name"] for d in st["devices"]], "load_avg_1min": load})
    return v


def run_bench(devices, models, batch_sizes, dtype="float32", steps=20, warmup=3, time_budget=10.0,
              compare_torch=False, layers=False, conv_batch=256, gemm_n=None, count_ops=False, log=print):
    """Run every measurement; returns ``{"environment", "records", "skipped", "warnings"}``.

    dualnet and PyTorch (``compare_torch``) are timed interleaved, call by call, for each
    model, batch size and phase (:func:`measure`).  ``count_ops`` adds ``ops_per_step`` (array
    operations, i.e. kernel launches on a GPU) to dualnet's records; ``layers`` adds the layer
    micro-benchmarks.
    """
    tune_allocator()  # as in a training run: freed blocks kept for the next step
    records, skipped = [], []
    env = environment()
    warnings = _busy_warning(env)
    torch, torch_reason = torch_status() if compare_torch else (None, None)
    if compare_torch and torch is None:
        skipped.append({"impl": "torch", "device": "*", "reason": torch_reason})
        log(f"skipped torch: {torch_reason}")
    timing = {"steps": steps, "warmup": warmup, "time_budget": time_budget}
    for spec in devices:
        try:
            dev = get_device(spec)
        except DeviceError as e:
            skipped.append({"impl": "dualnet", "device": spec, "reason": str(e)})
            log(f"skipped {spec}: {e}")
            continue
        for m in models:
            for b in batch_sizes:
                recs, skips = measure(dev, m, b, dtype, torch, count_ops, log, **timing)
                records += recs
                skipped += skips
        if layers:
            for r in bench_layers(dev, dtype, conv_batch, steps, warmup, time_budget, gemm_n):
                records.append({"device": dev.spec, "device_name": dev.name, "dtype": dtype, **r})
                log(_line(records[-1]))
    _add_ratios(records)
    warnings += _unstable_warning(records)
    for w in warnings:
        log(f"warning: {w}")
    return {"environment": env, "records": records, "skipped": skipped, "warnings": warnings}


def measure(dev, model_name, batch, dtype="float32", torch=None, count_ops=False, log=print, **timing):
    """The records of one model at one batch size on one device, and what was skipped.

    A training step and an inference pass of dualnet, each timed interleaved with PyTorch's
    twin when ``torch`` (the module) is given; ``timing`` goes to
    :func:`dualnet.timing.time_interleaved` (``steps``, ``warmup``, ``time_budget``).

    Returns
    -------
    records : list of dict   one per (implementation, phase), the keys of ``SCHEMA_KEYS`` and more
    skipped : list of dict   ``{"impl", "device", "model", "reason", ...}``
    """
    skip = _host_cap(dev, model_name, batch)
    if skip:
        log(f"skipped {model_name} b={batch} on {dev.spec}: {skip['reason']}")
        return [], [skip]
    ours = dualnet_contenders(dev, model_name, batch, dtype)
    theirs, skipped = _torch_side(torch, dev, model_name, batch, dtype, log)
    ops = ops_per_step(dev, model_name, batch, dtype) if count_ops else {}
    base = {"device": dev.spec, "device_name": dev.name, "dtype": dtype, "model": model_name, "batch_size": batch}
    records = []
    for phase in ("train", "infer"):
        contenders, peaks = _phase_contenders(dev, ours, theirs, phase, (model_name, batch, dtype))
        with dev.bind():
            times = time_interleaved(contenders, **timing)
        for impl, ts in times.items():
            r = {**base, "impl": impl, "phase": phase, "peak_mem_bytes": peaks[impl],
                 "peak_mem_method": _peak_method(impl, dev), **summarize(ts, batch)}
            if impl == "dualnet":
                r["micro_batch"] = ours[phase].micro_batch   # samples per micro-batch (= batch: whole)
                if phase in ops:
                    r["ops_per_step"] = ops[phase]
            records.append(r)
            log(_line(r))
    return records, skipped


def _host_cap(dev, model_name, batch):
    """The skip record of a batch too large for the host (``HOST_MAX_BATCH``), or None."""
    cap = HOST_MAX_BATCH.get(model_name)
    if not (cap and batch > cap and dev.is_host):
        return None
    reason = (f"{model_name} at batch {batch} on {dev.spec} would take minutes per measurement; "
              f"benched on the host up to batch {cap}")
    return {"impl": "dualnet", "device": dev.spec, "model": model_name, "batch_size": batch, "reason": reason}


def _torch_side(torch, dev, model_name, batch, dtype, log):
    """PyTorch's contenders (:func:`torch_contenders`), or None and the skip saying why; None and
    no skip without ``torch``."""
    if torch is None:
        return None, []
    try:
        return torch_contenders(torch, dev, model_name, batch, dtype), []
    except Exception as e:  # e.g. a CPU-only torch build asked for CUDA
        log(f"skipped torch on {dev.spec}: {e}")
        return None, [{"impl": "torch", "device": dev.spec, "model": model_name, "reason": str(e)}]


def _phase_contenders(dev, ours, theirs, phase, what):
    """``({impl: (timer_factory, fn)}, {impl: peak bytes})`` of one phase; ``what`` is
    (model, batch, dtype), for PyTorch's CPU peak measured in a fresh process."""
    contenders = {"dualnet": (dev.timer, ours[phase])}
    peaks = {"dualnet": dev.peak_memory(ours[phase])}
    if theirs is not None:
        fns, timer_factory, peak = theirs
        contenders["torch"] = (timer_factory, fns[phase])
        peaks["torch"] = peak(fns[phase])
        if peaks["torch"] is None and dev.is_host:
            peaks["torch"] = torch_cpu_peak(*what, phase)
    return contenders, peaks


def _busy_warning(env):
    """A warning when the machine was already busy (load average above half its cores)."""
    load, cores = env.get("load_avg_1min"), env.get("cpu_count") or 1
    if load is not None and load > 0.5 * cores:
        return [f"the machine was busy when the bench started (load average {load:.1f} on "
                f"{cores} cores): timings may be slow and noisy"]
    return []


def _unstable_warning(records):
    """A warning naming the measurements whose spread stayed above ``SPREAD_WARN``."""
    unstable = [r for r in records if r.get("unstable")]
    if not unstable:
        return []
    names = ", ".join(f"{r['impl']} {r['device']} {r['model']} b={r.get('batch_size')} {r['phase']}"
                      for r in unstable[:4])
    return [f"{len(unstable)} of {len(records)} measurements kept an IQR above {SPREAD_WARN:.0%} of "
            f"their median within the time budget: treat them as rough ({names}"
            + (", ..." if len(unstable) > 4 else "") + ")"]


# --------------------------------------------------------------------------- rows, tables and the figure
def _peak_method(impl, dev):
    """How ``peak_mem_bytes`` was measured: every measure is the peak of one call above what was
    allocated before it."""
    if dev.is_host:
        return "tracemalloc" if impl == "dualnet" else "rss high water of a second call, fresh process"
    return "cupy pool hook" if impl == "dualnet" else "torch.cuda.max_memory_allocated"


def _line(r):
    extra = f"  {r['gflops']:.0f} GFLOP/s" if "gflops" in r else ""
    extra += f"  {r['ops_per_step']} ops" if "ops_per_step" in r else ""
    extra += "  (unstable)" if r.get("unstable") else ""
    return (f"  {r['impl']:>7} {r['device']:>7} {r['model']:>20} b={r.get('batch_size') or '-':>5} "
            f"{r['phase']:>13}: {r['step_ms_median']:9.2f} ms (IQR {r['step_ms_iqr']:.2f})  "
            f"{r['images_per_s']:12,.0f} /s{extra}")


def _add_ratios(records):
    """``speedup_vs_cpu`` on non-CPU rows; ``ratio_vs_torch`` on dualnet rows with a torch twin."""
    key = lambda r, **kw: (kw.get("impl", r["impl"]), kw.get("device", r["device"]), r["model"],  # noqa: E731
                           r.get("batch_size"), r["phase"])
    index = {key(r): r for r in records}
    for r in records:
        if r["device"] != "cpu":  # a device spec, not a kind: the CPU row is the baseline
            cpu = index.get(key(r, device="cpu"))
            if cpu:
                r["speedup_vs_cpu"] = cpu["step_ms_median"] / r["step_ms_median"]
        if r["impl"] == "dualnet":
            tw = index.get(key(r, impl="torch"))
            if tw:
                r["ratio_vs_torch"] = r["images_per_s"] / tw["images_per_s"]


def table(result):
    """Text table of model records: images/s, speedup over CPU, ratio to torch."""
    rows = [r for r in result["records"] if r["phase"] in ("train", "infer")]
    head = f"{'impl':>7} {'device':>7} {'model':>15} {'batch':>5} {'phase':>5} {'images/s':>11} " \
           f"{'ms (median)':>11} {'IQR':>7} {'vs CPU':>7} {'/torch':>7} {'ops':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['impl']:>7} {r['device']:>7} {r['model']:>15} {r['batch_size']:>5} {r['phase']:>5} "
                     f"{r['images_per_s']:>11,.0f} {r['step_ms_median']:>11.2f} {r['step_ms_iqr']:>7.2f} "
                     f"{_fmt(r.get('speedup_vs_cpu'), 'x'):>7} {_fmt(r.get('ratio_vs_torch'), ''):>7} "
                     f"{r.get('ops_per_step', '-'):>5}" + ("  unstable" if r.get("unstable") else ""))
    other = [r for r in result["records"] if r["phase"] not in ("train", "infer")]
    for r in other:
        g = f", {r['gflops']:.1f} GFLOP/s" if "gflops" in r else ""
        lines.append(f"{r['device']:>7} {r['model']} {r['phase']}: {r['step_ms_median']:.2f} ms{g}")
    peaks = {r["device"]: r["gflops"] for r in other if r["phase"] == "gemm_peak"}
    for r in other:
        if r["phase"] == "conv_forward" and r["device"] in peaks:
            lines.append(f"{r['device']:>7} conv 64->64 3x3 forward (method auto), GEMM FLOPs per second of "
                         f"the whole layer: {r['gflops']:.1f} GFLOP/s = {r['gflops'] / peaks[r['device']]:.0%} "
                         f"of the device's measured GEMM peak ({peaks[r['device']]:.1f} GFLOP/s)")
    for s in result["skipped"]:
        lines.append(f"skipped {s['impl']} on {s['device']}: {s['reason']}")
    for w in result.get("warnings", ()):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _fmt(v, suffix):
    return "-" if v is None else f"{v:.2f}{suffix}"


def plot(result, path):
    """Training images/s per batch size for each (implementation, device, model), with the
    spread of the step time (its inter-quartile range) as error bars; bars when the run has a
    single batch size."""
    from matplotlib import ticker
    from .plots import _fig, save_fig
    rows = [r for r in result["records"] if r["phase"] == "train"]
    keys = sorted({(r["impl"], r["device"], r["model"]) for r in rows})
    batches = sorted({r["batch_size"] for r in rows})

    def err(r):  # images/s at the quartiles of the step time, around the median's images/s
        med, iqr = r["step_ms_median"], r["step_ms_iqr"]
        lo = r["batch_size"] / (med + iqr / 2) * 1e3
        hi = r["batch_size"] / max(med - iqr / 2, 1e-9) * 1e3
        return r["images_per_s"] - lo, hi - r["images_per_s"]

    fig, ax = _fig(figsize=(7.5, 4.5))
    if len(batches) == 1:
        for i, key in enumerate(keys):
            r = next(r for r in rows if (r["impl"], r["device"], r["model"]) == key)
            lo, hi = err(r)
            ax.bar(i, r["images_per_s"], yerr=[[lo], [hi]], capsize=4,
                   color="tab:blue" if key[0] == "dualnet" else "tab:orange")
        ax.set_xticks(range(len(keys)), ["\n".join(k) for k in keys], fontsize=7)
        ax.set_xlabel(f"implementation, device, model (batch {batches[0] if batches else '-'})")
    else:
        for key in keys:
            pts = sorted((r["batch_size"], r) for r in rows if (r["impl"], r["device"], r["model"]) == key)
            errs = [err(r) for _, r in pts]
            ax.errorbar([b for b, _ in pts], [r["images_per_s"] for _, r in pts],
                        yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3,
                        fmt="o-" if key[0] == "dualnet" else "s--", label=" ".join(key))
        ax.set_xscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])  # the batch sizes run, not powers of ten
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel("batch size")
        ax.legend(fontsize=7)
    ax.set_yscale("log")
    plain = ticker.FuncFormatter(lambda v, _: f"{v:,.0f}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_ylabel("training images/s (error bars: step-time IQR)")
    ax.set_title("training throughput, median of synchronized steps")
    return save_fig(fig, path)


def write_result(result, out_dir):
    """bench.json, and bench.png where matplotlib is installed (GPU images may lack it: the
    figure is then left out and None returned for it, the measurements are kept)."""
    jpath = write_json(os.path.join(out_dir, "bench.json"), result)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return jpath, None
    return jpath, plot(result, os.path.join(out_dir, "bench.png"))


# --------------------------------------------------------------------------- data-parallel
def run_distributed_bench(comm, models, batch_sizes, dtype="float32", steps=20, warmup=3, log=print):
    """Data-parallel training throughput under ``mpiexec -n K dualnet bench --distributed``.

    For each model and global batch size B, every rank trains on its slice of B (one
    all-reduce of the flat gradients per step, :mod:`dualnet.distributed`); then rank 0 trains
    alone at batch B, with every core of the host when the device is the host (the other
    ranks sleep), as the one-process baseline.  Step counts are fixed (every rank must join
    every all-reduce); times are medians of synchronized steps.

    Returns (on every rank) ``{"environment", "distributed", "records"}``; each record has the
    per-rank images/s and step times, ``images_per_s`` of the whole job (B / the slowest
    rank's step), ``baseline_images_per_s`` (one process: on the host the faster of all
    cores for BLAS and of the one share each rank has), ``scaling_efficiency``
    (job / (K * baseline)) and ``allreduce_ms_median`` (the all-reduce alone: device
    synchronized and ranks met at a barrier before it, so waiting for a slower rank is not in it).
    """
    env = environment()
    records = []
    for m in models:
        for B in batch_sizes:
            rec = _distributed_measure(comm, m, B, dtype, steps, warmup)
            if rec is None:
                if comm.is_root:
                    log(f"  skipped {m} b={B}: fewer samples than the {comm.size} ranks")
                continue
            records.append(rec)
            if comm.is_root:
                log(_distributed_line(rec))
    return {"environment": env, "distributed": {"ranks": comm.size, "reduce": comm.reduce_backend,
                                                "hosts": comm.describe()}, "records": records}


def _distributed_measure(comm, m, B, dtype, steps, warmup):
    """The record of model ``m`` at global batch ``B`` (None when a rank has no sample): every
    rank's median step and all-reduce, gathered, and rank 0's one-process baseline."""
    from .optimizers import Adam
    lo, hi = comm.shard(B)
    if hi == lo:
        return None
    dev = comm.device
    model, _ = make_model(m, dev, dtype)
    opt = Adam(1e-3)
    comm.sync_state(model, opt)
    xh, th = bench_batch(m, B)
    step_ms, allreduce_ms = _rank_times(comm, model, opt, dev.asarray(xh[lo:hi], dtype), dev.asarray(th[lo:hi]),
                                        (hi - lo) / B, steps, warmup)
    per_rank = comm.allgather_host([hi - lo, step_ms, allreduce_ms])
    base = _one_process_baseline(comm, m, dtype, xh, th, steps, warmup) if comm.is_root else [0.0, 0.0]
    comm.idle_barrier("waiting for rank 0's one-process baseline")
    base_all, base_one = comm.allreduce_host(base, "max")
    return _distributed_record(comm, model, m, B, dtype, steps, per_rank, base_all, base_one)


def _rank_times(comm, model, opt, x, t, weight, steps, warmup):
    """This rank's median training step and median all-reduce in ms, over exactly ``steps`` steps
    after ``warmup`` (every rank joins every all-reduce, so no rank may add rounds)."""
    from .training import train_step
    dev, allreduce_ms = comm.device, []

    def reduce(flat):
        dev.synchronize()
        comm.barrier("waiting for the other ranks' gradients")  # time the transfer, not the skew
        timer = dev.timer()
        timer.start()
        out = comm.allreduce_mean(flat, weight)
        allreduce_ms.append(timer.stop())
        return out

    comm.barrier("starting the bench")
    with dev.bind():
        times = time_steps(dev.timer, lambda: train_step(model, opt, x, t, reduce=reduce), steps, warmup,
                           max_steps=steps)
    return float(np.median(times)), float(np.median(allreduce_ms[warmup:]))


def _one_process_baseline(comm, m, dtype, xh, th, steps, warmup):
    """Rank 0 alone at the global batch, the others asleep: [ms with every core for BLAS, ms with
    the threads one rank has (0.0 when that is every core, or off the host)]."""
    from .optimizers import Adam
    from .training import train_step
    dev = comm.device
    model, opt = make_model(m, dev, dtype)[0], Adam(1e-3)
    x, t = dev.asarray(xh, dtype), dev.asarray(th)
    base = [0.0, 0.0]
    with dev.bind():
        with _all_host_threads(dev):
            base[0] = float(np.median(time_steps(dev.timer, lambda: train_step(model, opt, x, t), steps, warmup)))
        if dev.is_host and (getattr(comm, "threads", None) or 0) < (os.cpu_count() or 1):
            base[1] = float(np.median(time_steps(dev.timer, lambda: train_step(model, opt, x, t), steps, warmup)))
    return base


def _distributed_record(comm, model, m, B, dtype, steps, per_rank, base_all, base_one):
    """One row of ``bench-distributed.json`` from the gathered per-rank times and the baselines."""
    dev, K = comm.device, comm.size
    base_ms = min(v for v in (base_all, base_one) if v > 0)
    slowest = max(r[1] for r in per_rank)
    job_ips, base_ips = B / slowest * 1e3, B / base_ms * 1e3
    return {"impl": "dualnet", "device": dev.spec, "device_name": dev.name, "model": m, "batch_size": B,
            "dtype": dtype, "phase": "train", "ranks": K, "reduce": comm.reduce_backend,
            "per_rank": [{"rank": r, "samples": int(v[0]), "step_ms_median": v[1],
                          "images_per_s": v[0] / v[1] * 1e3, "allreduce_ms_median": v[2]}
                         for r, v in enumerate(per_rank)],
            "step_ms_median": slowest, "images_per_s": job_ips, "baseline_step_ms_median": base_ms,
            "baseline_step_ms_all_threads": base_all, "baseline_step_ms_rank_threads": base_one or None,
            "threads_per_rank": getattr(comm, "threads", None),
            "baseline_images_per_s": base_ips, "speedup": job_ips / base_ips,
            "scaling_efficiency": job_ips / (K * base_ips),
            "allreduce_ms_median": max(r[2] for r in per_rank),
            "allreduce_bytes": sum(int(p.size) for p in model.params.values()) * (8 if dtype == "float64" else 4),
            "steps": steps}


class _all_host_threads:
    """Within the block, BLAS may use every core (the one-process baseline on the host)."""

    def __init__(self, device):
        self._ctx = None
        if device.is_host:
            try:
                from threadpoolctl import threadpool_limits
                self._ctx = threadpool_limits(limits=os.cpu_count() or 1, user_api="blas")
            except Exception:  # threadpoolctl cannot see this BLAS
                self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.restore_original_limits()


def _distributed_line(r):
    ranks = ", ".join(f"rank {p['rank']}: {p['images_per_s']:,.0f}/s ({p['samples']} img, "
                      f"{p['step_ms_median']:.1f} ms, all-reduce {p['allreduce_ms_median']:.2f} ms)"
                      for p in r["per_rank"])
    return (f"  {r['model']:>15} b={r['batch_size']:>5} on {r['ranks']} x {r['device']}: "
            f"{r['images_per_s']:,.0f} images/s in all vs {r['baseline_images_per_s']:,.0f} for one process "
            f"(speedup {r['speedup']:.2f}, scaling efficiency {r['scaling_efficiency']:.0%}); "
            f"all-reduce {r['allreduce_ms_median']:.2f} ms of a {r['step_ms_median']:.1f} ms step "
            f"({r['allreduce_bytes'] / 1e6:.2f} MB, {r['reduce']})\n      {ranks}")


def distributed_table(result):
    lines = [f"{'model':>15} {'batch':>5} {'ranks':>5} {'images/s':>10} {'1 process':>10} {'speedup':>7} "
             f"{'efficiency':>10} {'step ms':>8} {'all-reduce ms':>13}"]
    lines.append("-" * len(lines[0]))
    for r in result["records"]:
        lines.append(f"{r['model']:>15} {r['batch_size']:>5} {r['ranks']:>5} {r['images_per_s']:>10,.0f} "
                     f"{r['baseline_images_per_s']:>10,.0f} {r['speedup']:>7.2f} {r['scaling_efficiency']:>10.0%} "
                     f"{r['step_ms_median']:>8.2f} {r['allreduce_ms_median']:>13.3f}")
    return "\n".join(lines)
