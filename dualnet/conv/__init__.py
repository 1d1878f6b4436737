"""2-D convolution as a small package of methods, all giving the same result to rounding.

>>> out, saved = conv2d(x, W, b, stride=1, pad=1)          # method="auto"
>>> dx, dW, db = conv2d_backward(dout, saved, W)

A method is one module with ``NAME``, ``LAYOUT`` (the memory order of its output, see
:mod:`dualnet.conv.layout`), ``supports(g) -> bool``, ``forward(x, W, b, g) -> (out, saved)`` and
``backward(dout, saved, W, need_dx) -> (dx, dW, db)``, where ``g`` is the
:class:`~dualnet.conv.geometry.ConvGeometry` computed once per call and ``saved`` a NamedTuple
of the method's own with fields ``g`` and ``method`` (its ``NAME``).  :func:`register` adds a
method; :func:`choose` is the one rule ``method="auto"`` follows, in the function and in
:class:`dualnet.layers.Convolution` alike.  See docs/convolution.md.
"""
from __future__ import annotations

from ..backend import array_device
from ..errors import ConfigError
from . import gemm, im2col, rows, shift, winograd, winograd4, winograd4_rows, winograd_rows
from .geometry import ConvGeometry
from .layout import CHWN, NCHW, layout_of

__all__ = ["ConvGeometry", "METHODS", "register", "method_names", "choose", "resolve",
           "conv2d", "conv2d_backward", "NCHW", "CHWN", "layout_of"]

METHODS = {}
"""Registered methods by name, in registration order (``im2col``, the book's, first)."""

_INTERFACE = ("NAME", "LAYOUT", "supports", "forward", "backward")


def register(module):
    """Add a method module (see the package docstring for its interface); returns it."""
    missing = [a for a in _INTERFACE if not hasattr(module, a)]
    if missing:
        raise TypeError(f"convolution method module {module.__name__} lacks {', '.join(missing)}")
    if module.NAME == "auto" or module.NAME in METHODS:
        raise ValueError(f"convolution method name {module.NAME!r} is taken")
    METHODS[module.NAME] = module
    return module


for _m in (im2col, gemm, rows, shift, winograd, winograd4, winograd_rows, winograd4_rows):
    register(_m)


def method_names():
    """What ``method=`` accepts: ``"auto"`` and every registered method."""
    return ("auto", *METHODS)


def choose(g, host=True):
    """The method ``method="auto"`` runs for geometry ``g``.

    Parameters
    ----------
    g : ConvGeometry
    host : bool
        True when the arrays live on the host (the CPU rules); False on a device whose cost
        is kernel launches (``Device.is_host`` says which).

    Returns
    -------
    str, a registered method that supports ``g``.  The rules and their measurements are in
    docs/convolution.md.
    """
    if not host:
        # A GPU (and the simulated device standing in for one) pays per launch, and "gemm" is
        # the fewest, largest kernels: one copy per tap and one GEMM per product.  "shift" takes
        # FH*FW GEMMs on strided slices (CuPy copies each), "im2col"'s batched dW product copies
        # the columns, "rows" cuts the batch into cache-sized blocks with their own kernels.
        return "gemm"
    # The CPU: "rows" for stride 1 (its cache-sized blocks win once there are channels to fill
    # them), the book's im2col where few channels meet a stride or a large filter, "gemm" for
    # strided layers with many channels.  Measured step and layer times: docs/convolution.md.
    if g.stride != 1:
        return "im2col" if g.C < 8 else "gemm"
    if g.C < 8 and g.taps > 9:
        return "im2col"
    if winograd4_rows.supports(g) and g.C >= 16:
        # 3x3 with channels to fill the GEMMs: Winograd a row of tiles at a time beats "rows" at
        # one thread, F(4x4, 3x3) unless its tiles, cut by the border, cover over 1.5x the
        # output (measured: 14x14 (1.31x) and 10x10 (1.44x) F(4x4), 6x6 (1.78x) F(2x2))
        tiles = 16 * ((g.OH + 3) // 4) * ((g.OW + 3) // 4)
        return "winograd4_rows" if 2 * tiles <= 3 * g.OH * g.OW else "winograd_rows"
    return "rows"


def resolve(method, g, host=True):
    """The module of ``method`` (a name of :func:`method_names`) for geometry ``g``; raises
    :class:`~dualnet.errors.ConfigError` for an unknown name or one that does not support ``g``."""
    if method == "auto":
        return METHODS[choose(g, host)]
    if method not in METHODS:
        raise ConfigError(f"unknown convolution method {method!r}; choose one of "
                          f"{', '.join(method_names())}", param="method")
    m = METHODS[method]
    if not m.supports(g):
        fits = [n for n, mod in METHODS.items() if mod.supports(g)]
        raise ConfigError(f"convolution method {method!r} does not support stride {g.stride}, "
                          f"pad {g.pad}, filters {g.FH}x{g.FW} on {g.H}x{g.W} input; methods that do: "
                          f"{', '.join(['auto', *fits])}", param="method")
    return m


def conv2d(x, W, b, stride=1, pad=0, method="auto", host=None):
    """2-D convolution (cross-correlation).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    W : array, shape (FN, C, FH, FW)
    b : array, shape (FN,)
    method : str
        One of :func:`method_names`; all give the same result to rounding.
    host : bool or None
        For ``"auto"``: whether the arrays live on the host; None reads it from ``x``.

    Returns
    -------
    out : array, shape (N, FN, OH, OW)
    saved : NamedTuple   what :func:`conv2d_backward` needs (its ``method`` names the method)
    """
    g = ConvGeometry.of(x.shape, W.shape, stride, pad)
    if method == "auto" and host is None:
        host = array_device(x) == "cpu"   # NumPy's arrays; CuPy's and the simulated ones are not
    return resolve(method, g, host).forward(x, W, b, g)


def conv2d_backward(dout, saved, W, need_dx=True):
    """Gradients of :func:`conv2d`.

    Parameters
    ----------
    dout : array, shape (N, FN, OH, OW)
    saved : the second result of :func:`conv2d`
    W : array, shape (FN, C, FH, FW)
    need_dx : bool
        False skips dx (a first layer's input gradient is never used).

    Returns
    -------
    dx : array (N, C, H, W) or None;  dW : array (FN, C, FH, FW);  db : array (FN,)
    """
    return METHODS[saved.method].backward(dout, saved, W, need_dx)
