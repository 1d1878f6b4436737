"""Forward + backward times of DeepConvNet's six 3x3 convolutions: Winograd F(2x2, 3x3) and
F(4x4, 3x3) batched over the whole batch (``winograd2``, ``winograd4``: dualnet.conv.winograd) and
a block of tiles at a time (``winograd_rows``, ``winograd4_rows``) against the ``rows`` method.

Fashion-MNIST shapes (1x28x28 input, so the layers run at 28x28, 14x14 (the 4th with pad 2)
and 8x8), batch 100 by default, float32, on the CPU with BLAS pinned to ``--threads`` (1 by
default: set before NumPy is imported).  Contenders run interleaved (each repetition times
every contender once, in turn) after warm-up; the table gives medians and interquartile
ranges in milliseconds.  Each method gets its output gradient in the memory order of its own
output, as the layers above hand it back in a network ("rows" returns a batch-innermost view).
Before timing, every contender's output and gradients are checked against "rows".

``--count`` instead counts array operations (GPU kernel launches) of one forward + backward per
layer on the simulated device, for "gemm" (what ``auto`` runs there today) and Winograd, and of
a whole DeepConvNet Adam step with every convolution run by ``winograd`` / ``winograd4``.

Examples::

    python scripts/winograd_layers.py --threads 1 --reps 11 --warmup 2
    python scripts/winograd_layers.py --count
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP threads (default 1)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--reps", type=int, default=11, help="timed repetitions per contender (default 11)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (default 2)")
    p.add_argument("--only", nargs="*", default=None, help="layers whose name contains one of these")
    p.add_argument("--count", action="store_true", help="count array operations instead of timing")
    p.add_argument("--methods", nargs="*", default=None,
                   help="contenders beside rows (default all: winograd2 winograd4 winograd_rows winograd4_rows)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with this thread's CPU time (time.thread_time) instead of the wall clock: "
                        "on a shared machine it leaves out the time other processes hold the core")
    p.add_argument("--block-bytes", type=int, default=None,
                   help="dualnet.conv.winograd_rows.BLOCK_BYTES for the blocked variants (default: the module's)")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402  (after the thread variables)

from dualnet import conv as F  # noqa: E402
from dualnet.backend import get_device  # noqa: E402
from dualnet.conv import winograd as wg  # noqa: E402
from dualnet.conv import winograd_rows as wr  # noqa: E402
from dualnet.timing import time_stages  # noqa: E402

METHODS = ARGS.methods if ARGS is not None else None
if ARGS is not None and ARGS.block_bytes:
    wr.BLOCK_BYTES = ARGS.block_bytes


def layers(N):
    """(name, x shape, W shape, pad, need_dx) of DeepConvNet's convolutions at batch N."""
    return [("1->16 28x28", (N, 1, 28, 28), (16, 1, 3, 3), 1, False),
            ("16->16 28x28", (N, 16, 28, 28), (16, 16, 3, 3), 1, True),
            ("16->32 14x14", (N, 16, 14, 14), (32, 16, 3, 3), 1, True),
            ("32->32 14x14 p2", (N, 32, 14, 14), (32, 32, 3, 3), 2, True),
            ("32->64 8x8", (N, 32, 8, 8), (64, 32, 3, 3), 1, True),
            ("64->64 8x8", (N, 64, 8, 8), (64, 64, 3, 3), 1, True)]


def _dout_like(out, r):
    d = np.empty_like(out)   # order "K": the memory order of the method's own output
    d[...] = r
    return d


def contenders(x, W, b, pad, need_dx, rng):
    """name -> (forward() -> state, backward(state)) for one layer."""
    OH, OW = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
    r = rng.standard_normal((x.shape[0], W.shape[0], OH, OW)).astype(x.dtype)
    out = {}
    # "rows" and the blocked Winograd read a batch-innermost input, as the layers of a network of
    # them hand it on (dualnet.conv.layout); the batched Winograd reads C order
    xc = np.transpose(np.ascontiguousarray(np.transpose(x, (1, 2, 3, 0))), (3, 0, 1, 2))

    def rows():
        o, ctx = F.conv2d(xc, W, b, 1, pad, method="rows")
        return _dout_like(o, r), ctx
    out["rows"] = (rows, lambda s: F.conv2d_backward(s[0], s[1], W, need_dx))
    for tile in wg.TILES:
        def fwd(tile=tile):
            o, saved = wg.winograd_forward(x, W, b, pad, tile)
            return _dout_like(o, r), saved
        out[f"winograd{tile}"] = (fwd, lambda s: wg.backward(s[0], s[1], W, need_dx))
    for method in ("winograd_rows", "winograd4_rows"):   # the blocked variants, via the registry
        def blocked(method=method):
            o, saved = F.conv2d(xc, W, b, 1, pad, method=method)
            return _dout_like(o, r), saved
        out[method] = (blocked, lambda s: F.conv2d_backward(s[0], s[1], W, need_dx))
    return {k: v for k, v in out.items() if k == "rows" or not METHODS or k in METHODS}


def check(cs):
    """Every contender's out/dx/dW/db against "rows" (float32: a wrong method errs by O(1))."""
    ref = None
    for name, (fwd, bwd) in cs.items():
        s = fwd()
        got = [v for v in bwd(s) if v is not None]
        if ref is None:
            ref = got
            continue
        for g, w in zip(got, ref):
            err = float(np.max(np.abs(g - w)) / np.max(np.abs(w)))
            assert err < 1e-4, (name, err)


def interleaved(cs, reps, warmup):
    """name -> (forward ms, backward ms, total ms), one list entry per repetition, from the
    timer the bench uses (:func:`dualnet.timing.time_stages` with the CPU's device timer), or,
    with --cpu-time, from this thread's CPU time (steadier when other processes share the cores)."""
    timer = _ThreadTimer if ARGS is not None and ARGS.cpu_time else get_device("cpu").timer
    t = time_stages({k: (timer, (fwd, bwd)) for k, (fwd, bwd) in cs.items()}, reps, warmup, max_steps=reps)
    return {k: (f, b, [x + y for x, y in zip(f, b)]) for k, (f, b) in t.items()}


class _ThreadTimer:
    """The device-timer interface over ``time.thread_time`` (NumPy work is synchronous)."""

    def start(self):
        self._t0 = time.thread_time()

    def stop(self):
        return (time.thread_time() - self._t0) * 1e3


def _fmt(ms):
    q1, q2, q3 = np.percentile(ms, [25, 50, 75])
    return f"{q2:7.1f} ±{q3 - q1:4.1f}"


def _layer_ops(dev, xs, ws, pad, need_dx, rng):
    """method -> array operations of one forward + backward on counting device ``dev``."""
    x, W = (dev.asarray(rng.standard_normal(s), "float32") for s in (xs, ws))
    b = dev.asarray(np.zeros(ws[0]), "float32")
    run = {"gemm": lambda: F.conv2d_backward(*_dout(dev, *F.conv2d(x, W, b, 1, pad, "gemm")), W, need_dx)}
    for tile in wg.TILES:
        run[f"winograd{tile}"] = lambda t=tile: wg.backward(*_dout(dev, *wg.winograd_forward(x, W, b, pad, t)), W, need_dx)
    out = {}
    for k, fn in run.items():
        dev.ops = 0
        fn()
        out[k] = dev.ops
    return out


def _dout(dev, out, saved):
    ops = dev.ops
    d = dev.asarray(np.ones(tuple(out.shape)), "float32")
    dev.ops = ops
    return d, saved


def _step_ops(sim, method, batch):
    """Array operations of one DeepConvNet Adam step (after a first) with ``conv_method``."""
    import dualnet as dn
    from dualnet.backend import CountingDevice
    from dualnet.training import train_step
    dev = CountingDevice(sim)
    net = dn.DeepConvNet((1, 28, 28), device=dev, conv_method=method)
    opt, rng = dn.Adam(), np.random.default_rng(0)
    x = dev.asarray(rng.standard_normal((batch, 1, 28, 28)), "float32")
    t = dev.asarray(rng.integers(0, 10, batch))
    with dev.bind():
        train_step(net, opt, x, t)
        dev.ops = 0
        train_step(net, opt, x, t)
    return dev.ops


def count(args):
    from dualnet import bench
    from dualnet.backend import CountingDevice
    sim = get_device("sim")
    dev, rng = CountingDevice(sim), np.random.default_rng(0)
    print(f"array operations of one forward + backward on {sim.spec}, batch {args.batch}")
    for name, xs, ws, pad, need_dx in layers(args.batch):
        print(f"{name:17s}", "  ".join(f"{k} {v}" for k, v in _layer_ops(dev, xs, ws, pad, need_dx, rng).items()))
    step = {"gemm": bench.ops_per_step(sim, "deep_convnet", args.batch, "float32")["train"]}
    for method in ("winograd", "winograd4"):   # every convolution of the step by that method
        step[method] = _step_ops(sim, method, args.batch)
    print("DeepConvNet Adam step:", "  ".join(f"{k} {v}" for k, v in step.items()))


def main(args):
    if args.count:
        return count(args)
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, float32, {args.threads} thread(s), {args.reps} reps after {args.warmup} "
          f"warm-up, interleaved, {'CPU time' if args.cpu_time else 'wall clock'}; ms median ±IQR: forward / backward / total; speed = rows total / total")
    grand = {}
    for name, xs, ws, pad, need_dx in layers(args.batch):
        if args.only and not any(s in name for s in args.only):
            continue
        x = rng.standard_normal(xs).astype(np.float32)
        W = (rng.standard_normal(ws) * np.sqrt(2.0 / (9 * ws[1]))).astype(np.float32)
        b = np.zeros(ws[0], np.float32)
        cs = contenders(x, W, b, pad, need_dx, rng)
        check(cs)
        t = interleaved(cs, args.reps, args.warmup)
        base = np.median(t["rows"][2])
        for k, (f, bw, tot) in t.items():
            grand.setdefault(k, []).append(np.median(tot))
            print(f"{name:17s} {k:10s} {_fmt(f)} / {_fmt(bw)} / {_fmt(tot)}   {base / np.median(tot):4.2f}x")
    for k, v in grand.items():
        print(f"{'sum of medians':17s} {k:10s} {sum(v):7.1f} ms   {sum(grand['rows']) / sum(v):4.2f}x")


if __name__ == "__main__":
    main(ARGS)
