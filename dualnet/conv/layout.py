"""The memory-order contract between the convolution methods and the layers around them.

Every array a layer hands on is (N, C, H, W) to its reader, whatever its memory order.  Two
orders occur:

``NCHW``
    C order, what every method but ``"rows"`` returns.
``CHWN``
    Batch-innermost: the (N, C, H, W) view of a C-ordered (C, H, W, N) array.  ``"rows"``
    returns its output this way (its GEMM computes that order) and builds its columns fastest
    from an input in that order (each tap of an output row of the whole batch is one
    contiguous run, copied without a transpose).

The contract, which only speed depends on (every method is correct in any order):

1. a layer that declares ``keeps_layout = True`` (ReLU, Sigmoid, Tanh, max pooling
   without padding) returns its output and its input gradient in the memory order of
   its input: NumPy allocates the results of elementwise operations and of ``*_like`` like
   their first operand (order ``"K"``), and strided window views keep the order;
2. :class:`~dualnet.layers.Affine` reads either order without a copy: merging the trailing
   (C, H, W) axes is a view in both, and BLAS takes the transposed (N, C*H*W) matrix as is;
3. a method's ``LAYOUT`` names the order of the ``out`` it returns.

Only NumPy has memory orders to keep; CuPy and the simulated device run "gemm", which returns
NCHW.  :func:`layout_of` reads the order back, so tests check the declarations.
"""
from __future__ import annotations

from ..backend import namespace

__all__ = ["NCHW", "CHWN", "layout_of", "swap01"]

NCHW = "NCHW"
CHWN = "CHWN"


def layout_of(a):
    """``NCHW`` or ``CHWN`` for a 4-d array whose memory order is one of them, else None
    (also None for arrays without strides, as on the simulated device)."""
    strides = getattr(a, "strides", None)
    if strides is None or a.ndim != 4:
        return None
    N, C, H, W = a.shape
    s = a.itemsize
    if tuple(strides) == (C * H * W * s, H * W * s, W * s, s):
        return NCHW
    if tuple(strides) == (s, H * W * N * s, W * N * s, N * s):
        return CHWN
    return None


def swap01(a):
    """(A, B, H, W), any strides  ->  C-contiguous (B, A, H, W): one transposing copy.

    A reshape that cannot be a view copies in C order on every backend, which is what makes
    the result contiguous (``asarray(copy=True)`` would keep NumPy's transposed strides).
    """
    xp = namespace(a)
    A, B, H, W = a.shape
    flat = xp.reshape(xp.permute_dims(a, (1, 0, 2, 3)), (B, A * H * W))
    return xp.reshape(flat, (B, A, H, W))
