"""``"winograd_rows"``: Winograd F(2x2, 3x3) for a CPU's caches, one row of tiles at a time.

The algorithm and its adjoint are :mod:`.winograd`'s (Lavin & Gray 2016); what differs is the
order of the work.  :mod:`.winograd` transforms the whole batch at once, so that a GPU launches
a fixed, small number of kernels; on a CPU each of its transforms is then a sweep of memory
(the transformed input of a 16->16 layer at 28x28, batch 100, is 20 MB in float32).  Here the
batch is cut into chunks of images (all of it unless one row of tiles would exceed
:data:`BLOCK_BYTES`) and the work done one row of tiles of a chunk at a time, so that the
input transform, the alpha**2 products and the output transform of a block stay in cache:

- the input is padded into a batch-innermost *tiled* grid, (Hp, alpha, C, nTW, nb): padded
  column m*tw + j sits at [:, j, :, tw, :] (alpha/m times the padded input), so a tile row's
  alpha input rows are one slice of the leading axis and each offset j one of the next;
- input:    V = BT d B as two matmuls per block, each batched over alpha (BLAS runs a few
  alpha x alpha by alpha x (C*tiles) products far faster than C*alpha small ones or one with
  N = alpha*C*tiles): the rows batched over the offsets j, then the columns batched over the
  transformed rows, written into V itself;
- products: M = U @ V, one batched matmul (T, FN, C) @ (T, C, tiles*nb), the bias added to the
  one product every output reads with weight 1 (column 1 of AT is all ones);
- output:   Y = AT M A as two matmuls, each batched over the other tile index (one GEMM over all
  of M, N = alpha*FN*tiles, ran at half the speed), copied into the (FN, OH, OW, N) result
  with one copy per tile row (y's columns split as (tile column, q)), returned as an (N, FN,
  OH, OW) view (``LAYOUT`` = CHWN, :mod:`dualnet.conv.layout`): no transpose before or after,
  in a network of "rows"-ordered layers.

Small GEMMs with the transform matrices replace elementwise combinations: a BLAS kernel reads
each input once for all alpha outputs (measured: 2-3x faster than one ufunc per term here).
**Memory**: the forward keeps V of every block for backward while all of it fits
:data:`KEEP_BYTES`, (alpha/m)**2 times the whole-tile input (2.25x the input for F(4x4, 3x3),
4x for F(2x2, 3x3)), and then keeps no grid; above it backward rebuilds V per block from the
kept grid (alpha/m times the padded input).  Per block backward computes dM = A dY AT,
dU += dM @ V^T (dW, the Winograd correlation) and dV = U^T @ dM, whose adjoint input transform
(the column offsets j >= m folded onto the next tile column in cache) is written into a tiled
gradient grid, copied into dx once per chunk.  Registered as ``"winograd_rows"`` (F(2x2, 3x3))
and ``"winograd4_rows"`` (F(4x4, 3x3), :mod:`.winograd4_rows`); where ``auto`` takes them on
the host, and the measurements: docs/convolution.md.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..backend import array_device, namespace
from . import winograd as wg
from .geometry import ConvGeometry
from .layout import CHWN

__all__ = ["NAME", "LAYOUT", "BLOCK_BYTES", "supports", "forward", "backward", "blocked_forward",
           "WinogradRowsSaved", "KEEP_BYTES"]

NAME = "winograd_rows"
LAYOUT = CHWN

BLOCK_BYTES = 8 << 20
"""Intermediate arrays of one block (one row of tiles of a chunk of images), at most about:
the batch is cut into chunks when one row of tiles of all of it would take more (measured in
docs/convolution.md: cutting a batch of 100 shortens the contiguous runs, which costs more
than the cache misses it saves)."""


KEEP_BYTES = 128 << 20
"""The forward keeps the input transform V of every block for backward when all of it (one
layer call's) takes at most this (V is (alpha/m)**2 the size of the whole-tile input: about 2.25x the input for
F(4x4, 3x3), 4x for F(2x2, 3x3)); above it, backward rebuilds V from the tiled grid, so that
large images do not multiply the memory a training step holds."""


class WinogradRowsSaved(NamedTuple):
    """What :func:`backward` needs: the geometry, the tiled input grid of every chunk of images
    (:func:`_grid_rows`; None when V is kept), the transformed filters U (T, FN, C), the tile
    m, the images per chunk and the kept V."""
    g: ConvGeometry
    grids: Any
    U: Any
    tile: int
    chunk: int
    method: str = NAME
    kept: Any = None
    """The input transform V (nTH, T, C, nTW*nb) of every chunk, kept by the forward when it
    fits :data:`KEEP_BYTES` (then ``grids`` is None); None when backward rebuilds V."""


def supports(g):
    """3x3 filters at stride 1, any pad (as :mod:`.winograd`)."""
    return wg.fits(g.FH, g.FW, g.stride)


def forward(x, W, b, g):
    """F(2x2, 3x3) on geometry ``g`` (see :func:`blocked_forward`)."""
    return blocked_forward(x, W, b, g, 2)


class _Plan:
    """The constants of one layer: tile m, alpha = m + 2, T = alpha**2, the transforms as
    arrays on the device, tile counts, the tiled grid's shape, images per chunk, and whether
    results may be written with ``out=`` (the host; the array API has no ``out=``)."""

    def __init__(self, g, tile, x, chunk=None):
        xp, dev = namespace(x), array_device(x)
        self.g, self.m, self.alpha = g, tile, tile + 2
        a = self.alpha
        self.T = self.alpha ** 2
        self.xp, self.dtype, self.dev = xp, x.dtype, dev
        self.fast = dev == "cpu"
        if self.fast and hasattr(x, "transpose"):   # NumPy's methods: its functions wrap them in
            # Python (0.4 us more a call, 700 calls a step); not on a wrapped (profiled) array
            self.reshape, self.permute = (lambda a, s: a.reshape(s)), (lambda a, axes: a.transpose(axes))
        else:
            self.reshape, self.permute = xp.reshape, xp.permute_dims
        BT, self.G, AT = wg.transforms(tile)
        on = lambda a: xp.asarray(a, dtype=x.dtype, device=dev)   # noqa: E731
        self.BT, self.AT = on(BT), on(AT)                          # (alpha, alpha), (m, alpha)
        self.B, self.A = on(_transposed(BT)), on(_transposed(AT))   # their transposes
        # the adjoint of the row transform writes rows 0..alpha-m-1 of a tile row (shared with
        # the tile row above: added) apart from the others (first written: assigned)
        self.B_shared, self.B_own = self.B[:a - tile, ...], self.B[a - tile:, ...]
        self.GG = on(wg._kron(self.G, self.G))                     # (T, 9): U from W, dW from dU
        self.nTH, self.nTW = wg._tiles(g.OH, g.OW, tile)
        self.Hp = tile * self.nTH + 2
        # the tile columns each column offset j reads (forward) and writes back (backward)
        self.cols = [_cols(self, j, 0, self.nTW) for j in range(a)]
        self.untile_cols = [c if j < tile else _cols(self, j, self.nTW - 1, self.nTW) for j, c in enumerate(self.cols)]
        self.chunk = max(1, min(int(chunk), g.N)) if chunk else self._chunk(xp.finfo(x.dtype).bits // 8)

    def _chunk(self, itemsize):
        """Images per chunk: one row of tiles of them about BLOCK_BYTES of intermediates (the
        row-transformed input, V, M and the half-transformed output)."""
        g, a, m = self.g, self.alpha, self.m
        per_image = itemsize * self.nTW * (a * a * g.C + self.T * (g.C + g.FN) + m * a * g.FN)
        return max(1, min(g.N, BLOCK_BYTES // per_image))

    def keeps_V(self):
        """Whether the forward keeps V for backward: V of all tile rows of all images within
        :data:`KEEP_BYTES`."""
        itemsize = self.xp.finfo(self.dtype).bits // 8
        return itemsize * self.T * self.g.C * self.nTH * self.nTW * self.g.N <= KEEP_BYTES

    def chunks(self):
        """(n0, nb) of every chunk of images."""
        return [(n0, min(self.chunk, self.g.N - n0)) for n0 in range(0, self.g.N, self.chunk)]

    def empty(self, *shape):
        return self.xp.empty(shape, dtype=self.dtype, device=self.dev)

    def buffers(self, nb, **shapes):
        """Flat buffers for the largest chunk, by name -> shape-maker(nb); :meth:`view` cuts a
        chunk's contiguous array out of one."""
        return {name: self.xp.empty((math.prod(shape(nb)),), dtype=self.dtype, device=self.dev)
                for name, shape in shapes.items()}

    def view(self, buf, *shape):
        return self.reshape(buf[:math.prod(shape)], shape)


_PLANS = {}


def _plan(g, tile, x, chunk=None):
    """The :class:`_Plan` of a layer, kept across calls on the host (building one, its
    transforms as arrays, costs ~70 us, paid twice per layer per step otherwise)."""
    if array_device(x) != "cpu":
        return _Plan(g, tile, x, chunk)
    key = (g, tile, str(x.dtype), chunk, BLOCK_BYTES)
    p = _PLANS.get(key)
    if p is None:
        if len(_PLANS) >= 64:
            _PLANS.clear()
        p = _PLANS[key] = _Plan(g, tile, x, chunk)
    return p


def _transposed(mat):
    return [list(col) for col in zip(*mat)]


def _every(start, count, step):
    """The slice of ``count`` indices start, start + step, ... (count >= 1)."""
    return slice(start, start + step * (count - 1) + 1, step)


def _mm(p, a, b, out):
    """out = a @ b (batched, broadcasting), written into ``out`` on the host."""
    if p.fast:
        p.xp.matmul(a, b, out=out)
    else:
        out[...] = p.xp.matmul(a, b)


def _cols(p, j, t0, t1):
    """(tw, n, w): the n tile columns tw, tw + 1, ... within [t0, t1) whose column offset j
    (padded column m*tw + j) lies inside the input, the first at input column w (n may be 0)."""
    g, m = p.g, p.m
    lo = max(t0, -((j - g.pad) // m))                       # ceil((pad - j) / m)
    hi = min(t1, (g.pad + g.W - 1 - j) // m + 1)
    return lo, max(0, hi - lo), m * lo + j - g.pad


def _grid_rows(p, src, grid, n0, r0, r1):
    """Fill padded rows [r0, r1) of one chunk's tiled grid (Hp, alpha, C, nTW, nb) from src
    (C, H, W, N): padded column m*tw + j at [:, j, :, tw, :], so that a tile row's alpha input
    rows are one slice of the leading axis and each column offset j one slice of the next
    (the grid is alpha/m times the padded input).  One copy per offset j; only the padding is
    zeroed.  The forward fills the rows a tile row needs just before it, so that they are
    read back from cache."""
    g, m, nb = p.g, p.m, grid.shape[4]
    h0, h1 = max(r0, g.pad), min(r1, g.pad + g.H)          # the rows inside the input
    if h0 >= h1:
        grid[r0:r1, ...] = 0
        return
    if r0 < h0:   # (an empty assignment still costs a call: most offsets j have no padding)
        grid[r0:h0, ...] = 0
    if h1 < r1:
        grid[h1:r1, ...] = 0
    for j in range(p.alpha):
        tw, n, w = p.cols[j]
        if tw:
            grid[h0:h1, j, :, :tw, :] = 0
        if tw + n < p.nTW:
            grid[h0:h1, j, :, tw + n:, :] = 0
        if n > 0:
            grid[h0:h1, j, :, tw:tw + n, :] = p.permute(
                src[:, h0 - g.pad:h1 - g.pad, _every(w, n, m), n0:n0 + nb], (1, 0, 2, 3))


def _input_tiles(p, grid, th, bufs, V):
    """V = BT d B of tile row ``th`` of one chunk's tiled grid, written into V (T, C, nTW*nb),
    tiles in (tile column, image) order: the rows batched over the column offsets j, then
    the columns batched over the transformed rows k, each product an alpha x alpha matrix by
    an (alpha, C * tiles) slice."""
    C, a, m = p.g.C, p.alpha, p.m
    X = C * p.nTW * grid.shape[4]                          # (c, tile column, image) of one (row, offset)
    R = p.view(bufs["R"], a, a, X)                          # R[k, j, X]
    rows = p.reshape(grid[m * th:m * th + a, ...], (a, a, X))     # [i, j, X]
    _mm(p, p.BT, p.permute(rows, (1, 0, 2)), p.permute(R, (1, 0, 2)))
    # columns: V[k*a + l, c] = sum_j BT[l, j] R[k, j, c], batched over k, into V itself
    _mm(p, p.BT, R, p.reshape(V, (a, a, X)))
    return V


def _output_tiles(p, M, th, n0, nb, y, bufs):
    """Y = AT M A of tile row ``th``'s products M (T, FN, nTW*nb), copied into y (FN, OH, OW,
    N); output rows and columns past OH, OW (tiles cut by the border) are not copied."""
    xp, g, a, m, nTW = p.xp, p.g, p.alpha, p.m, p.nTW
    L = nTW * nb
    # both sides batched over the other index (one GEMM over all of M ran at half the speed)
    Q = p.view(bufs["Q"], a, m, g.FN * L)                                  # (l, pp, FN*L)
    _mm(p, p.AT, p.permute(p.reshape(M, (a, a, g.FN * L)), (1, 0, 2)), Q)
    Y = p.view(bufs["Y"], m, m, g.FN * L)
    _mm(p, p.AT, p.permute(Q, (1, 0, 2)), Y)                           # (pp, q, FN*L)
    Y5 = p.reshape(Y, (m, m, g.FN, nTW, nb))
    r0, rows, wt = m * th, min(m, g.OH - m * th), g.OW // m    # rows inside OH, whole tile columns
    if wt:   # one copy, y's columns split as (tile column, q)
        dst = p.reshape(y[:, r0:r0 + rows, :m * wt, n0:n0 + nb], (g.FN, rows, wt, m, nb))
        dst[...] = p.permute(Y5[:rows, :, :, :wt, :], (2, 0, 3, 1, 4))
    for q in range(g.OW - m * wt):   # the columns of a last tile column cut by the border
        y[:, r0:r0 + rows, m * wt + q, n0:n0 + nb] = p.permute(Y5[:rows, q, :, wt, :], (1, 0, 2))


def _shapes(p, nb):
    """Per-block buffer shapes of the forward (R, V, M, Q, Y) for a chunk of nb images."""
    g, a, m, L = p.g, p.alpha, p.m, p.nTW * nb
    return dict(R=lambda n: (a, a * g.C * p.nTW * n), V=lambda n: (p.T, g.C, p.nTW * n),
                M=lambda n: (p.T, g.FN, p.nTW * n),
                Q=lambda n: (a, m, g.FN * p.nTW * n), Y=lambda n: (m, m, g.FN * p.nTW * n))


def blocked_forward(x, W, b, g, tile, chunk=None):
    """3x3 stride-1 convolution by Winograd F(tile x tile, 3 x 3), a row of tiles at a time.

    Parameters
    ----------
    x : array, shape (N, C, H, W), any memory order (CHWN is read without a transpose)
    W : array, shape (FN, C, 3, 3)
    b : array, shape (FN,)
    g : ConvGeometry   3x3, stride 1, any pad
    tile : {2, 4}
    chunk : int or None
        Images per chunk; None sizes it by :data:`BLOCK_BYTES` (backward uses the same).

    Returns
    -------
    out : array (N, FN, OH, OW), the batch-innermost view of a C-ordered (FN, OH, OW, N) array
    saved : WinogradRowsSaved
    """
    xp = namespace(x)
    p = _plan(g, tile, x, chunk)
    src = p.permute(x, (1, 2, 3, 0))                                 # (C, H, W, N)
    U = wg._filter_transform(W, p.GG)                                    # (T, FN, C)
    bufs = p.buffers(p.chunk, **_shapes(p, p.chunk))
    y = p.empty(g.FN, g.OH, g.OW, g.N)
    bias = p.reshape(b, (g.FN, 1))
    kept, grids = ([] if p.keeps_V() else None), []
    for n0, nb in p.chunks():
        Vs = p.empty(p.nTH, p.T, g.C, p.nTW * nb) if kept is not None else None
        grid = p.empty(p.Hp, p.alpha, g.C, p.nTW, nb)
        for th in range(p.nTH):
            _grid_rows(p, src, grid, n0, 0 if th == 0 else p.m * th + 2, p.m * th + p.alpha)
            V = p.view(bufs["V"], p.T, g.C, p.nTW * nb) if Vs is None else Vs[th, ...]
            _input_tiles(p, grid, th, bufs, V)
            M = p.view(bufs["M"], p.T, g.FN, p.nTW * nb)
            _mm(p, U, V, M)
            # column 1 of AT is all ones: every output of a tile reads product (1, 1) with weight 1
            M[p.alpha + 1, ...] += bias
            _output_tiles(p, M, th, n0, nb, y, bufs)
        if kept is not None:
            kept.append(Vs)
        else:
            grids.append(grid)
    name = NAME if tile == 2 else NAME.replace("winograd", f"winograd{tile}")
    # with V kept, backward needs no grid: only the kept V outlives the forward
    saved = WinogradRowsSaved(g, None if kept is not None else grids, U, tile, p.chunk, name, kept)
    return p.permute(y, (3, 0, 1, 2)), saved


def _output_adjoint(p, Gd, th, n0, nb, bufs):
    """dM = A dY AT of tile row ``th`` of Gd (FN, OH, OW, N), the output gradient, zero past
    OH and OW (tiles cut by the border): (T, FN, nTW*nb), the adjoint of :func:`_output_tiles`."""
    xp, g, a, m, nTW = p.xp, p.g, p.alpha, p.m, p.nTW
    L = nTW * nb
    dY = p.view(bufs["Y"], m, m, g.FN, nTW, nb)
    D = p.permute(dY, (2, 0, 3, 1, 4))                    # (FN, pp, tile column, q, nb)
    r0, rows, wt = m * th, min(m, g.OH - m * th), g.OW // m
    if rows < m:
        D[:, rows:, ...] = 0
    if wt < nTW:
        D[:, :rows, wt:, ...] = 0
    if wt:   # one copy: Gd's columns split as (tile column, q)
        D[:, :rows, :wt, ...] = p.reshape(Gd[:, r0:r0 + rows, :m * wt, n0:n0 + nb], (g.FN, rows, wt, m, nb))
    for q in range(g.OW - m * wt):
        D[:, :rows, wt, q, :] = Gd[:, r0:r0 + rows, m * wt + q, n0:n0 + nb]
    dQ = p.view(bufs["Q"], m, a, g.FN * L)
    _mm(p, p.A, p.reshape(dY, (m, m, g.FN * L)), dQ)                        # (pp, l, FN*L)
    dM = p.view(bufs["M"], p.T, g.FN, L)
    _mm(p, p.A, p.permute(dQ, (1, 0, 2)), p.permute(p.reshape(dM, (a, a, g.FN * L)), (1, 0, 2)))
    return dM


def _input_adjoint(p, dV, th, dgrid, bufs):
    """Write the adjoint of :func:`_input_tiles` of dV (T, C, nTW*nb) into tile row ``th`` of
    the chunk's tiled gradient grid dgrid (Hp, alpha, C, nTW, nb), tile rows in order.  The
    column offsets j >= m are first added onto the next tile column's offsets j - m (the same
    padded columns, in cache), so the rows go to dgrid only for j < m and the last tile
    column's j >= m (what :func:`_untile` reads)."""
    C, a, m, nTW = p.g.C, p.alpha, p.m, p.nTW
    nb = dgrid.shape[4]
    X = C * nTW * nb
    dR = p.view(bufs["R"], a, a, X)
    _mm(p, p.B, p.reshape(dV, (a, a, X)), dR)                 # dR[k, j] = sum_l B[j, l] dV[k, l]
    dR5 = p.reshape(dR, (a, a, C, nTW, nb))
    if nTW > 1:
        dR5[:, 0:a - m, :, 1:nTW, :] += dR5[:, m:a, :, 0:nTW - 1, :]
    rows = dgrid[m * th:m * th + a, ...]
    # rows, batched over the offsets j < m: (j, k, X) stacks of the transformed rows k
    _rows_adjoint(p, p.permute(dR[:, 0:m, :], (1, 0, 2)),
                  p.permute(p.reshape(rows, (a, a, X))[:, 0:m, :], (1, 0, 2)), th, bufs)
    for j in range(m, a):   # (C, alpha, nb) stacks: the rows of one offset of the last tile column
        _rows_adjoint(p, p.permute(dR5[:, j, :, nTW - 1, :], (1, 0, 2)),
                      p.permute(rows[:, j, :, nTW - 1, :], (1, 0, 2)), th, bufs)


def _rows_adjoint(p, src, dst, th, bufs):
    """dst (..., alpha, X) of tile row ``th`` gets B @ src (..., alpha, X): its first alpha - m
    rows added to what the tile row above left there, the others assigned (no zeroed grid)."""
    a, m = p.alpha, p.m
    _mm(p, p.B_own, src, dst[..., a - m:, :])
    if th == 0:
        _mm(p, p.B_shared, src, dst[..., :a - m, :])
    else:
        part = p.view(bufs["shared"], *src.shape[:-2], a - m, src.shape[-1])
        _mm(p, p.B_shared, src, part)
        dst[..., :a - m, :] += part


def _untile(p, dgrid, n0, dx):
    """dx[..., n0:n0 + nb] (C, H, W, N) = the input part of the tiled gradient grid: offsets
    j < m of every tile column (the sums over the tiles that share a column, see
    :func:`_input_adjoint`), and offsets j >= m of the last tile column, whose columns no
    other tile reaches."""
    g, m, nb = p.g, p.m, dgrid.shape[4]
    for j in range(p.alpha):
        tw, n, w = p.untile_cols[j]
        if n > 0:
            dx[:, :, _every(w, n, m), n0:n0 + nb] = p.permute(
                dgrid[g.pad:g.pad + g.H, j, :, tw:tw + n, :], (1, 0, 2, 3))


def backward(dout, saved, W, need_dx=True):
    """Gradients of :func:`blocked_forward`, a row of tiles at a time (V kept or rebuilt).

    Parameters
    ----------
    dout : array, shape (N, FN, OH, OW); read a tile row at a time (no padded copy), fastest
        batch-innermost, as the layers above hand back the gradient of a CHWN output
    saved : WinogradRowsSaved
    W : array, shape (FN, C, 3, 3)
    need_dx : bool   False skips dx

    Returns
    -------
    dx : array (N, C, H, W), batch-innermost, or None;  dW : (FN, C, 3, 3);  db : (FN,)
    """
    xp, g = namespace(dout), saved.g
    p = _plan(g, saved.tile, dout, saved.chunk)
    Gd = p.permute(dout, (1, 2, 3, 0))                              # (FN, OH, OW, N)
    db = xp.zeros((g.FN,), dtype=p.dtype, device=p.dev)
    shapes = _shapes(p, p.chunk)
    shapes.update(shared=lambda n: (g.C, p.alpha - p.m, p.alpha * p.nTW * n))
    bufs = p.buffers(p.chunk, **shapes)
    dU, part = xp.zeros((p.T, g.FN, g.C), dtype=p.dtype, device=p.dev), p.empty(p.T, g.FN, g.C)
    dx = p.empty(g.C, g.H, g.W, g.N) if need_dx else None
    for ci, (n0, nb) in enumerate(p.chunks()):
        dgrid = p.empty(p.Hp, p.alpha, g.C, p.nTW, nb) if need_dx else None
        for th in range(p.nTH):
            dM = _output_adjoint(p, Gd, th, n0, nb, bufs)
            db += xp.sum(dM[p.alpha + 1, ...], axis=1)   # product (1, 1) is every output's sum (A's row 1 is ones)
            if saved.kept is not None:
                V = saved.kept[ci][th, ...]
            else:
                V = _input_tiles(p, saved.grids[ci], th, bufs, p.view(bufs["V"], p.T, g.C, p.nTW * nb))
            _mm(p, dM, xp.matrix_transpose(V), part)                      # (T, FN, C)
            dU += part
            if need_dx:
                dV = p.view(bufs["V"], *V.shape)   # a rebuilt V is spent: its buffer takes dV
                _mm(p, xp.matrix_transpose(saved.U), dM, dV)
                _input_adjoint(p, dV, th, dgrid, bufs)
        if need_dx:
            _untile(p, dgrid, n0, dx)
    dW = p.reshape(xp.matmul(xp.matrix_transpose(p.reshape(dU, (p.T, g.FN * g.C))), p.GG), g.W_shape)
    return (None if dx is None else p.permute(dx, (3, 0, 1, 2))), dW, db
