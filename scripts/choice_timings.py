"""Time the small implementation choices of dualnet's NumPy path against the alternatives they beat.

Each comparison runs the code's way and the alternative on the same arrays, interleaved (every
repetition times each contender once, in turn) after warm-up, and first checks that they give
the same result.  The table gives medians and interquartile ranges in milliseconds; the
choices and what was measured when they were made are in docs/convolution.md ("Smaller
choices, and the measurements behind them").

    relu       ReLU forward + backward: max(x, 0), then a float 0/1 mask of the output
               multiplied, against a float mask made in the forward (and multiplied each
               way) and against ``where``
    pool       2x2/2 max-pool forward + backward, batch-innermost and C order: a first-maximum
               mask recorded in the forward and one multiply back, the two-stage (columns,
               then rows) leads, the "remaining gradient" routing offset by offset, a boolean
               "not found yet" mask, and ``where`` for the float mask
    im2col-dW  im2col's dW: per-sample GEMMs against a transposed view, summed, against tensordot
    gemm-cols  gemm's batch columns: a (C, N, Hp, Wp) padded copy, against an (N, C, Hp, Wp) one
    gemm-fold  gemm's fold of the columns: adds into (C, N, Hp, Wp) and one transpose, against
               adds into (N, C, Hp, Wp)
    rows-frame rows' padded grid: only the frame zeroed, against zeros() then the copy

Examples::

    python scripts/choice_timings.py --threads 1
    python scripts/choice_timings.py --threads 1 --only pool gemm-fold --reps 31
"""
from __future__ import annotations

import argparse
import os
import sys


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None,
                   help="pin BLAS and OpenMP to this many threads (default: their defaults)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--reps", type=int, default=15, help="timed repetitions per contender (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default 3)")
    p.add_argument("--only", nargs="*", default=None, help="run only these comparisons")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads is not None:
    # Must be set before NumPy (and its OpenBLAS) is imported.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402  (after the thread variables)

from dualnet import functions as F  # noqa: E402
from dualnet.backend import get_device, tune_allocator  # noqa: E402
from dualnet.conv import ConvGeometry, gemm, rows  # noqa: E402
from dualnet.timing import quartiles, time_interleaved  # noqa: E402

RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def interleaved(contenders, reps, warmup):
    """{name: (median ms, IQR ms)} of each zero-argument callable, timed in turn with the timer
    the bench uses (:func:`dualnet.timing.time_interleaved`, the CPU's device timer)."""
    timer = get_device("cpu").timer
    times = time_interleaved({k: (timer, fn) for k, fn in contenders.items()}, reps, warmup, max_steps=reps)
    out = {}
    for k, ms in times.items():
        q25, q50, q75 = quartiles(ms)
        out[k] = (q50, q75 - q25)
    return out


def same(contenders):
    """The contenders' results agree (each callable returns its result), to float32 rounding
    of sums over thousands of terms."""
    results = [np.asarray(fn()) for fn in contenders.values()]
    scale = float(np.max(np.abs(results[0])))
    for name, r in zip(list(contenders)[1:], results[1:]):
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-5 * scale, err_msg=name)


# --------------------------------------------------------------------------- the comparisons
def relu(N):
    """SimpleConvNet's conv output (N, 30, 24, 24)."""
    x, dout = normal(N, 30, 24, 24), normal(N, 30, 24, 24)

    def mask_of_output():
        out = np.maximum(x, 0)
        return out + dout * (out > 0).astype(x.dtype)

    def float_mask():
        mask = (x > 0).astype(x.dtype)
        return (x * mask) + dout * mask

    def where():
        hit = x > 0
        return np.where(hit, x, 0) + np.where(hit, dout, 0)
    return [{"max, mask of output": mask_of_output, "float mask": float_mask, "where": where}]


def _pool_found_mask(dout, ctx):
    _, xpad, out, _, PH, PW, stride, _ = ctx
    OH, OW = dout.shape[2], dout.shape[3]
    dx, todo = np.empty_like(xpad), np.ones(out.shape, bool)
    for k in range(PH * PW):
        i, j = divmod(k, PW)
        hit = (F._window(xpad, i, j, OH, OW, stride) == out) & todo
        todo &= ~hit
        dx[F._window_index(i, j, OH, OW, stride)] = hit * dout
    return dx


def _pool_where(dout, ctx):
    _, xpad, out, _, PH, PW, stride, _ = ctx
    OH, OW = dout.shape[2], dout.shape[3]
    dx, rest = np.empty_like(xpad), dout
    for k in range(PH * PW):
        i, j = divmod(k, PW)
        g = np.where(F._window(xpad, i, j, OH, OW, stride) == out, rest, 0)
        rest = rest - g
        dx[F._window_index(i, j, OH, OW, stride)] = g
    return dx


def _pool_mask(x, dout):
    """The first-maximum mask's route, whatever the memory order."""
    OH, OW = x.shape[2] // 2, x.shape[3] // 2
    out, mask = F._max_pool_tiled(x, 2, 2, OH, OW)
    return F._max_pool_tiled_backward(dout, ("tiled", mask, out, tuple(x.shape), 2, 2, 2, 0))


def _pool_rows(x, dout):
    """The two-stage route, whatever the memory order (its gradient comes out in C order)."""
    out, leads = F._max_pool_2x2_rows(x)
    return F._max_pool_2x2_rows_backward(dout, ("2x2 rows", leads, tuple(x.shape), 0))


def pool(N):
    """2x2/2 max pools, forward and backward (what the forward records moves work into it):
    DeepConvNet's first, of a batch-innermost (N, 16, 28, 28) conv output ("rows"), and
    SimpleConvNet's, of a C-order (N, 30, 24, 24) map after a ReLU (ties are real: many zeros).
    The code takes the first-maximum mask for the first and the two stages for the second."""
    groups = []
    for name, x in (("16@28 batch-innermost", np.permute_dims(normal(16, 28, 28, N), (3, 0, 1, 2))),
                    ("30@24 C order", np.maximum(normal(N, 30, 24, 24), 0))):
        dout = np.empty_like(F.max_pool2d(x, 2, 2, 2, record=False)[0])
        dout[...] = normal(*dout.shape)   # in the map's memory order, as the layer after gives it

        def routed(backward, x=x, dout=dout):
            return lambda: backward(dout, F.max_pool2d(x, 2, 2, 2, record=False)[1])
        groups.append({f"{name} first-max mask": lambda x=x, dout=dout: _pool_mask(x, dout),
                       f"{name} two stages": lambda x=x, dout=dout: _pool_rows(x, dout),
                       f"{name} remaining": routed(F.max_pool2d_backward),
                       f"{name} found mask": routed(_pool_found_mask), f"{name} where": routed(_pool_where)})
    return groups


def im2col_dw(N):
    """DeepConvNet's 16->16 3x3 pad 1 at 28x28."""
    col = F.im2col(normal(N, 16, 28, 28), 3, 3, 1, 1)     # (N, 144, 784)
    d = normal(N, 16, 784)
    return [{"matmul + sum": lambda: np.sum(np.matmul(d, np.matrix_transpose(col)), axis=0),
             "tensordot": lambda: np.tensordot(d, col, axes=([0, 2], [0, 2]))}]


def _columns_nchw(x, g):
    img = F.pad2d(x, g.pad)
    col = np.empty((g.C, g.FH, g.FW, g.N, g.OH, g.OW), dtype=x.dtype)
    for i in range(g.FH):
        for j in range(g.FW):
            col[:, i, j] = np.permute_dims(F._window(img, i, j, g.OH, g.OW, g.stride), (1, 0, 2, 3))
    return np.reshape(col, (g.K, g.N * g.OH * g.OW))


def gemm_cols(N):
    """DeepConvNet's 16->16 3x3 pad 1 at 28x28."""
    x = normal(N, 16, 28, 28)
    g = ConvGeometry.of(x.shape, (16, 16, 3, 3), 1, 1)
    return [{"(C, N) pad": lambda: gemm.batch_columns(x, g), "(N, C) pad": lambda: _columns_nchw(x, g)}]


def _fold_nchw(dcol, g):
    col = np.reshape(dcol, (g.C, g.FH, g.FW, g.N, g.OH, g.OW))
    img = np.zeros((g.N, g.C, g.H + 2 * g.pad, g.W + 2 * g.pad), dtype=dcol.dtype)
    for i in range(g.FH):
        for j in range(g.FW):
            win = img[F._window_index(i, j, g.OH, g.OW, g.stride)]
            win += np.permute_dims(col[:, i, j], (1, 0, 2, 3))
    return img[:, :, g.pad:g.pad + g.H, g.pad:g.pad + g.W]


def gemm_fold(N):
    """DeepConvNet's 16->16 at 28x28 pad 1 and 32->32 at 14x14 pad 2: one group each."""
    groups = []
    for C, H, pad in ((16, 28, 1), (32, 14, 2)):
        g = ConvGeometry.of((N, C, H, H), (C, C, 3, 3), 1, pad)
        dcol = normal(g.K, N * g.OH * g.OW)
        groups.append({f"{C}@{H} (C, N) + transpose": lambda dcol=dcol, g=g: gemm.fold_batch_columns(dcol, g),
                       f"{C}@{H} (N, C)": lambda dcol=dcol, g=g: _fold_nchw(dcol, g)})
    return groups


def rows_frame(N):
    """A padded 16x28x28 batch in rows' (A, rows, cols, N) layout."""
    src = normal(16, 28, 28, N)

    def zeros_first():
        out = np.zeros((16, 30, 30, N), dtype=src.dtype)
        out[:, 1:29, 1:29, :] = src
        return out
    return [{"frame only": lambda: rows._framed(src, (16, 30, 30, N), 1, 1), "zeros first": zeros_first}]


# Each returns a list of groups: {contender: callable returning its result}, one group per shape.
COMPARISONS = {"relu": relu, "pool": pool, "im2col-dW": im2col_dw, "gemm-cols": gemm_cols,
               "gemm-fold": gemm_fold, "rows-frame": rows_frame}


def main(args):
    tune_allocator()   # as in a training run
    names = args.only or list(COMPARISONS)
    unknown = set(names) - set(COMPARISONS)
    if unknown:
        raise SystemExit(f"unknown comparisons {sorted(unknown)}; choose from {', '.join(COMPARISONS)}")
    print(f"batch {args.batch}, {args.reps} interleaved repetitions after {args.warmup}, "
          f"threads {args.threads or 'default'}; ms median (IQR)")
    for name in names:
        for group in COMPARISONS[name](args.batch):
            same(group)
            for k, (med, iqr) in interleaved(group, args.reps, args.warmup).items():
                print(f"{name:>10}  {k:<28} {med:9.3f} ({iqr:.3f})")


if __name__ == "__main__":
    main(ARGS)
