"""``"rows"``: im2col for stride 1 built for a CPU's caches, on a batch-innermost grid.

The input is padded into a (C, Hp, Wp, N) grid, so that each tap of a whole output row of the
batch is one long contiguous run; the columns are built a few output rows at a time (about
:data:`CHUNK_BYTES`); the bias is one more GEMM row; dx is the same gather on the gradient.
Backward rebuilds the columns from the kept grid instead of keeping them.  The output is
returned as a batch-innermost view (``LAYOUT`` = CHWN, see :mod:`dualnet.conv.layout`).  The
CPU's choice for stride 1, except few channels with large filters.  Stride 1 only: there the
floored output size is exact, so every input pixel is reached.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import array_device, namespace
from .geometry import ConvGeometry
from .layout import CHWN

NAME = "rows"
LAYOUT = CHWN

CHUNK_BYTES = 2 << 20
"""Size of the column block built at a time: small enough to stay in a CPU's last-level cache
between the copies that build it and the GEMMs that read it (measurements: docs/convolution.md)."""


class RowsSaved(NamedTuple):
    """What :func:`backward` needs: the geometry and the padded input grid (C, Hp, Wp, N)."""
    g: ConvGeometry
    grid: Any
    method: str = NAME


def supports(g):
    return g.stride == 1


def _block(depth, L, itemsize, rows):
    """Output rows per column block: ``depth`` GEMM rows of L = OW*N columns per output row,
    about CHUNK_BYTES in all, at most ``rows``."""
    return max(1, min(rows, CHUNK_BYTES // (depth * L * itemsize)))


def _framed(src, shape, top, left):
    """A new array of ``shape`` (A, rows, cols, N) holding ``src`` (A, h, w, N) at (top, left)
    and zeros around it.  Only the frame is zeroed: zeros() first would write every element
    twice (measured in docs/convolution.md, "Smaller choices")."""
    xp = namespace(src)
    _, h, w, _ = src.shape
    out = xp.empty(shape, dtype=src.dtype, device=array_device(src))
    out[:, top:top + h, left:left + w, :] = src
    out[:, :top, :, :] = 0
    out[:, top + h:, :, :] = 0
    out[:, top:top + h, :left, :] = 0
    out[:, top:top + h, left + w:, :] = 0
    return out


def _fill(buf, src, h0, r, FH, FW, width, offset):
    """Columns of output rows h0..h0+r into ``buf`` (rows, rb, width*N): row ``c*FH*FW + t``
    (as in W.reshape(FN, -1)) holds src[c, h0+a : h0+a+r, b : b+width, :] where (a, b) =
    ``offset(i, j)`` for tap t = i*FW + j.  One copy of C long runs per tap."""
    xp = namespace(src)
    C, T = src.shape[0], FH * FW
    N = src.shape[3]
    for i in range(FH):
        for j in range(FW):
            a, b = offset(i, j)
            buf[i * FW + j:C * T:T, :r, :] = xp.reshape(src[:, h0 + a:h0 + a + r, b:b + width, :], (C, r, width * N))


def _columns_buffer(xp, depth, rb, L, dtype, dev, ones):
    """An empty (depth, rb, L) block of columns; with ``ones`` its last row is 1 (the bias row)."""
    buf = xp.empty((depth, rb, L), dtype=dtype, device=dev)
    if ones:
        buf[depth - 1, :, :] = 1
    return buf


def forward(x, W, b, g):
    """Stride-1 convolution a block of output rows at a time.

    For output row oh and tap (i, j) the pixels of all OW columns and all N images are one
    contiguous run of OW*N values, grid[c, oh+i, j:j+OW, :], so the columns (C*FH*FW + 1,
    rows*OW*N) of a block of output rows are FH*FW copies of long runs, and the GEMM computes
    no position that is cut afterwards.  A row of ones in the columns and the bias as a last
    filter column add the bias inside the GEMM.  The result (FN, OH, OW, N) is returned as an
    (N, FN, OH, OW) view.
    """
    xp = namespace(x)
    K, L, pad = g.K, g.OW * g.N, g.pad
    grid = _framed(xp.permute_dims(x, (1, 2, 3, 0)), (g.C, g.H + 2 * pad, g.W + 2 * pad, g.N), pad, pad)
    Wb = xp.concat([xp.reshape(W, (g.FN, K)), xp.reshape(b, (g.FN, 1))], axis=1)   # (FN, K+1)
    rb = _block(K + 1, L, xp.finfo(x.dtype).bits // 8, g.OH)
    buf = _columns_buffer(xp, K + 1, rb, L, x.dtype, array_device(x), ones=True)
    y = xp.empty((g.FN, g.OH, L), dtype=x.dtype, device=array_device(x))
    for h0 in range(0, g.OH, rb):
        r = min(rb, g.OH - h0)
        _fill(buf, grid, h0, r, g.FH, g.FW, g.OW, lambda i, j: (i, j))
        y[:, h0:h0 + r, :] = xp.reshape(xp.matmul(Wb, xp.reshape(buf[:, :r, :], (K + 1, r * L))), (g.FN, r, L))
    out = xp.permute_dims(xp.reshape(y, (g.FN, g.OH, g.OW, g.N)), (3, 0, 1, 2))
    return out, RowsSaved(g, grid)


def _dW_db(G, grid, g, dtype, dev):
    """[dW | db] = sum over blocks of cols @ G_blk.T, G = dout as (FN, OH, OW*N); the ones row
    of the columns gives db."""
    xp = namespace(G)
    K, L = g.K, g.OW * g.N
    rb = _block(K + 1, L, xp.finfo(dtype).bits // 8, g.OH)
    buf = _columns_buffer(xp, K + 1, rb, L, dtype, dev, ones=True)
    acc = None
    for h0 in range(0, g.OH, rb):
        r = min(rb, g.OH - h0)
        _fill(buf, grid, h0, r, g.FH, g.FW, g.OW, lambda i, j: (i, j))
        part = xp.matmul(xp.reshape(buf[:, :r, :], (K + 1, r * L)),
                         xp.matrix_transpose(xp.reshape(G[:, h0:h0 + r, :], (g.FN, r * L))))
        if acc is None:
            acc = part
        else:
            acc += part
    return xp.reshape(xp.matrix_transpose(acc[:K, :]), g.W_shape), acc[K, :]   # acc: dW.T rows, then db


def _dx(G, W, g, dtype, dev):
    """dx: the full correlation of dout with the flipped filters, computed like the forward.

    dout goes into a zero grid Gz (FN, H+FH-1, W+FW-1, N); tap (i, j) of dx row hh reads Gz row
    hh+FH-1-i from column FW-1-j on, and dx_blk = W' (C, FN*FH*FW) @ cols_G -- a gather of long
    runs instead of a scatter-add into shifted windows.  Output (oh, ow) sits at Gz (oh+FH-1-pad,
    ow+FW-1-pad); outputs that no dx pixel reads (pad >= FH or FW) are left out.
    """
    xp = namespace(G)
    FH, FW, N, H, Wd = g.FH, g.FW, g.N, g.H, g.W
    Hg, Wg = H + FH - 1, Wd + FW - 1
    A, B = FH - 1 - g.pad, FW - 1 - g.pad
    r0, r1, c0, c1 = max(0, -A), min(g.OH, Hg - A), max(0, -B), min(g.OW, Wg - B)
    Gz = _framed(xp.reshape(G, (g.FN, g.OH, g.OW, N))[:, r0:r1, c0:c1, :], (g.FN, Hg, Wg, N), r0 + A, c0 + B)
    Wt = xp.reshape(xp.permute_dims(W, (1, 0, 2, 3)), (g.C, g.FN * g.taps))       # W'[c, f*T + t]
    KG, Lx = g.FN * g.taps, Wd * N
    rbg = _block(KG, Lx, xp.finfo(dtype).bits // 8, H)
    bufg = _columns_buffer(xp, KG, rbg, Lx, dtype, dev, ones=False)
    dX = xp.empty((g.C, H, Lx), dtype=dtype, device=dev)
    for h0 in range(0, H, rbg):
        r = min(rbg, H - h0)
        _fill(bufg, Gz, h0, r, FH, FW, Wd, lambda i, j: (FH - 1 - i, FW - 1 - j))
        dX[:, h0:h0 + r, :] = xp.reshape(xp.matmul(Wt, xp.reshape(bufg[:, :r, :], (KG, r * Lx))), (g.C, r, Lx))
    return xp.permute_dims(xp.reshape(dX, (g.C, H, Wd, N)), (3, 0, 1, 2))


def backward(dout, saved, W, need_dx):
    """Gradients block by block, the columns rebuilt from the kept grid (a copy in cache is
    cheaper than reading full-batch columns back from memory).  ``dout`` (N, FN, OH, OW) as
    G (FN, OH, OW*N) is a view when it is batch-innermost, as the layers above hand it back."""
    xp = namespace(dout)
    g, dev = saved.g, array_device(dout)
    G = xp.reshape(xp.permute_dims(dout, (1, 2, 3, 0)), (g.FN, g.OH, g.OW * g.N))
    dW, db = _dW_db(G, saved.grid, g, dout.dtype, dev)
    dx = _dx(G, W, g, dout.dtype, dev) if need_dx else None
    return dx, dW, db
