"""Winograd minimal-filtering convolution F(m x m, 3 x 3) for 3x3 stride-1 layers, any pad.

Each m x m output tile comes from an alpha x alpha input tile (alpha = m + 2; tiles overlap
by 2) as  Y = AT [ (G g GT) * (BT d B) ] A  (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016): alpha**2 multiplies per tile and channel instead of 9*m*m, i.e. 2.25x
fewer for F(2x2, 3x3) (``tile=2``) and 4x fewer for F(4x4, 3x3) (``tile=4``).

Batched over the whole batch so that a GPU launches a fixed, small number of kernels per
layer whatever the map size (no loop over tiles, images or channels):

- filters:  U = GG @ W  -> (T, FN, C), T = alpha**2 (one GEMM with the Kronecker product G (x) G)
- input:    V = BT applied to the tile rows, then to the tile columns -> (T, C, P), P = N*nTH*nTW
  tiles (two GEMMs, each preceded by one copy that lays the overlapping tiles out)
- products: M = U @ V, the T elementwise products summed over C as ONE batched matmul
  (T, FN, C) @ (T, C, P) -> (T, FN, P)
- output:   Y = AT applied along both tile axes (two GEMMs), the bias added while the tiles are
  put back in (N, FN, OH, OW) order (one operation).

The backward pass is the exact adjoint of those linear maps (in exact arithmetic the
convolution's gradients themselves): the output gradient goes through the transposed output
transform once, ``dG = A dout AT`` (T, FN, P), and then

- dW: ``dU = dG @ V^T`` (one batched matmul), ``dW = GG^T dU`` -- the Winograd correlation of
  input and output gradient, F(3x3, m x m) with the same transforms;
- dx: ``dV = U^T @ dG`` (one batched matmul), then the transposed input transform and the
  overlapping tiles added back.  This is the transposed convolution (the 180-degree-rotated,
  channel-swapped filters applied to dout padded by 2 - pad) computed on the forward's tiling,
  so dout is transformed once for both gradients and no pad below 0 needs a special case.

Inputs whose output is not a multiple of the tile are zero-padded at the bottom/right to
whole tiles and the output cropped.  Registered in :mod:`dualnet.conv` as ``"winograd"``
(tile 2) and ``"winograd4"`` (tile 4, :mod:`.winograd4`); ``auto`` does not choose either on
the CPU, where both are slower than ``rows`` (measured in docs/convolution.md).
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import namespace, array_device
from ..errors import ConfigError, ShapeError
from .layout import NCHW

__all__ = ["NAME", "LAYOUT", "TILES", "supports", "fits", "forward", "backward", "winograd_forward",
           "WinogradSaved", "transforms"]

NAME = "winograd"
LAYOUT = NCHW
TILES = (2, 4)
"""Output tile sizes m offered: F(2x2, 3x3) and F(4x4, 3x3)."""

# Transform matrices (Lavin & Gray 2016), rows of BT/AT and G as printed there.  F(2, 3) uses
# the interpolation points 0, 1, -1, inf: entries 0, +-1, +-1/2, so float32 rounding is barely
# above the direct convolution's.  F(4, 3) uses 0, +-1, +-2, inf: entries up to 8 in AT and 5 in
# BT and fractions 1/6, 1/12, 1/24 in G (rounded in float32), hence its larger error.
_F2 = dict(
    BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    G=[[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
)
_F4 = dict(
    BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
)


def transforms(tile):
    """The matrices (BT (alpha, alpha), G (alpha, 3), AT (tile, alpha)) of F(tile, 3), as nested
    lists of floats (the host side of this module needs no array library)."""
    if tile not in TILES:
        raise ConfigError(f"winograd tile {tile!r} is not offered; choose one of {TILES}", param="tile")
    m = _F2 if tile == 2 else _F4
    return tuple([[float(v) for v in row] for row in m[k]] for k in ("BT", "G", "AT"))


def _kron(a, b):
    """Kronecker product of two matrices given as nested lists: row i*len(b) + k, column
    j*len(b[0]) + l holds a[i][j] * b[k][l] (the layout of a row-major (i, k) x (j, l) reshape)."""
    return [[x * y for x in ra for y in rb] for ra in a for rb in b]


class WinogradSaved(NamedTuple):
    """What :func:`backward` needs from :func:`forward`."""
    method: str          # "winograd" (tile 2) or "winograd4"
    V: object            # (T, C, P) transformed input tiles, for dW
    U: object            # (T, FN, C) transformed filters, for dx
    x_shape: tuple       # (N, C, H, W)
    pad: int
    tile: int
    OH: int
    OW: int


def supports(g):
    """The conv method interface: True for a :class:`~dualnet.conv.geometry.ConvGeometry` of 3x3
    filters at stride 1 (any pad)."""
    return fits(g.FH, g.FW, g.stride)


def forward(x, W, b, g):
    """The conv method interface: F(2x2, 3x3) on geometry ``g`` (``winograd4`` is F(4x4, 3x3))."""
    return winograd_forward(x, W, b, g.pad, 2)


def fits(FH, FW, stride):
    """True for the layers this method computes: 3x3 filters, stride 1 (any pad)."""
    return FH == 3 and FW == 3 and stride == 1


def _tiles(OH, OW, m):
    """Tile counts (nTH, nTW) covering an OH x OW output with m x m tiles (the last ones cropped)."""
    return -(-OH // m), -(-OW // m)


def _on(x, a):
    """Host matrix ``a`` as an array of ``x``'s namespace, dtype and device (a transfer, no kernel)."""
    return namespace(x).asarray(a, dtype=x.dtype, device=array_device(x))


def _overlap_views(a, axis, count, step, n):
    """The ``count`` views of ``a`` whose axis ``axis`` (grouped in pairs) starts at pair
    offset o = 0..count-1 and advances ``step`` pairs per tile for ``n`` tiles.

    With the padded rows grouped in pairs, tile t of size alpha = 2*count covers pairs
    step*t + o, o < count: one strided view per o, and no index arrays.
    """
    out = []
    for o in range(count):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(o, o + step * (n - 1) + 1, step)
        out.append(a[tuple(idx)])
    return out


def _input_transform(xpad, BT, m, nTH, nTW):
    """V = BT d B for every alpha x alpha tile d of ``xpad``.

    Parameters
    ----------
    xpad : array, shape (N, C, m*nTH + 2, m*nTW + 2)

    Returns
    -------
    V : array, shape (T, C, P), T = alpha**2, P = N*nTH*nTW, rows k*alpha + l
    """
    xp = namespace(xpad)
    N, C, Hp, Wp = xpad.shape
    alpha, half = m + 2, m // 2
    # rows: the alpha/2 row-pair offsets of each tile, stacked as (a, e, C, N, nTH, Wp); the
    # first GEMM then contracts r = 2a + e over the full width, before columns are duplicated
    rows = xp.reshape(xpad, (N, C, Hp // 2, 2, Wp))
    R = xp.stack([xp.permute_dims(v, (3, 1, 0, 2, 4))
                  for v in _overlap_views(rows, 2, alpha // 2, half, nTH)])
    R = xp.matmul(BT, xp.reshape(R, (alpha, C * N * nTH * Wp)))          # (k, C*N*nTH*Wp)
    # columns: the same with the column pairs, stacked as (k, b, f, C, N, nTH, nTW)
    cols = xp.reshape(R, (alpha, C, N, nTH, Wp // 2, 2))
    S = xp.stack([xp.permute_dims(v, (0, 5, 1, 2, 3, 4))
                  for v in _overlap_views(cols, 4, alpha // 2, half, nTW)], axis=1)
    S = xp.reshape(S, (alpha, alpha, C * N * nTH * nTW))
    V = xp.matmul(BT, S)                       # BT broadcast over k: (k, l, C*P)
    return xp.reshape(V, (alpha * alpha, C, N * nTH * nTW))


def _input_transform_adjoint(dV, BT, m, x4, nTH, nTW):
    """The adjoint of :func:`_input_transform`: dV (T, C, P) -> d(xpad) (N, C, Hp, Wp); the
    overlapping tiles' gradients are summed (one in-place add per pair offset and axis)."""
    xp = namespace(dV)
    N, C, Hp, Wp = x4
    alpha, half = m + 2, m // 2
    dev = array_device(dV)
    B = xp.matrix_transpose(BT)
    dS = xp.matmul(B, xp.reshape(dV, (alpha, alpha, C * N * nTH * nTW)))   # (k, b*2+f, C*P)
    dS = xp.reshape(dS, (alpha, alpha // 2, 2, C, N, nTH, nTW))
    dR = xp.zeros((alpha, C, N, nTH, Wp // 2, 2), dtype=dV.dtype, device=dev)
    for b, v in enumerate(_overlap_views(dR, 4, alpha // 2, half, nTW)):
        v += xp.permute_dims(dS[:, b, ...], (0, 2, 3, 4, 5, 1))   # in place on the view: one kernel
    dR = xp.matmul(B, xp.reshape(dR, (alpha, C * N * nTH * Wp)))         # (a*2+e, C*N*nTH*Wp)
    dR = xp.reshape(dR, (alpha // 2, 2, C, N, nTH, Wp))
    dpad = xp.zeros((N, C, Hp // 2, 2, Wp), dtype=dV.dtype, device=dev)
    for a, v in enumerate(_overlap_views(dpad, 2, alpha // 2, half, nTH)):
        v += xp.permute_dims(dR[a, ...], (2, 1, 3, 0, 4))
    return xp.reshape(dpad, (N, C, Hp, Wp))


def _filter_transform(W, GG):
    """U = G g GT for every filter g: W (FN, C, 3, 3) -> U (T, FN, C), as one GEMM with
    GG = G (x) G (T, 9), an array on W's device."""
    xp = namespace(W)
    FN, C = W.shape[0], W.shape[1]
    U = xp.matmul(GG, xp.matrix_transpose(xp.reshape(W, (FN * C, 9))))   # (T, FN*C)
    return xp.reshape(U, (GG.shape[0], FN, C))


def winograd_forward(x, W, b, pad, tile=2):
    """3x3 stride-1 convolution (cross-correlation) by Winograd F(tile x tile, 3 x 3).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    W : array, shape (FN, C, 3, 3)
    b : array, shape (FN,)
    pad : int   zero padding on every side, any value >= 0
    tile : {2, 4}   output tile size m

    Returns
    -------
    out : array, shape (N, FN, OH, OW), OH = H + 2*pad - 2, C-contiguous
    saved : WinogradSaved   what :func:`backward` needs
    """
    xp = namespace(x)
    BT, G, AT = transforms(tile)
    if x.ndim != 4 or W.ndim != 4:
        raise ShapeError(f"winograd convolution expects input (N, C, H, W) and filters (FN, C, 3, 3), "
                         f"got shapes {tuple(x.shape)} and {tuple(W.shape)}")
    N, C, H, Wd = x.shape
    FN = W.shape[0]
    if pad < 0:
        raise ConfigError(f"winograd convolution: pad must be >= 0, got {pad}", param="pad")
    if not fits(W.shape[2], W.shape[3], 1) or W.shape[1] != C:
        raise ShapeError(f"winograd convolution takes filters (FN, C={C}, 3, 3) for input {tuple(x.shape)}; "
                         f"got W {tuple(W.shape)}")
    OH, OW = H + 2 * pad - 2, Wd + 2 * pad - 2
    if OH < 1 or OW < 1:
        raise ShapeError(f"winograd convolution: input {H}x{Wd} with pad {pad} is smaller than the 3x3 filter")
    m = tile
    nTH, nTW = _tiles(OH, OW, m)
    if pad == 0 and OH % m == 0 and OW % m == 0:
        xpad = x   # already whole tiles: no copy
    else:
        # zero grid of whole tiles: the pad on top/left, the input, and zeros up to m*nT + 2
        xpad = xp.zeros((N, C, m * nTH + 2, m * nTW + 2), dtype=x.dtype, device=array_device(x))
        xpad[:, :, pad:pad + H, pad:pad + Wd] = x
    V = _input_transform(xpad, _on(x, BT), m, nTH, nTW)
    U = _filter_transform(W, _on(W, _kron(G, G)))
    M = xp.matmul(U, V)                                   # (T, FN, P): the only O(C) work
    alpha = m + 2
    A_T = _on(x, AT)
    Y = xp.matmul(A_T, xp.reshape(M, (alpha, alpha * FN * N * nTH * nTW)))       # (p, l, ...)
    Y = xp.matmul(A_T, xp.reshape(Y, (m, alpha, FN * N * nTH * nTW)))            # (p, q, ...)
    Y = xp.reshape(Y, (m, m, FN, N, nTH, nTW))
    # (p, q, FN, N, nTH, nTW) -> (N, FN, nTH, p, nTW, q): the bias add writes the new layout
    out = xp.permute_dims(Y, (3, 2, 4, 0, 5, 1)) + xp.reshape(b, (1, FN, 1, 1, 1, 1))
    out = xp.reshape(out, (N, FN, m * nTH, m * nTW))
    if OH % m or OW % m:   # cropped: copied, so the output is in the NCHW order LAYOUT declares
        out = xp.asarray(out[:, :, :OH, :OW], copy=True)
    return out, WinogradSaved(NAME if tile == 2 else f"{NAME}{tile}", V, U, tuple(x.shape), pad, tile, OH, OW)


def backward(dout, saved, W, need_dx=True):
    """Gradients of :func:`forward`.

    Parameters
    ----------
    dout : array, shape (N, FN, OH, OW)
    saved : WinogradSaved   the second result of :func:`forward`
    W : array, shape (FN, C, 3, 3)
    need_dx : bool   False skips dx (a first layer's input gradient is never used)

    Returns
    -------
    dx : array (N, C, H, W) or None;  dW : array (FN, C, 3, 3);  db : array (FN,)
    """
    xp = namespace(dout)
    BT, G, AT = transforms(saved.tile)
    N, C, H, Wd = saved.x_shape
    FN = W.shape[0]
    m, pad, OH, OW = saved.tile, saved.pad, saved.OH, saved.OW
    alpha = m + 2
    nTH, nTW = _tiles(OH, OW, m)
    P = N * nTH * nTW
    db = xp.sum(dout, axis=(0, 2, 3))
    if OH % m or OW % m:   # back to whole tiles: the cropped outputs get zero gradient
        d = xp.zeros((N, FN, m * nTH, m * nTW), dtype=dout.dtype, device=array_device(dout))
        d[:, :, :OH, :OW] = dout
    else:
        d = dout
    # dG = A dY AT per tile, the adjoint of the output transform: (p, q, FN, P) -> (k, l, FN, P)
    # (N, FN, nTH, p, nTW, q) -> (p, q*FN*P): the reshape copies (dout arrives in NCHW order)
    dY = xp.permute_dims(xp.reshape(d, (N, FN, nTH, m, nTW, m)), (3, 5, 1, 0, 2, 4))
    dY = xp.reshape(dY, (m, m * FN * P))
    A = xp.matrix_transpose(_on(dout, AT))                                       # (alpha, m)
    dG = xp.matmul(A, dY)                                                        # (k, q, FN*P)
    dG = xp.matmul(A, xp.reshape(dG, (alpha, m, FN * P)))                        # (k, l, FN*P)
    dG = xp.reshape(dG, (alpha * alpha, FN, P))
    dU = xp.matmul(dG, xp.matrix_transpose(saved.V))                             # (T, FN, C)
    GG = _on(dout, _kron(G, G))                                                # (T, 9)
    dW = xp.matmul(xp.matrix_transpose(xp.reshape(dU, (alpha * alpha, FN * C))), GG)
    dW = xp.reshape(dW, (FN, C, 3, 3))
    if not need_dx:
        return None, dW, db
    dV = xp.matmul(xp.matrix_transpose(saved.U), dG)                             # (T, C, P)
    x4 = (N, C, m * nTH + 2, m * nTW + 2)
    dpad = _input_transform_adjoint(dV, _on(dout, BT), m, x4, nTH, nTW)
    return dpad[:, :, pad:pad + H, pad:pad + Wd], dW, db
