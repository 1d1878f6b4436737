"""Whole training steps at several micro-batch sizes, interleaved: what MICRO_BATCH_BYTES rests on.

One model per size, the same seed, one random batch; each timed round runs one Adam step of
every size in turn (``train_step(..., micro_batch=m)``), so that the machine's drift falls on all
of them alike.  Prints the median step in ms per size ("whole" = ``micro_batch=None``) and the
size ``"auto"`` picks.  The table in docs/convolution.md, "Micro-batches", came from::

    python scripts/micro_batch_sizes.py --threads 1 --batch 256 --sizes whole,128,86,64,52,43
    python scripts/micro_batch_sizes.py --threads 1 --batch 100 --sizes whole,50,34
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deep_convnet", help="a model name of dualnet bench")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sizes", default="whole,128,64,52", help="comma-separated; 'whole' for one batch")
    p.add_argument("--reps", type=int, default=14, help="timed rounds (after 2 warm-up rounds)")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (set before NumPy loads)")
    return p.parse_args()


def main():
    args = _parse()
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np

    from dualnet import microbatch
    from dualnet.backend import get_device, tune_allocator
    from dualnet.bench import make_model
    from dualnet.optimizers import Adam
    from dualnet.training import train_step

    tune_allocator()   # as dualnet train and the bench do
    dev = get_device("cpu")
    sizes = [None if s == "whole" else int(s) for s in args.sizes.split(",")]
    nets = {m: make_model(args.model, dev, "float32")[0] for m in sizes}
    net0 = nets[sizes[0]]
    rng = np.random.default_rng(0)
    x = dev.asarray(rng.standard_normal((args.batch, *net0.input_shape)), "float32")
    t = dev.asarray(rng.integers(0, net0.output_shape[-1], args.batch))
    opts = {m: Adam() for m in sizes}
    times = {m: [] for m in sizes}
    for r in range(args.reps + 2):
        for m in sizes:
            t0 = time.perf_counter()
            loss, _ = train_step(nets[m], opts[m], x, t, micro_batch=m)
            float(loss)   # host sync (NumPy: already done)
            if r >= 2:
                times[m].append(1e3 * (time.perf_counter() - t0))
    print(f"{args.model}, batch {args.batch}, threads {args.threads or 'default'}: median step ms "
          f"over {args.reps} interleaved rounds; auto picks {microbatch.size(net0, args.batch, True)}")
    for m in sizes:
        v = np.asarray(times[m])
        q1, q3 = np.percentile(v, [25, 75])
        print(f"  {'whole' if m is None else m:>6}: {np.median(v):8.1f}  (IQR {q3 - q1:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
