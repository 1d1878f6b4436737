"""Per-layer micro-benchmark of dualnet's convolution methods and max pooling, against PyTorch.

Times the forward and the backward of every convolution and max-pool layer of DeepConvNet
(book shapes, 28x28 input) and of SimpleConvNet (conv 1->30 5x5), for each convolution method
in ``dualnet.conv.METHODS`` and for ``torch.nn.functional`` when PyTorch is installed.
Contenders run interleaved in one process (every repetition times each contender once, in
turn), after warm-up; the table gives medians and interquartile ranges in milliseconds.

``--count`` instead counts array operations (one operation = one GPU kernel launch) per layer
and method, running the functions on a counting wrapper of NumPy; the ``+cupy`` column adds
the copies and pointer-array kernels CuPy's ``matmul`` launches on its own (operands that are
not contiguous; broadcast batched products).

Examples::

    python scripts/conv_layers.py --threads 1 --out conv_1t.json
    python scripts/conv_layers.py                   # BLAS / torch default threads
    python scripts/conv_layers.py --count
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None,
                   help="pin BLAS, OpenMP and torch to this many threads (default: their defaults)")
    p.add_argument("--batch", type=int, default=100, help="batch size of DeepConvNet (default 100)")
    p.add_argument("--simple-batches", type=int, nargs="*", default=[100, 256],
                   help="batch sizes for SimpleConvNet (default 100 256)")
    p.add_argument("--reps", type=int, default=15, help="timed repetitions per contender (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default 3)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="dualnet methods to time (default: every method in dualnet.conv.METHODS)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    p.add_argument("--only", nargs="*", default=None,
                   help="time only layers whose name contains one of these strings")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--count", action="store_true", help="count array operations instead of timing")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads is not None:
    # Must be set before NumPy (and its OpenBLAS) is imported.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402  (after the thread variables)

from dualnet import conv, functions as F  # noqa: E402
from dualnet.conv import ConvGeometry  # noqa: E402
from dualnet.backend import CountingDevice, get_device, tune_allocator  # noqa: E402
from dualnet.timing import time_stages  # noqa: E402


# --------------------------------------------------------------------------- the layers
def conv_layers(batch, simple_batches):
    """(name, x shape, W shape, stride, pad, need_dx) of every convolution benchmarked."""
    N = batch
    deep = [("deep1 1->16 28x28", (N, 1, 28, 28), (16, 1, 3, 3), 1, 1, False),
            ("deep2 16->16 28x28", (N, 16, 28, 28), (16, 16, 3, 3), 1, 1, True),
            ("deep3 16->32 14x14", (N, 16, 14, 14), (32, 16, 3, 3), 1, 1, True),
            ("deep4 32->32 14x14 p2", (N, 32, 14, 14), (32, 32, 3, 3), 1, 2, True),
            ("deep5 32->64 8x8", (N, 32, 8, 8), (64, 32, 3, 3), 1, 1, True),
            ("deep6 64->64 8x8", (N, 64, 8, 8), (64, 64, 3, 3), 1, 1, True)]
    simple = [(f"simple 1->30 5x5 N={n}", (n, 1, 28, 28), (30, 1, 5, 5), 1, 0, False)
              for n in simple_batches]
    return deep + simple


def pool_layers(batch, simple_batches):
    """(name, x shape) of every 2x2/2 max pooling benchmarked."""
    N = batch
    return ([("pool deep2 16x28x28", (N, 16, 28, 28)), ("pool deep4 32x16x16", (N, 32, 16, 16)),
             ("pool deep6 64x8x8", (N, 64, 8, 8))]
            + [(f"pool simple 30x24x24 N={n}", (n, 30, 24, 24)) for n in simple_batches])


# --------------------------------------------------------------------------- timing
def _stats(ms):
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"median": float(q50), "iqr": float(q75 - q25), "min": float(np.min(ms)), "n": len(ms)}


def interleaved(contenders, reps, warmup):
    """Time each contender's (forward, backward) pair, interleaved, with the timer the bench uses
    (:func:`dualnet.timing.time_stages`, the CPU's device timer); returns name -> stats."""
    timer = get_device("cpu").timer
    t = time_stages({k: (timer, pair) for k, pair in contenders.items()}, reps, warmup, max_steps=reps)
    return {k: {"forward": _stats(f), "backward": _stats(b)} for k, (f, b) in t.items()}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    if ARGS is not None and ARGS.threads is not None:
        torch.set_num_threads(ARGS.threads)
    return torch


def conv_contenders(xp, shape, wshape, stride, pad, need_dx, methods, torch, dtype, rng):
    x_np = rng.standard_normal(shape).astype(dtype)
    W_np = (rng.standard_normal(wshape) * np.sqrt(2.0 / np.prod(wshape[1:]))).astype(dtype)
    b_np = rng.standard_normal(wshape[0]).astype(dtype)
    x, W, b = xp.asarray(x_np), xp.asarray(W_np), xp.asarray(b_np)
    out0, _ = conv.conv2d(x, W, b, stride, pad, method="im2col")
    dout = xp.asarray(rng.standard_normal(tuple(out0.shape)).astype(dtype))
    c = {}
    for m in methods:
        if not conv.METHODS[m].supports(ConvGeometry.of(shape, wshape, stride, pad)):
            continue
        c[m] = (lambda m=m: conv.conv2d(x, W, b, stride, pad, method=m)[1],
                lambda ctx: conv.conv2d_backward(dout, ctx, W, need_dx))
    if torch is not None:
        tx = torch.from_numpy(x_np).requires_grad_(need_dx)
        tW = torch.from_numpy(W_np).requires_grad_(True)
        tb = torch.from_numpy(b_np).requires_grad_(True)
        td = torch.from_numpy(np.asarray(dout))
        inputs = (tx, tW, tb) if need_dx else (tW, tb)
        c["torch"] = (lambda: torch.nn.functional.conv2d(tx, tW, tb, stride=stride, padding=pad),
                      lambda out: torch.autograd.grad(out, inputs, td))
    return c


def pool_contenders(xp, shape, torch, dtype, rng):
    # After a ReLU: about half the inputs are exact zeros, so ties are real.
    x_np = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    x = xp.asarray(x_np)
    out0, _ = F.max_pool2d(x, 2, 2, 2)
    dout = xp.asarray(rng.standard_normal(tuple(out0.shape)).astype(dtype))
    c = {"dualnet": (lambda: F.max_pool2d(x, 2, 2, 2)[1], lambda ctx: F.max_pool2d_backward(dout, ctx))}
    if torch is not None:
        tx = torch.from_numpy(x_np).requires_grad_(True)
        td = torch.from_numpy(np.asarray(dout))
        c["torch"] = (lambda: torch.nn.functional.max_pool2d(tx, 2, 2),
                      lambda out: torch.autograd.grad(out, (tx,), td))
    return c


# --------------------------------------------------------------------------- counting
def _cupy_matmul_extra(a, b):
    """Kernels CuPy's matmul launches besides the GEMM (cupy/_core/_routines_linalg.pyx):
    2-D: a copy of each operand that is neither C- nor F-contiguous; batched: a copy of each
    operand that is not C-contiguous, and three pointer-array kernels when a batch axis broadcasts."""
    if max(a.ndim, b.ndim) <= 2:
        return sum(1 for m in (a, b) if not any(_contiguity(m)))
    extra = sum(1 for m in (a, b) if not m.flags.c_contiguous)
    ba, bb = a.shape[:-2], b.shape[:-2]
    nd = max(len(ba), len(bb))
    ba, bb = (1,) * (nd - len(ba)) + ba, (1,) * (nd - len(bb)) + bb
    if any(x != y for x, y in zip(ba, bb)):
        extra += 3
    return extra



def _cupy_hidden(name, args):
    """Kernels CuPy launches besides the one asked for: only its matmul adds any."""
    return _cupy_matmul_extra(args[0], args[1]) if name == "matmul" else 0


def _contiguity(a):
    return a.flags.c_contiguous, a.flags.f_contiguous


def count_ops(batch, simple_batches, methods, dtype):
    """Array operations per layer (kernel launches on a GPU), counted by dualnet's
    CountingDevice on NumPy, plus the copies CuPy's matmul would add (``*_cupy_extra``)."""
    rng = np.random.default_rng(0)
    dev = CountingDevice("cpu", extra=_cupy_hidden)

    def arr(shape):
        return dev.asarray(rng.standard_normal(shape).astype(dtype))

    def counts():
        return dev.ops, dev.hidden
    res = {}
    for name, shape, wshape, stride, pad, need_dx in conv_layers(batch, simple_batches):
        x, W, b = arr(shape), arr(wshape), arr(wshape[0])
        row = {"auto_gpu": conv.choose(ConvGeometry.of(shape, wshape, stride, pad), host=False)}
        for m in methods:
            if not conv.METHODS[m].supports(ConvGeometry.of(shape, wshape, stride, pad)):
                continue
            c0 = counts()
            out, ctx = conv.conv2d(x, W, b, stride, pad, method=m)
            c1 = counts()
            dout = dev.asarray(np.ones(out.shape, dtype))
            conv.conv2d_backward(dout, ctx, W, need_dx)
            c2 = counts()
            row[m] = {"forward": c1[0] - c0[0], "forward_cupy_extra": c1[1] - c0[1],
                      "backward": c2[0] - c1[0], "backward_cupy_extra": c2[1] - c1[1]}
        res[name] = row
    for name, shape in pool_layers(batch, simple_batches):
        x = arr(shape)
        c0 = dev.ops
        out, ctx = F.max_pool2d(x, 2, 2, 2)
        c1 = dev.ops
        F.max_pool2d_backward(dev.asarray(np.ones(out.shape, dtype)), ctx)
        res[name] = {"dualnet": {"forward": c1 - c0, "backward": dev.ops - c1}}
    return res


def print_counts(res):
    print(f"{'layer':28s} {'method':8s} {'fwd':>4s} {'+cupy':>5s} {'bwd':>4s} {'+cupy':>5s} {'total':>6s}")
    for name, row in res.items():
        for m, c in row.items():
            if m == "auto_gpu":
                continue
            fe, be = c.get("forward_cupy_extra", 0), c.get("backward_cupy_extra", 0)
            print(f"{name:28s} {m:8s} {c['forward']:4d} {fe:5d} {c['backward']:4d} {be:5d} "
                  f"{c['forward'] + fe + c['backward'] + be:6d}")
        if "auto_gpu" in row:
            print(f"{'':28s} (auto on a GPU: {row['auto_gpu']})")


# --------------------------------------------------------------------------- report
def print_table(results, auto):
    print(f"{'layer':28s} {'method':8s} {'forward ms (IQR)':>17s} {'backward ms (IQR)':>18s} "
          f"{'sum':>7s} {'vs im2col':>9s} {'vs torch':>8s}")
    for name, row in results.items():
        base = row.get("im2col") or row.get("dualnet")
        ref = row.get("torch")
        for m, s in row.items():
            f, b = s["forward"], s["backward"]
            tot = f["median"] + b["median"]
            vs_base = (base["forward"]["median"] + base["backward"]["median"]) / tot if base else float("nan")
            vs_t = (ref["forward"]["median"] + ref["backward"]["median"]) / tot if ref else float("nan")
            tag = m + ("*" if auto.get(name) == m else "")
            print(f"{name:28s} {tag:8s} {f['median']:8.2f} ({f['iqr']:5.2f}) {b['median']:9.2f} ({b['iqr']:5.2f}) "
                  f"{tot:7.2f} {vs_base:8.2f}x {vs_t:7.2f}x")
    print("* = what method='auto' runs on the CPU; 'vs' columns: speed relative to the row "
          "(>1 is faster), on forward+backward medians")


def totals(results, auto, prefix):
    """Sum of medians over layers whose name starts with ``prefix``: per method and for auto."""
    rows = {k: v for k, v in results.items() if k.startswith(prefix)}
    out = {}
    for m in [*conv.METHODS, "torch"]:
        if all(m in r for r in rows.values()):
            out[m] = sum(r[m]["forward"]["median"] + r[m]["backward"]["median"] for r in rows.values())
    if all(auto[k] in r for k, r in rows.items()):   # left out when --methods skipped one auto picks
        out["auto"] = sum(r[auto[k]]["forward"]["median"] + r[auto[k]]["backward"]["median"]
                          for k, r in rows.items())
    return out


def main():
    a = ARGS
    methods = a.methods or list(conv.METHODS)
    if a.count:
        res = count_ops(a.batch, a.simple_batches, methods, a.dtype)
        print_counts(res)
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"counts": res}, f, indent=1)
        return
    tune_allocator()
    dev = get_device("cpu")
    xp = dev.xp
    torch = None if a.no_torch else _torch()
    rng = np.random.default_rng(0)
    results, auto = {}, {}
    for name, shape, wshape, stride, pad, need_dx in conv_layers(a.batch, a.simple_batches):
        if a.only and not any(s in name for s in a.only):
            continue
        auto[name] = conv.choose(ConvGeometry.of(shape, wshape, stride, pad), host=True)
        c = conv_contenders(xp, shape, wshape, stride, pad, need_dx, methods, torch, a.dtype, rng)
        results[name] = interleaved(c, a.reps, a.warmup)
        print(f"  timed {name}", file=sys.stderr, flush=True)
    for name, shape in pool_layers(a.batch, a.simple_batches):
        if a.only and not any(s in name for s in a.only):
            continue
        results[name] = interleaved(pool_contenders(xp, shape, torch, a.dtype, rng), a.reps, a.warmup)
    print(f"threads: {a.threads or 'default'}; batch {a.batch}; {a.reps} reps after {a.warmup} warm-up; "
          f"{a.dtype}; numpy {np.__version__}" + (f"; torch {torch.__version__}" if torch else ""))
    print_table(results, auto)
    summary = {p: totals(results, auto, p) for p in ("deep", "simple 1->30 5x5 N=100", "simple 1->30 5x5 N=256")
               if any(k.startswith(p) for k in results)}
    for p, t in summary.items():
        print(f"{p}: conv fwd+bwd ms  " + "  ".join(f"{k}={v:.1f}" for k, v in t.items()))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "numpy": np.__version__,
                       "torch": getattr(torch, "__version__", None), "auto": auto,
                       "results": results, "totals": summary}, f, indent=1)


if __name__ == "__main__":
    main()
