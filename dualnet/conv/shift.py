"""``"shift"``: shift-and-GEMM (kn2row), one GEMM per filter tap on shifted slices, no columns.

Every filter tap is one GEMM on a shifted slice of the padded input, accumulated on the padded
output grid.  Stride 1 only.  On one CPU thread the fastest for 3x3 filters on large maps with
many channels; bad for few channels or big filters (many thin GEMMs).  Never chosen by "auto".
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import array_device, namespace
from .geometry import ConvGeometry
from .layout import NCHW, swap01

NAME = "shift"
LAYOUT = NCHW


class ShiftSaved(NamedTuple):
    """What :func:`backward` needs: the geometry and the flattened padded input X (C, (N+1)*Hp*Wp)."""
    g: ConvGeometry
    X: Any
    method: str = NAME


def supports(g):
    return g.stride == 1


def _tap_major(W):
    """W (FN, C, FH, FW) as contiguous (FH*FW, FN, C): each tap's (FN, C) matrix is a plain
    contiguous block that BLAS takes without a copy (W[:, :, i, j] has a 9-element stride)."""
    xp = namespace(W)
    FN, C, FH, FW = W.shape
    return xp.reshape(xp.permute_dims(W, (2, 3, 0, 1)), (FH * FW, FN, C))


def _accumulate(products):
    """The sum of an iterable of arrays, added in place into the first (no accumulate-into GEMM
    in the standard: a temporary and an add per term)."""
    acc = None
    for y in products:
        if acc is None:
            acc = y
        else:
            acc += y
    return acc


def forward(x, W, b, g):
    """Stride-1 convolution as FH*FW GEMMs on shifted slices of the flattened padded input.

    The input is padded into a (C, N+1, Hp, Wp) grid and flattened to X (C, (N+1)*Hp*Wp).
    On the flattened padded grid, output position p = n*Hp*Wp + oh*Wp + ow reads input
    p + i*Wp + j at tap (i, j), so tap (i, j) is ``W_ij (FN, C) @ X[:, s:s+M]`` with
    s = i*Wp + j and M = N*Hp*Wp: a column slice, which BLAS reads in place.  The products
    accumulate on the padded output grid, whose valid (OH, OW) corner is then cut out.  The
    spare zero image at the end keeps the last slices in bounds.  Costs: (Hp*Wp)/(OH*OW)
    more output arithmetic (1.15x at 28x28 pad 1), a temporary and an add per tap.
    """
    xp = namespace(x)
    N, C, H, Wd, pad = g.N, g.C, g.H, g.W, g.pad
    Hp, Wp = H + 2 * pad, Wd + 2 * pad
    M = N * Hp * Wp
    grid = xp.zeros((C, N + 1, Hp, Wp), dtype=x.dtype, device=array_device(x))
    grid[:, :N, pad:pad + H, pad:pad + Wd] = xp.permute_dims(x, (1, 0, 2, 3))
    X = xp.reshape(grid, (C, (N + 1) * Hp * Wp))
    Wt = _tap_major(W)
    acc = _accumulate(xp.matmul(Wt[i * g.FW + j, :, :], X[:, i * Wp + j:i * Wp + j + M])   # (FN, M)
                      for i in range(g.FH) for j in range(g.FW))
    out = swap01(xp.reshape(acc, (g.FN, N, Hp, Wp))[:, :, :g.OH, :g.OW])
    out += xp.reshape(b, (1, g.FN, 1, 1))
    return out, ShiftSaved(g, X)


def backward(dout, saved, W, need_dx):
    """dout goes into a zeroed padded grid G (FN, 1+N, Hp, Wp) -- a zero image in front, and
    zeros wherever the forward's grid held no valid output, so those rows add nothing.  Then
    per tap: dW_ij = G @ X[:, s:s+M].T (a transposed view: no copy), and
    dX = sum_ij W_ij.T @ G shifted back by s, which reads G (the front zero image covers
    shifts up to Hp*Wp) instead of adding into shifted slices of dX.
    """
    xp = namespace(dout)
    g, X = saved.g, saved.X
    N, C, H, Wd, pad = g.N, g.C, g.H, g.W, g.pad
    Hp, Wp = H + 2 * pad, Wd + 2 * pad
    S, M = Hp * Wp, N * Hp * Wp
    grid = xp.zeros((g.FN, N + 1, Hp, Wp), dtype=dout.dtype, device=array_device(dout))
    grid[:, 1:, :g.OH, :g.OW] = xp.permute_dims(dout, (1, 0, 2, 3))
    G = xp.reshape(grid, (g.FN, (N + 1) * S))
    Gv = G[:, S:]
    db = xp.sum(dout, axis=(0, 2, 3))
    Wt = _tap_major(W)
    taps = [(i * g.FW + j, i * Wp + j) for i in range(g.FH) for j in range(g.FW)]
    dWt = xp.stack([xp.matmul(Gv, xp.matrix_transpose(X[:, s:s + M])) for _, s in taps])
    dW = xp.reshape(xp.permute_dims(xp.reshape(dWt, (g.FH, g.FW, g.FN, C)), (2, 3, 0, 1)), (g.FN, g.K))
    dW = xp.reshape(dW, g.W_shape)
    dx = None
    if need_dx:
        acc = _accumulate(xp.matmul(xp.matrix_transpose(Wt[t, :, :]), G[:, S - s:S - s + M])   # (C, M)
                          for t, s in taps)
        dx = swap01(xp.reshape(acc, (C, N, Hp, Wp))[:, :, pad:pad + H, pad:pad + Wd])
    return dx, dW, db
