"""``"im2col"``: the book's method, per-sample columns and one batched matmul.

The columns (N, C*FH*FW, OH*OW) of :func:`dualnet.functions.im2col` times W as (FN, C*FH*FW)
give (N, FN, OH*OW), already the output's layout.  The reference every other method is tested
against, and the CPU's choice for few input channels.  (CuPy copies the columns for its batched
dW product every step: on a GPU "gemm" avoids that.)  Any stride, any geometry.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import namespace
from ..functions import col2im, im2col
from .geometry import ConvGeometry
from .layout import NCHW

NAME = "im2col"
LAYOUT = NCHW


class Im2colSaved(NamedTuple):
    """What :func:`backward` needs: the geometry and the columns (N, C*FH*FW, OH*OW)."""
    g: ConvGeometry
    col: Any
    method: str = NAME


def supports(g):
    return True


def forward(x, W, b, g):
    """x (N, C, H, W), W (FN, C, FH, FW), b (FN,)  ->  out (N, FN, OH, OW), :class:`Im2colSaved`."""
    xp = namespace(x)
    col = im2col(x, g.FH, g.FW, g.stride, g.pad)
    out = xp.matmul(xp.reshape(W, (g.FN, g.K)), col)    # (N, FN, OH*OW)
    out = out + xp.reshape(b, (1, g.FN, 1))
    return xp.reshape(out, g.out_shape), Im2colSaved(g, col)


def backward(dout, saved, W, need_dx):
    """dout (N, FN, OH, OW)  ->  dx (N, C, H, W) or None, dW (FN, C, FH, FW), db (FN,)."""
    xp = namespace(dout)
    g, col = saved.g, saved.col
    d = xp.reshape(dout, (g.N, g.FN, g.OH * g.OW))
    db = xp.sum(d, axis=(0, 2))
    # Per-sample GEMMs against the transposed view of col, then a sum over N: unlike
    # tensordot this never copies col into a transposed layout (faster in NumPy: measured in
    # docs/convolution.md, "Smaller choices").
    dW = xp.reshape(xp.sum(xp.matmul(d, xp.matrix_transpose(col)), axis=0), g.W_shape)
    dx = None
    if need_dx:
        dcol = xp.matmul(xp.matrix_transpose(xp.reshape(W, (g.FN, g.K))), d)  # (N, CFF, OH*OW)
        dx = col2im(dcol, g.x_shape, g.FH, g.FW, g.stride, g.pad)
    return dx, dW, db
