"""``"gemm"``: im2col with the columns of the whole batch in one (C*FH*FW, N*OH*OW) matrix.

The forward and both backward products are then single 2-D GEMMs (dW on a transposed view,
which neither BLAS nor cuBLAS copies).  Any stride, any geometry.  The path for GPUs: the
fewest, largest kernels, one copy per tap and one cuBLAS GEMM per product.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import array_device, namespace
from ..functions import _window_index
from .geometry import ConvGeometry
from .layout import NCHW, swap01

NAME = "gemm"
LAYOUT = NCHW


class GemmSaved(NamedTuple):
    """What :func:`backward` needs: the geometry and the batch's columns (C*FH*FW, N*OH*OW)."""
    g: ConvGeometry
    col: Any
    method: str = NAME


def supports(g):
    return True


def batch_columns(x, g):
    """Columns of the whole batch, shape (C*FH*FW, N*OH*OW).

    Row ``c*FH*FW + i*FW + j``, column ``n*OH*OW + oh*OW + ow`` holds padded pixel
    (n, c, oh*stride + i, ow*stride + j).  The padded copy is laid out (C, N, Hp, Wp): the
    padding costs that copy anyway, and the taps are then plain strided copies without a
    transpose (faster than an (N, C, Hp, Wp) pad: docs/convolution.md, "Smaller choices").
    """
    xp = namespace(x)
    N, C, H, W, pad = g.N, g.C, g.H, g.W, g.pad
    if pad:
        img = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=x.dtype, device=array_device(x))
        img[:, :, pad:pad + H, pad:pad + W] = xp.permute_dims(x, (1, 0, 2, 3))
    else:
        img = xp.permute_dims(x, (1, 0, 2, 3))  # a view; the taps transpose as they copy
    col = xp.empty((C, g.FH, g.FW, N, g.OH, g.OW), dtype=x.dtype, device=array_device(x))
    for i in range(g.FH):
        for j in range(g.FW):
            col[:, i, j, :, :, :] = img[_window_index(i, j, g.OH, g.OW, g.stride)]
    return xp.reshape(col, (g.K, N * g.OH * g.OW))


def fold_batch_columns(dcol, g):
    """The adjoint of :func:`batch_columns`: (C*FH*FW, N*OH*OW) -> dx (N, C, H, W).

    Sums into a (C, N, Hp, Wp) grid, then transposes once: the adds run without a transpose,
    faster than adding into (N, C, Hp, Wp) directly even with the final copy (measured in
    docs/convolution.md, "Smaller choices").  Padded rows no window reaches stay zero.
    """
    xp = namespace(dcol)
    N, C, H, W, pad = g.N, g.C, g.H, g.W, g.pad
    col = xp.reshape(dcol, (C, g.FH, g.FW, N, g.OH, g.OW))
    img = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=dcol.dtype, device=array_device(dcol))
    for i in range(g.FH):
        for j in range(g.FW):
            # An in-place add on the window view: ``img[sl] += v`` would also run a
            # ``__setitem__`` of the view onto itself, a second kernel per tap on CuPy.
            win = img[_window_index(i, j, g.OH, g.OW, g.stride)]
            win += col[:, i, j, :, :, :]
    return swap01(img[:, :, pad:pad + H, pad:pad + W])


def forward(x, W, b, g):
    """x (N, C, H, W), W (FN, C, FH, FW), b (FN,)  ->  out (N, FN, OH, OW), :class:`GemmSaved`."""
    xp = namespace(x)
    col = batch_columns(x, g)
    y = xp.matmul(xp.reshape(W, (g.FN, g.K)), col)              # (FN, N*OH*OW): one 2-D GEMM
    out = swap01(xp.reshape(y, (g.FN, g.N, g.OH, g.OW)))        # the only price of the layout
    out += xp.reshape(b, (1, g.FN, 1, 1))
    return out, GemmSaved(g, col)


def backward(dout, saved, W, need_dx):
    """dout (N, FN, OH, OW)  ->  dx (N, C, H, W) or None, dW (FN, C, FH, FW), db (FN,)."""
    xp = namespace(dout)
    g, col = saved.g, saved.col
    d = xp.reshape(swap01(dout), (g.FN, g.N * g.OH * g.OW))
    db = xp.sum(d, axis=1)
    dW = xp.reshape(xp.matmul(d, xp.matrix_transpose(col)), g.W_shape)   # 2-D, col not copied
    dx = None
    if need_dx:
        dcol = xp.matmul(xp.matrix_transpose(xp.reshape(W, (g.FN, g.K))), d)
        dx = fold_batch_columns(dcol, g)
    return dx, dW, db
