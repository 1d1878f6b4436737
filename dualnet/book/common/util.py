"""The book's ``common/util.py``: im2col/col2im in the book's layout, shuffles and curves."""
from __future__ import annotations

import math

import numpy as np   # the book's module exports np through a star import

from ... import functions as F
from ...backend import namespace
from ...errors import ShapeError
from ...seeds import book_seed as _book_seed
from .._env import device, host, is_host_data, next_seed

__all__ = ["smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im", "np"]

_shuffle_rng = None


def smooth_curve(x):
    """Smooth a loss curve with an 11-point Kaiser window (beta 2), edges mirrored; same length.

    Parameters
    ----------
    x : sequence of numbers (e.g. the list of losses a training loop appended)

    Returns
    -------
    host array of len(x) floats
    """
    hnp = host().xp
    x = hnp.asarray([float(v) for v in x], dtype=hnp.float64)
    n, half = x.shape[0], 5
    if n == 0:
        return x
    # Mirror the ends (without repeating the end point) so the window never runs off the data.
    idx = [abs(i) if i < n else 2 * (n - 1) - i for i in range(-half, n + half)]
    idx = [min(max(i, 0), n - 1) for i in idx]
    s = x[idx]
    w = [_kaiser(k, 11, 2.0) for k in range(11)]
    total = sum(w)
    out = hnp.zeros(n, dtype=hnp.float64)
    for k, wk in enumerate(w):  # an 11-tap weighted sum: 11 vector adds
        out += (wk / total) * s[k:k + n]
    return out


def _kaiser(k, m, beta):
    """Kaiser window value k of m: I0(beta * sqrt(1 - (2k/(m-1) - 1)^2)) / I0(beta)."""
    r = 2.0 * k / (m - 1) - 1.0
    return _i0(beta * math.sqrt(max(0.0, 1.0 - r * r))) / _i0(beta)


def _i0(z):
    """Modified Bessel function of the first kind, order 0 (its power series)."""
    term, total, k = 1.0, 1.0, 0
    while term > 1e-17 * total:
        k += 1
        term *= (z / (2 * k)) ** 2
        total += term
    return total


def shuffle_dataset(x, t):
    """``(x, t)`` in one random order (both shuffled alike), as the book's hyper-parameter search
    does before carving out a validation split.

    Host arrays are shuffled on the host; device arrays on their device.  The order comes from
    a generator seeded by ``DUALNET_SEED``, so a run repeats.
    """
    global _shuffle_rng
    if x.shape[0] != t.shape[0]:
        raise ShapeError(f"x has {x.shape[0]} samples but t has {t.shape[0]}; shuffle_dataset "
                         f"needs one label per sample")
    if _shuffle_rng is None:
        _shuffle_rng = host().rng(_book_seed(next_seed(), "shuffle"))
    perm = _shuffle_rng.permutation(x.shape[0])
    if is_host_data(x):
        return x[perm], t[perm]
    xp = namespace(x)
    p = device().asarray(perm)
    return xp.take(x, p, axis=0), xp.take(t, p, axis=0)


def conv_output_size(input_size, filter_size, stride=1, pad=0):
    """(input_size + 2*pad - filter_size) / stride + 1 (a float when it does not divide, as in
    the book)."""
    return (input_size + 2 * pad - filter_size) / stride + 1


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """Unfold patches into rows, the book's layout.

    Parameters
    ----------
    input_data : array, shape (N, C, H, W)

    Returns
    -------
    col : array, shape (N*OH*OW, C*FH*FW)
        Row ``n*OH*OW + oh*OW + ow`` is the patch at (oh, ow) of sample n, flattened in
        (C, FH, FW) order.  (dualnet's own :func:`dualnet.functions.im2col` keeps
        (N, C*FH*FW, OH*OW), which saves a transposing copy; this is that, transposed.)
    """
    x = input_data
    xp = namespace(x)
    N = x.shape[0]
    col = F.im2col(x, filter_h, filter_w, stride, pad)          # (N, CFF, OH*OW)
    cff, ohw = col.shape[1], col.shape[2]
    return xp.reshape(xp.permute_dims(col, (0, 2, 1)), (N * ohw, cff))


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """Fold rows of :func:`im2col`'s layout back into images, summing overlaps.

    col : (N*OH*OW, C*FH*FW);  input_shape : (N, C, H, W)  ->  (N, C, H, W)
    """
    xp = namespace(col)
    N, C, H, W = (int(s) for s in input_shape)
    cff = C * filter_h * filter_w
    if col.ndim != 2 or col.shape[1] != cff or col.shape[0] % N:
        raise ShapeError(f"col2im: col has shape {tuple(col.shape)} but input_shape {tuple(input_shape)} "
                         f"with a {filter_h}x{filter_w} filter needs (N*OH*OW, {cff}) with N={N}")
    c = xp.permute_dims(xp.reshape(col, (N, col.shape[0] // N, cff)), (0, 2, 1))
    return F.col2im(c, (N, C, H, W), filter_h, filter_w, stride, pad)
