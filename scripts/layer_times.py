"""Where a training step's time goes: each layer's forward and backward, inside real steps.

Builds a model as ``dualnet train`` does, runs whole training steps (forward, backward, Adam)
on one random batch, and times every layer's ``forward`` and ``backward`` call as it happens
in those steps, so each layer sees its input in the memory layout the layer before it produced
(unlike scripts/conv_layers.py, which times layers alone).  The optimizer update and the loss
are the rest of the step.  Medians over the timed steps, in milliseconds; the step median is
measured in separate, untimed-by-layer steps, so the per-layer clocks do not inflate it.

Examples::

    python scripts/layer_times.py --threads 1
    python scripts/layer_times.py --model simple_convnet --batch 256 --conv im2col
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deep_convnet")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--conv", default="auto", help="convolution method for every conv layer (default auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="pin BLAS and OpenMP to this many threads (default: their defaults)")
    p.add_argument("--steps", type=int, default=15, help="timed steps (default 15)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402  (after the thread variables)

from dualnet import conv  # noqa: E402
from dualnet.backend import get_device, tune_allocator  # noqa: E402
from dualnet.layers import Convolution  # noqa: E402
from dualnet.models import build_model  # noqa: E402
from dualnet.optimizers import Adam  # noqa: E402
from dualnet.training import train_step  # noqa: E402


def layer_name(layer, x_shape):
    name = type(layer).__name__
    if isinstance(layer, Convolution):
        method = layer.method
        if method == "auto":
            method = conv.choose(conv.ConvGeometry.of(x_shape, layer.params["W"].shape, layer.stride, layer.pad),
                                 layer.device.is_host)
        name += f" {layer.C}->{layer.FN} {x_shape[2]}x{x_shape[3]} [{method}]"
    return name


def main():
    a = ARGS
    tune_allocator()
    dev = get_device("cpu")
    model = build_model(a.model, (1, 28, 28), 10, device=dev)
    if a.conv != "auto":
        model.set_conv_method(a.conv)
    opt = Adam(lr=1e-3)
    rng = np.random.default_rng(0)
    x = dev.asarray(rng.standard_normal((a.batch, 1, 28, 28)), "float32")
    t = dev.asarray(rng.integers(0, 10, a.batch))

    times, names, timing = {}, {}, [False]

    def wrap(k, layer, what):
        f = getattr(layer, what)

        def timed(*args, **kw):
            if not timing[0]:
                return f(*args, **kw)
            if what == "forward":
                names.setdefault(k, layer_name(layer, tuple(args[0].shape)))
            t0 = time.perf_counter()
            r = f(*args, **kw)
            times.setdefault((k, what), []).append(time.perf_counter() - t0)
            return r
        setattr(layer, what, timed)

    for k, layer in enumerate(model.layers):
        wrap(k, layer, "forward")
        wrap(k, layer, "backward")
    for _ in range(a.warmup):
        train_step(model, opt, x, t)
    steps = []
    for _ in range(a.steps):            # whole steps, no per-layer clocks
        t0 = time.perf_counter()
        train_step(model, opt, x, t)
        steps.append(time.perf_counter() - t0)
    timing[0] = True
    for _ in range(a.steps):            # the same steps with per-layer clocks
        train_step(model, opt, x, t)
    rows = []
    for k in range(len(model.layers)):
        fw = 1e3 * float(np.median(times.get((k, "forward"), [0.0])))
        bw = 1e3 * float(np.median(times.get((k, "backward"), [0.0])))
        rows.append({"layer": k, "name": names.get(k, type(model.layers[k]).__name__),
                     "forward_ms": fw, "backward_ms": bw})
    step_ms = 1e3 * float(np.median(steps))
    layers_ms = sum(r["forward_ms"] + r["backward_ms"] for r in rows)
    print(f"{a.model}, batch {a.batch}, conv {a.conv}, threads {a.threads or 'default'}: "
          f"step median {step_ms:.1f} ms over {a.steps} steps")
    print(f"{'#':>2}  {'layer':42s} {'forward':>8} {'backward':>9}")
    for r in rows:
        print(f"{r['layer']:2d}  {r['name']:42s} {r['forward_ms']:8.2f} {r['backward_ms']:9.2f}")
    print(f"    {'layers':42s} {sum(r['forward_ms'] for r in rows):8.2f} "
          f"{sum(r['backward_ms'] for r in rows):9.2f}")
    print(f"    rest of the step (loss, Adam update): {step_ms - layers_ms:.1f} ms")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "numpy": np.__version__, "step_ms": step_ms, "layers": rows}, f, indent=1)


if __name__ == "__main__":
    main()
