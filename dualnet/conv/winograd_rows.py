"""``"winograd_rows"``: Winograd F(2x2, 3x3) for a CPU's caches, a block of tiles at a time.

The algorithm and its adjoint are :mod:`.winograd`'s (Lavin & Gray 2016); what differs is the
order of the work.  :mod:`.winograd` transforms the whole batch at once, so that a GPU launches
a fixed, small number of kernels; on a CPU every one of its transforms is then a sweep of
memory (the transformed input of a 16->16 layer at 28x28, batch 100, is 20 MB in float32).
Here the input is padded into a batch-innermost grid (C, Hp, Wp, N), as ``"rows"`` does, and the
tiles are taken a block at a time (a few tile rows of the whole batch, or part of the batch in
one tile row: about :data:`BLOCK_BYTES` of intermediate arrays), so that the input transform,
the alpha**2 products and the output transform of a block all run in the CPU's cache:

- input:    V = BT d B, as alpha + alpha**2 elementwise combinations of strided views of the
  grid (each tap of a tile row of the batch is a run of contiguous images), written into
  buffers reused by every block;
- products: M = U @ V, one batched matmul (T, FN, C) @ (T, C, P_block) into a reused buffer,
  the bias added to the one product every output reads with weight 1 (column 1 of AT is all 1);
- output:   Y = AT M A, written straight into the (FN, OH, OW, N) result, returned as an
  (N, FN, OH, OW) view (``LAYOUT`` = CHWN, :mod:`dualnet.conv.layout`): no transpose before or
  after, in a network of "rows"-ordered layers.

Backward rebuilds V per block from the kept grid (cheaper, in cache, than reading the whole
transformed batch back from memory) and computes per block dM = A dY AT, then dU += dM @ V^T
(dW = the Winograd correlation) and dV = U^T @ dM, whose adjoint input transform is added into
dx.  The elementwise combinations use the ufuncs' ``out=`` on the host (NumPy) and plain array
expressions elsewhere (the simulated device, which has no ``out=``), the same values either way.

Registered as ``"winograd_rows"`` (F(2x2, 3x3)) and ``"winograd4_rows"`` (F(4x4, 3x3),
:mod:`.winograd4_rows`).  Which layers ``auto`` gives them on the host: docs/convolution.md.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ..backend import array_device, namespace
from . import winograd as wg
from .geometry import ConvGeometry
from .layout import CHWN
from .rows import _framed

__all__ = ["NAME", "LAYOUT", "BLOCK_BYTES", "supports", "forward", "backward", "blocked_forward",
           "WinogradRowsSaved"]

NAME = "winograd_rows"
LAYOUT = CHWN

KEEP_V = False
"""Keep each block's transformed input V for backward (alpha**2 / m**2 times the input's memory:
4x for F(2x2, 3x3), 2.25x for F(4x4, 3x3)) instead of rebuilding it from the grid."""

BLOCK_BYTES = 8 << 20
"""Intermediate arrays of one block (transformed input, products, output rows), about: small
enough to stay in a CPU's cache between the transforms and the GEMMs (measured in
docs/convolution.md)."""


class WinogradRowsSaved(NamedTuple):
    """What :func:`backward` needs: the geometry, the padded input grid (C, m*nTH + 2,
    m*nTW + 2, N) (zeros around the input), the transformed filters U (T, FN, C), the tile m
    and the block size (tile rows, images) that forward used."""
    g: ConvGeometry
    grid: Any
    U: Any
    tile: int
    block: tuple
    Vs: Any = None       # with KEEP_V: the transformed input of every block, in block order
    method: str = NAME


def supports(g):
    """3x3 filters at stride 1, any pad (as :mod:`.winograd`)."""
    return wg.fits(g.FH, g.FW, g.stride)


def forward(x, W, b, g):
    """F(2x2, 3x3) on geometry ``g`` (see :func:`blocked_forward`)."""
    return blocked_forward(x, W, b, g, 2)


class _Plan:
    """The constants of one layer: tile m, alpha = m + 2, the transform matrices as nested lists,
    tile counts, block size (rT tile rows, nb images), and whether ``out=`` may be used."""

    def __init__(self, g, tile, dtype, dev, xp, block=None):
        self.g, self.m, self.alpha = g, tile, tile + 2
        self.T = self.alpha ** 2
        self.BT, self.G, self.AT = wg.transforms(tile)
        self.nTH, self.nTW = wg._tiles(g.OH, g.OW, tile)
        self.Hp, self.Wp = tile * self.nTH + 2, tile * self.nTW + 2
        self.xp, self.dtype, self.dev = xp, dtype, dev
        self.fast = dev == "cpu"   # the host's ufuncs write into out=; the array API has no out=
        rT, nb = block or self._block(xp.finfo(dtype).bits // 8)
        self.block = (max(1, min(int(rT), self.nTH)), max(1, min(int(nb), g.N)))

    def _block(self, itemsize):
        """(rT, nb): tile rows and images per block, about BLOCK_BYTES of intermediates."""
        g, a, m = self.g, self.alpha, self.m
        # per tile and image: V (T*C) and M (T*FN) values, the row-transformed input
        # (alpha*C*m) and the half-transformed output (m*alpha*FN)
        per = itemsize * (self.T * (g.C + g.FN) + a * m * (g.C + g.FN))
        row = per * self.nTW * g.N
        if row <= BLOCK_BYTES:
            return max(1, min(self.nTH, BLOCK_BYTES // row)), g.N
        return 1, max(1, min(g.N, BLOCK_BYTES // (per * self.nTW)))

    def blocks(self):
        """(th0, rT, n0, nb) of every block: tile rows th0..th0+rT-1 of images n0..n0+nb-1."""
        rT, nb = self.block
        for th0 in range(0, self.nTH, rT):
            for n0 in range(0, self.g.N, nb):
                yield th0, min(rT, self.nTH - th0), n0, min(nb, self.g.N - n0)

    def buffer(self, *shape):
        """A flat buffer for the largest block of ``shape`` (its dims after the first k are
        per-block); :meth:`view` cuts the current block's contiguous array out of it."""
        n = 1
        for s in shape:
            n *= s
        return self.xp.empty((n,), dtype=self.dtype, device=self.dev)

    def view(self, buf, *shape):
        n = 1
        for s in shape:
            n *= s
        return self.xp.reshape(buf[:n], shape)


def _combine(p, out, terms, add=False, tmp=None):
    """``out`` (=, or += with ``add``) the sum of c * v over ``terms`` (coefficient, array).

    On the host each term is one ufunc writing into ``out`` (unit coefficients first, so that
    only the others need ``tmp``, a scratch array of out's shape); elsewhere one expression.
    """
    xp = p.xp
    if not p.fast:
        s = None
        for c, v in terms:
            t = v if c == 1 else (-v if c == -1 else v * c)
            s = t if s is None else s + t
        if add:
            out += s
        else:
            out[...] = s
        return
    terms = sorted(terms, key=lambda cv: abs(cv[0]) != 1)   # stable: unit coefficients first
    rest = terms
    if not add:
        (c0, v0), tail = terms[0], terms[1:]
        if tail and c0 == 1 and abs(tail[0][0]) == 1:
            (xp.add if tail[0][0] == 1 else xp.subtract)(v0, tail[0][1], out=out)
            rest = tail[1:]
        elif tail and c0 == -1 and tail[0][0] == 1:
            xp.subtract(tail[0][1], v0, out=out)
            rest = tail[1:]
        else:
            xp.multiply(v0, c0, out=out)
            rest = tail
    for c, v in rest:
        if c == 1:
            xp.add(out, v, out=out)
        elif c == -1:
            xp.subtract(out, v, out=out)
        else:
            xp.multiply(v, c, out=tmp)
            xp.add(out, tmp, out=out)


def _stage(p, mat, ins, make):
    """One side of a transform: result i = sum_j mat[i][j] * ins[j], where ``ins[j]`` is a list
    of (coefficient, array) terms.  A result with one nonzero is kept as scaled terms (no
    copy); the others are written into ``make(i)`` (an array) and returned as [(1, it)]."""
    out = []
    for i, row in enumerate(mat):
        terms = [(c * k, v) for c, src in zip(row, ins) if c != 0 for k, v in src]
        if len(terms) == 1:
            out.append(terms)
            continue
        dst, tmp = make(i)
        _combine(p, dst, terms, tmp=tmp)
        out.append([(1.0, dst)])
    return out


def _scratch(p):
    """A cache of scratch arrays by shape, for the non-unit coefficients of F(4x4, 3x3)."""
    cache = {}

    def get(shape):
        if not p.fast:
            return None
        if shape not in cache:
            cache[shape] = p.xp.empty(shape, dtype=p.dtype, device=p.dev)
        return cache[shape]
    return get


def _stage(p, mat, ins, make, lazy=True):
    """One side of a transform: result i = sum_j mat[i][j] * ins[j], each ``ins[j]`` a list of
    (coefficient, array) terms.  With ``lazy`` a result with one term stays a scaled term (no
    copy); the others are written into ``make(i)`` -> (array, scratch) and returned as [(1, it)]."""
    out = []
    for i, row in enumerate(mat):
        terms = [(c * k, v) for c, src in zip(row, ins) if c != 0 for k, v in src]
        if lazy and len(terms) == 1:
            out.append(terms)
            continue
        dst, tmp = make(i)
        _combine(p, dst, terms, tmp=tmp)
        out.append([(1.0, dst)])
    return out


def _transposed(mat):
    return [list(col) for col in zip(*mat)]


def _every(start, count, step):
    """The slice of ``count`` indices start, start + step, ..."""
    return slice(start, start + step * (count - 1) + 1, step)


def _matmul(p, a, b, out):
    """out = a @ b (batched), written into ``out`` on the host."""
    if p.fast:
        p.xp.matmul(a, b, out=out)
    else:
        out[...] = p.xp.matmul(a, b)


def _phased_grid(p, x):
    """The zero-padded input as (C, Hp, m, Wq, N), Wq = nTW + 1: padded column w = m*wq + ph at
    [:, :, ph, wq, :], so that each of a tile's alpha column offsets j is one slice
    [..., j % m, j // m : j // m + nTW, :] whose nTW tiles and N images are one contiguous run.
    One copy per phase, into zeros."""
    xp, g, m = p.xp, p.g, p.m
    src = xp.permute_dims(x, (1, 2, 3, 0))                                 # (C, H, W, N)
    grid = xp.zeros((g.C, p.Hp, m, p.nTW + 1, g.N), dtype=p.dtype, device=p.dev)
    for ph in range(m):
        w0 = g.pad + (ph - g.pad) % m          # the first padded column of phase ph inside the input
        n = (g.pad + g.W - w0 + m - 1) // m
        if n > 0:
            grid[:, g.pad:g.pad + g.H, ph, w0 // m:w0 // m + n, :] = src[:, :, _every(w0 - g.pad, n, m), :]
    return grid


def _input_tiles(p, grid, blk, R_buf, V_buf, tmp):
    """V = BT d B of the block's tiles of the phased grid (:func:`_phased_grid`):
    (T, C, rT*nTW*nb), tiles in (tile row, tile column, image) order.  Rows first (alpha
    combinations of whole padded rows), then columns (alpha**2 combinations of the column
    offsets' slices), into the reused buffers."""
    th0, rT, n0, nb = blk
    m, a, C, nTW = p.m, p.alpha, p.g.C, p.nTW
    imgs = slice(n0, n0 + nb)
    rows = [[(1.0, grid[:, _every(m * th0 + i, rT, m), :, :, imgs])] for i in range(a)]   # (C, rT, m, Wq, nb)
    R = p.view(R_buf, a, C, rT, m, nTW + 1, nb)
    half = _stage(p, p.BT, rows, lambda k: (R[k, ...], tmp((C, rT, m, nTW + 1, nb))))
    V = p.view(V_buf, p.T, C, rT, nTW, nb)
    for k in range(a):
        cols = [[(c, v[:, :, j % m, j // m:j // m + nTW, :]) for c, v in half[k]] for j in range(a)]
        _stage(p, p.BT, cols, lambda l: (V[k * a + l, ...], tmp((C, rT, nTW, nb))), lazy=False)
    return p.xp.reshape(V, (p.T, C, rT * nTW * nb))


def _output_tiles(p, M, blk, y, tmp):
    """Y = AT M A of the block's products M (T, FN, rT*nTW*nb), written into its place in
    y (FN, OH, OW, N); output rows and columns past OH, OW (a last tile cut by the border) are
    not written."""
    th0, rT, n0, nb = blk
    m, a, FN, nTW, g = p.m, p.alpha, p.g.FN, p.nTW, p.g
    M5 = p.xp.reshape(M, (p.T, FN, rT, nTW, nb))
    shape = (FN, rT, nTW, nb)
    Q = p.view(p.Q_buf, m, a, *shape)
    # half[l][pp]: AT applied along the tile rows of product column l
    half = [_stage(p, p.AT, [[(1.0, M5[k * a + l, ...])] for k in range(a)],
                   lambda pp, l=l: (Q[pp, l, ...], tmp(shape))) for l in range(a)]
    for pp in range(m):
        rp = min(rT, (g.OH - pp + m - 1) // m - th0)     # tile rows whose row pp is inside OH
        if rp <= 0:
            continue
        for q in range(m):
            cq = (g.OW - q + m - 1) // m                   # tile columns whose column q is inside OW
            if cq <= 0:
                continue
            dst = y[:, _every(m * th0 + pp, rp, m), _every(q, cq, m), n0:n0 + nb]
            terms = [(c * k, v[:, :rp, :cq, :]) for c, l in zip(p.AT[q], range(a)) if c != 0
                     for k, v in half[l][pp]]
            _combine(p, dst, terms, tmp=tmp((FN, rp, cq, nb)))


def blocked_forward(x, W, b, g, tile, block=None):
    """3x3 stride-1 convolution by Winograd F(tile x tile, 3 x 3), a block of tiles at a time.

    Parameters
    ----------
    x : array, shape (N, C, H, W), any memory order (CHWN is read without a transpose)
    W : array, shape (FN, C, 3, 3)
    b : array, shape (FN,)
    g : ConvGeometry   3x3, stride 1, any pad
    tile : {2, 4}
    block : (tile rows, images) or None
        Tiles per block; None sizes it to about :data:`BLOCK_BYTES` (backward uses the same).

    Returns
    -------
    out : array (N, FN, OH, OW), the batch-innermost view of a C-ordered (FN, OH, OW, N) array
    saved : WinogradRowsSaved
    """
    xp, dev = namespace(x), array_device(x)
    p = _Plan(g, tile, x.dtype, dev, xp, block)
    grid = _phased_grid(p, x)
    U = wg._filter_transform(W, p.G)                                     # (T, FN, C)
    rT, nb = p.block
    R_buf, V_buf = p.buffer(p.alpha, g.C, rT, p.m, p.nTW + 1, nb), p.buffer(p.T, g.C, rT, p.nTW, nb)
    M_buf, p.Q_buf = p.buffer(p.T, g.FN, rT, p.nTW, nb), p.buffer(p.m, p.alpha, g.FN, rT, p.nTW, nb)
    y = xp.empty((g.FN, g.OH, g.OW, g.N), dtype=x.dtype, device=dev)
    bias = xp.reshape(b, (g.FN, 1))
    tmp = _scratch(p)
    Vs = []
    for blk in p.blocks():
        if KEEP_V:   # a fresh array per block, kept for backward
            V_buf = p.buffer(p.T, g.C, blk[1], p.nTW, blk[3])
        V = _input_tiles(p, grid, blk, R_buf, V_buf, tmp)
        if KEEP_V:
            Vs.append(V)
        M = p.view(M_buf, p.T, g.FN, V.shape[2])
        _matmul(p, U, V, M)
        # column 1 of AT is all ones: every output of a tile reads product (1, 1) with weight 1
        M[p.alpha + 1, ...] += bias
        _output_tiles(p, M, blk, y, tmp)
    out = xp.permute_dims(y, (3, 0, 1, 2))
    name = NAME if tile == 2 else NAME.replace("winograd", f"winograd{tile}")
    return out, WinogradRowsSaved(g, None if KEEP_V else grid, U, tile, p.block, Vs if KEEP_V else None, name)


def _output_adjoint(p, Gd, blk, dQ_buf, dM_buf, tmp):
    """dM = A dY AT of the block's tiles of Gd (FN, m*nTH, m*nTW, N), the output gradient on
    whole tiles: (T, FN, rT*nTW*nb), the adjoint of :func:`_output_tiles`."""
    th0, rT, n0, nb = blk
    m, a, FN, nTW = p.m, p.alpha, p.g.FN, p.nTW
    A = _transposed(p.AT)                                   # (alpha, m)
    shape = (FN, rT, nTW, nb)
    dQ = p.view(dQ_buf, m, a, *shape)
    # half[pp][l]: A applied along the tile columns of output row pp
    half = [_stage(p, A, [[(1.0, Gd[:, _every(m * th0 + pp, rT, m), _every(q, nTW, m), n0:n0 + nb])]
                          for q in range(m)], lambda l, pp=pp: (dQ[pp, l, ...], tmp(shape)))
            for pp in range(m)]
    dM = p.view(dM_buf, p.T, *shape)
    for l in range(a):
        _stage(p, A, [half[pp][l] for pp in range(m)], lambda k: (dM[k * a + l, ...], tmp(shape)), lazy=False)
    return p.xp.reshape(dM, (p.T, FN, rT * nTW * nb))


def _input_adjoint(p, dV, blk, dR_buf, dx, tmp):
    """Add the adjoint of :func:`_input_tiles` of dV (T, C, rT*nTW*nb) into dx (C, H, W, N):
    the overlapping tiles' gradients summed, those of the padding dropped."""
    th0, rT, n0, nb = blk
    m, a, C, nTW, Wp, g = p.m, p.alpha, p.g.C, p.nTW, p.Wp, p.g
    B = _transposed(p.BT)
    dV5 = p.xp.reshape(dV, (p.T, C, rT, nTW, nb))
    dR = p.view(dR_buf, a, C, rT, Wp, nb)
    for k in range(a):
        # columns j < m of consecutive tiles cover 0..m*nTW-1 once (written); j >= m overlap (added)
        dR[k, :, :, m * nTW:, :] = 0
        for j in range(a):
            terms = [(c, dV5[k * a + l, ...]) for c, l in zip(B[j], range(a)) if c != 0]
            _combine(p, dR[k, :, :, _every(j, nTW, m), :], terms, add=j >= m, tmp=tmp((C, rT, nTW, nb)))
    for i in range(a):
        # tile rows t of the block whose row i is an input row (not padding): m*(th0+t) + i - pad in [0, H)
        lo = max(0, -((m * th0 + i - g.pad) // m))
        hi = min(rT, (g.H - 1 + g.pad - i - m * th0) // m + 1)
        if hi <= lo:
            continue
        terms = [(c, dR[k, :, lo:hi, g.pad:g.pad + g.W, :]) for c, k in zip(B[i], range(a)) if c != 0]
        dst = dx[:, _every(m * (th0 + lo) + i - g.pad, hi - lo, m), :, n0:n0 + nb]
        _combine(p, dst, terms, add=True, tmp=tmp((C, hi - lo, g.W, nb)))


def backward(dout, saved, W, need_dx=True):
    """Gradients of :func:`blocked_forward`, block by block (V rebuilt from the kept grid).

    Parameters
    ----------
    dout : array, shape (N, FN, OH, OW); batch-innermost (as the layers above hand back the
        gradient of a CHWN output) is read without a copy when OH and OW are whole tiles
    saved : WinogradRowsSaved
    W : array, shape (FN, C, 3, 3)
    need_dx : bool   False skips dx

    Returns
    -------
    dx : array (N, C, H, W), batch-innermost, or None;  dW : (FN, C, 3, 3);  db : (FN,)
    """
    xp, dev, g = namespace(dout), array_device(dout), saved.g
    p = _Plan(g, saved.tile, dout.dtype, dev, xp, saved.block)
    Gd = xp.permute_dims(dout, (1, 2, 3, 0))                              # (FN, OH, OW, N)
    db = xp.sum(Gd, axis=(1, 2, 3))
    if g.OH % p.m or g.OW % p.m:   # whole tiles: the cut outputs get zero gradient
        Gd = _framed(Gd, (g.FN, p.m * p.nTH, p.m * p.nTW, g.N), 0, 0)
    rT, nb = p.block
    per = (rT, p.nTW, nb)
    R_buf = p.buffer(p.alpha, g.C, rT, max(p.Wp, p.m * (p.nTW + 1)), nb)   # R (phased), then dR
    V_buf = p.buffer(p.T, g.C, *per)
    dQ_buf, dM_buf = p.buffer(p.m, p.alpha, g.FN, *per), p.buffer(p.T, g.FN, *per)
    dU = xp.zeros((p.T, g.FN, g.C), dtype=dout.dtype, device=dev)
    part = xp.empty((p.T, g.FN, g.C), dtype=dout.dtype, device=dev)
    dx = xp.zeros((g.C, g.H, g.W, g.N), dtype=dout.dtype, device=dev) if need_dx else None
    tmp = _scratch(p)
    for i, blk in enumerate(p.blocks()):
        dM = _output_adjoint(p, Gd, blk, dQ_buf, dM_buf, tmp)
        V = saved.Vs[i] if saved.Vs is not None else _input_tiles(p, saved.grid, blk, R_buf, V_buf, tmp)
        _matmul(p, dM, xp.matrix_transpose(V), part)                      # (T, FN, C)
        dU += part
        if need_dx:
            dV = p.view(V_buf, *V.shape)
            _matmul(p, xp.matrix_transpose(saved.U), dM, dV)
            _input_adjoint(p, dV, blk, R_buf, dx, tmp)
    GG = wg._on(dout, wg._kron(p.G, p.G))                                # (T, 9)
    dW = xp.reshape(xp.matmul(xp.matrix_transpose(xp.reshape(dU, (p.T, g.FN * g.C))), GG), g.W_shape)
    return (None if dx is None else xp.permute_dims(dx, (3, 0, 1, 2))), dW, db
