"""Pure functions: activations, losses, im2col/col2im, convolution and pooling.

Every function takes its namespace from its arguments, so the same code runs on
NumPy, CuPy and array_api_strict.

Notation used throughout dualnet
--------------------------------
N : batch size            C : input channels         H, W : input height, width
FN : number of filters    FH, FW : filter (or pool window) height, width
OH, OW : output height, width = (H + 2*pad - FH) // stride + 1
x : layer input           out : layer output
dout : gradient of the loss w.r.t. ``out``;  dx, dW, db : w.r.t. ``x``, ``W``, ``b``
"""
from __future__ import annotations

import math

from .backend import namespace, array_device

__all__ = [
    "step", "sigmoid", "relu", "tanh", "identity", "softmax", "log_softmax",
    "mean_squared_error", "cross_entropy_error", "softmax_cross_entropy", "one_hot",
    "output_size", "pad2d", "im2col", "col2im", "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "dropout",
]


# --------------------------------------------------------------------------- activations
def step(x):
    """Heaviside step: 1 where ``x > 0`` else 0, in ``x``'s dtype."""
    xp = namespace(x)
    return xp.astype(x > 0, x.dtype)


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), computed without overflow for large ``|x|``."""
    xp = namespace(x)
    e = xp.exp(-xp.abs(x))  # never overflows
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def relu(x):
    xp = namespace(x)
    return xp.maximum(x, xp.zeros_like(x))


def tanh(x):
    return namespace(x).tanh(x)


def identity(x):
    return x


def softmax(x):
    """Softmax over the last axis; the row max is subtracted first so ``exp`` cannot overflow.

    Parameters
    ----------
    x : array, shape (N, K) or (K,)
    """
    xp = namespace(x)
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def log_softmax(x):
    """log(softmax(x)) over the last axis, exact even where softmax underflows to 0."""
    xp = namespace(x)
    z = x - xp.max(x, axis=-1, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))


def one_hot(t, num_classes, dtype):
    """One-hot encode integer labels ``t`` (N,) into an (N, num_classes) array of ``dtype``."""
    xp = namespace(t)
    classes = xp.arange(num_classes, device=array_device(t))
    return xp.astype(t[:, None] == classes[None, :], dtype)


def _targets(t, K, dtype):
    """Labels as one-hot (N, K): integer labels are encoded, one-hot passes through."""
    if t.ndim == 1:
        return one_hot(t, K, dtype)
    if t.shape[-1] != K:
        raise ValueError(f"one-hot labels have {t.shape[-1]} classes but the scores have {K}; "
                         f"labels shape {tuple(t.shape)}, scores (N, {K})")
    return namespace(t).astype(t, dtype)


def mean_squared_error(y, t):
    """Book form: 0.5 * sum((y - t)**2) averaged over the batch. y, t : (N, K)."""
    xp = namespace(y)
    y2 = y if y.ndim == 2 else y[None, :]
    t2 = xp.reshape(t, y2.shape)
    return 0.5 * xp.sum((y2 - t2) ** 2) / y2.shape[0]


def cross_entropy_error(y, t):
    """Book form on probabilities: -sum(t * log(y + 1e-7)) / N.

    Parameters
    ----------
    y : array, shape (N, K) or (K,)
        Probabilities (e.g. softmax output).
    t : array, shape (N,) integer labels, or (N, K) one-hot
    """
    xp = namespace(y)
    if y.ndim == 1:
        y = y[None, :]
        t = t[None, ...]
    return -xp.sum(_targets(t, y.shape[1], y.dtype) * xp.log(y + 1e-7)) / y.shape[0]


def softmax_cross_entropy(x, t):
    """Mean cross-entropy of softmax(x) against ``t``, through log-softmax.

    The book adds 1e-7 inside the log; the log-softmax form is exact instead,
    so its gradient is exactly ``(softmax(x) - t) / N`` (which the gradient
    check relies on) and it agrees with the book wherever softmax > ~1e-7.

    Returns
    -------
    loss : 0-d array
    y : array, shape (N, K)   softmax(x), kept for the backward pass
    t1 : array, shape (N, K)  the targets as one-hot
    """
    xp = namespace(x)
    ls = log_softmax(x)
    t1 = _targets(t, x.shape[1], x.dtype)
    return -xp.sum(t1 * ls) / x.shape[0], xp.exp(ls), t1


def dropout(x, mask, ratio):
    """Inverted dropout: keep where ``mask`` and scale by 1/(1 - ratio), so eval needs no correction."""
    xp = namespace(x)
    return x * xp.astype(mask, x.dtype) * (1.0 / (1.0 - ratio))


# --------------------------------------------------------------------------- geometry
def output_size(size, k, stride, pad, what="conv"):
    """OH for input ``size``, window ``k``; raises when the window does not tile the input exactly."""
    span = size + 2 * pad - k
    if span < 0:
        raise ValueError(f"{what}: window {k} is larger than the padded input "
                         f"({size} + 2*{pad} = {size + 2 * pad}); use a smaller window or more padding")
    if span % stride:
        raise ValueError(f"{what}: input size {size} with window {k}, stride {stride}, pad {pad} "
                         f"gives a fractional output size ({size} + 2*{pad} - {k})/{stride} + 1 = "
                         f"{span / stride + 1:g}; change the padding or stride so it divides evenly")
    return span // stride + 1


def pad2d(x, pad, value=0.0):
    """Pad the last two axes of ``x`` (N, C, H, W) by ``pad`` on every side with ``value``."""
    if pad == 0:
        return x
    xp = namespace(x)
    N, C, H, W = x.shape
    out = xp.full((N, C, H + 2 * pad, W + 2 * pad), value, dtype=x.dtype, device=array_device(x))
    out[:, :, pad:pad + H, pad:pad + W] = x
    return out


def _window_index(i, j, OH, OW, stride):
    """Index of the (N, C, OH, OW) strided view that window offset (i, j) sees in a padded map."""
    return (slice(None), slice(None), slice(i, i + stride * (OH - 1) + 1, stride),
            slice(j, j + stride * (OW - 1) + 1, stride))


def _window(a, i, j, OH, OW, stride):
    """The (N, C, OH, OW) strided view of padded ``a`` seen by window offset (i, j)."""
    return a[_window_index(i, j, OH, OW, stride)]


# --------------------------------------------------------------------------- im2col
def im2col(x, FH, FW, stride=1, pad=0):
    """Unfold image patches into columns.

    Parameters
    ----------
    x : array, shape (N, C, H, W)

    Returns
    -------
    col : array, shape (N, C*FH*FW, OH*OW)
        Row ``c*FH*FW + i*FW + j`` holds pixel (i, j) of every patch of channel c.
        This layout (rather than the book's (N*OH*OW, C*FH*FW)) makes the
        convolution one batched matmul whose result is already (N, FN, OH*OW),
        so neither the columns nor the output need a transposing copy.
    """
    xp = namespace(x)
    N, C, H, W = x.shape
    OH = output_size(H, FH, stride, pad)
    OW = output_size(W, FW, stride, pad)
    img = pad2d(x, pad)
    col = xp.empty((N, C, FH, FW, OH, OW), dtype=x.dtype, device=array_device(x))
    for i in range(FH):
        for j in range(FW):
            col[:, :, i, j, :, :] = _window(img, i, j, OH, OW, stride)
    return xp.reshape(col, (N, C * FH * FW, OH * OW))


def col2im(col, x_shape, FH, FW, stride=1, pad=0):
    """Fold columns back into images, summing where patches overlap (the adjoint of :func:`im2col`).

    Parameters
    ----------
    col : array, shape (N, C*FH*FW, OH*OW)
    x_shape : tuple (N, C, H, W)

    Returns
    -------
    dx : array, shape (N, C, H, W)
    """
    xp = namespace(col)
    N, C, H, W = x_shape
    OH = output_size(H, FH, stride, pad)
    OW = output_size(W, FW, stride, pad)
    col = xp.reshape(col, (N, C, FH, FW, OH, OW))
    img = xp.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=col.dtype, device=array_device(col))
    for i in range(FH):
        for j in range(FW):
            sl = _window_index(i, j, OH, OW, stride)
            img[sl] += col[:, :, i, j, :, :]  # in place: no temporary of the window
    return img[:, :, pad:pad + H, pad:pad + W] if pad else img


# --------------------------------------------------------------------------- convolution
def _check_conv(x, W):
    if x.ndim != 4:
        raise ValueError(f"convolution expects input (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"convolution: input has {x.shape[1]} channels (shape {tuple(x.shape)}) but "
                         f"the filters expect {W.shape[1]} (W shape {tuple(W.shape)})")


CONV_METHODS = ("im2col",)


def conv2d(x, W, b, stride=1, pad=0, method="im2col"):
    """2-D convolution (cross-correlation) by im2col and one batched matmul.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    W : array, shape (FN, C, FH, FW)
    b : array, shape (FN,)
    method : str
        The algorithm, one of :data:`CONV_METHODS`.

    Returns
    -------
    out : array, shape (N, FN, OH, OW)
    ctx : tuple   what :func:`conv2d_backward` needs (opaque to callers)
    """
    if method not in CONV_METHODS:
        raise ValueError(f"unknown convolution method {method!r}; choose one of {', '.join(CONV_METHODS)}")
    xp = namespace(x)
    _check_conv(x, W)
    FN, C, FH, FW = W.shape
    N, _, H, Wd = x.shape
    OH = output_size(H, FH, stride, pad)
    OW = output_size(Wd, FW, stride, pad)
    col = im2col(x, FH, FW, stride, pad)
    out = xp.matmul(xp.reshape(W, (FN, C * FH * FW)), col)    # (N, FN, OH*OW)
    out = out + xp.reshape(b, (1, FN, 1))
    return xp.reshape(out, (N, FN, OH, OW)), (col, tuple(x.shape), stride, pad)


def conv2d_backward(dout, ctx, W, need_dx=True):
    """Gradients of :func:`conv2d`.

    Parameters
    ----------
    dout : array, shape (N, FN, OH, OW)
    ctx : the second result of :func:`conv2d`
    W : array, shape (FN, C, FH, FW)
    need_dx : bool
        False skips dx (a first layer's input gradient is never used).

    Returns
    -------
    dx : array (N, C, H, W) or None;  dW : array (FN, C, FH, FW);  db : array (FN,)
    """
    xp = namespace(dout)
    col, x_shape, stride, pad = ctx
    FN, C, FH, FW = W.shape
    N = dout.shape[0]
    d = xp.reshape(dout, (N, FN, dout.shape[2] * dout.shape[3]))
    db = xp.sum(d, axis=(0, 2))
    # Per-sample GEMMs against the transposed view of col, then a sum over N: unlike
    # tensordot this never copies col into a transposed layout (3.5x faster in NumPy).
    dW = xp.reshape(xp.sum(xp.matmul(d, xp.matrix_transpose(col)), axis=0), W.shape)
    dx = None
    if need_dx:
        dcol = xp.matmul(xp.matrix_transpose(xp.reshape(W, (FN, C * FH * FW))), d)  # (N, CFF, OH*OW)
        dx = col2im(dcol, x_shape, FH, FW, stride, pad)
    return dx, dW, db


# --------------------------------------------------------------------------- pooling
def _pool_geometry(x, PH, PW, stride, pad, what):
    if x.ndim != 4:
        raise ValueError(f"{what} expects input (N, C, H, W), got shape {tuple(x.shape)}")
    return (output_size(x.shape[2], PH, stride, pad, what),
            output_size(x.shape[3], PW, stride, pad, what))


def max_pool2d(x, PH, PW, stride, pad=0):
    """Max pooling as elementwise maxima over PH*PW strided views.

    Cheaper than im2col followed by a max over a tiny last axis: every pass is
    one contiguous elementwise op on (N, C, OH, OW).

    Parameters
    ----------
    x : array, shape (N, C, H, W)

    Returns
    -------
    out : array, shape (N, C, OH, OW)
    ctx : tuple   what :func:`max_pool2d_backward` needs (opaque to callers)
    """
    xp = namespace(x)
    OH, OW = _pool_geometry(x, PH, PW, stride, pad, "max pooling")
    xpad = pad2d(x, pad, value=-math.inf)
    out = None
    for i in range(PH):
        for j in range(PW):
            v = _window(xpad, i, j, OH, OW, stride)
            out = v if out is None else xp.maximum(out, v)
    if out is not None and PH * PW == 1:
        out = xp.asarray(out, copy=True)
    return out, (xpad, out, tuple(x.shape), PH, PW, stride, pad)


def max_pool2d_backward(dout, ctx):
    """Route ``dout`` (N, C, OH, OW) to the arg-max of each window; ties go to the first.

    ``ctx`` is the second result of :func:`max_pool2d`.

    Returns
    -------
    dx : array, shape (N, C, H, W)
    """
    xp = namespace(dout)
    xpad, out, x_shape, PH, PW, stride, pad = ctx
    N, C, H, W = x_shape
    OH, OW = dout.shape[2], dout.shape[3]
    disjoint = stride >= PH and stride >= PW
    # Disjoint windows that tile the padded input write every element once: no zero fill needed.
    tiles = disjoint and stride == PH == PW and OH * stride == xpad.shape[2] and OW * stride == xpad.shape[3]
    make = xp.empty if tiles else xp.zeros
    dxpad = make(xpad.shape, dtype=dout.dtype, device=array_device(dout))
    pending = None  # windows whose arg-max is not found yet
    last = PH * PW - 1
    for k in range(PH * PW):
        i, j = divmod(k, PW)
        hit = _window(xpad, i, j, OH, OW, stride) == out
        if pending is not None:
            hit = xp.logical_and(hit, pending)
        if k < last:
            miss = xp.logical_not(hit)
            pending = miss if pending is None else xp.logical_and(pending, miss)
        g = dout * xp.astype(hit, dout.dtype)
        sl = _window_index(i, j, OH, OW, stride)
        if disjoint:
            dxpad[sl] = g
        else:
            dxpad[sl] += g
    return dxpad[:, :, pad:pad + H, pad:pad + W] if pad else dxpad


def avg_pool2d(x, PH, PW, stride, pad=0):
    """Average pooling; padded zeros count in the average (like PyTorch's default).

    x : (N, C, H, W)  ->  out : (N, C, OH, OW)
    """
    OH, OW = _pool_geometry(x, PH, PW, stride, pad, "average pooling")
    xpad = pad2d(x, pad)
    out = None
    for i in range(PH):
        for j in range(PW):
            v = _window(xpad, i, j, OH, OW, stride)
            out = v if out is None else out + v
    return out * (1.0 / (PH * PW))


def avg_pool2d_backward(dout, x_shape, PH, PW, stride, pad=0):
    """Spread ``dout`` (N, C, OH, OW) evenly over each window; returns dx (N, C, H, W)."""
    xp = namespace(dout)
    N, C, H, W = x_shape
    OH, OW = dout.shape[2], dout.shape[3]
    g = dout * (1.0 / (PH * PW))
    dxpad = xp.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dout.dtype, device=array_device(dout))
    for i in range(PH):
        for j in range(PW):
            sl = _window_index(i, j, OH, OW, stride)
            dxpad[sl] += g
    return dxpad[:, :, pad:pad + H, pad:pad + W] if pad else dxpad
