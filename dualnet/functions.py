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
from .errors import ConfigError, ShapeError

__all__ = [
    "step", "sigmoid", "relu", "tanh", "identity", "softmax", "log_softmax",
    "mean_squared_error", "d_mean_squared_error", "cross_entropy_error", "softmax_cross_entropy", "one_hot",
    "output_size", "pad2d", "im2col", "col2im", "CONV_METHODS", "STRIDE1_METHODS", "ROWS_CHUNK_BYTES",
    "choose_conv_method",
    "conv2d", "conv2d_backward",
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
        raise ShapeError(f"one-hot labels have {t.shape[-1]} classes but the scores have {K}; "
                         f"labels shape {tuple(t.shape)}, scores (N, {K})")
    return namespace(t).astype(t, dtype)


def mean_squared_error(y, t):
    """Book form: 0.5 * sum((y - t)**2) averaged over the batch. y, t : (N, K)."""
    xp = namespace(y)
    y2 = y if y.ndim == 2 else y[None, :]
    t2 = xp.reshape(t, y2.shape)
    return 0.5 * xp.sum((y2 - t2) ** 2) / y2.shape[0]


def d_mean_squared_error(y, t):
    """Gradient of :func:`mean_squared_error` with respect to ``y``: (y - t) / N.

    Parameters
    ----------
    y : array (N, K) or (K,) (one sample);  t : array of y's size

    Returns
    -------
    dy : array shaped like ``y``
    """
    xp = namespace(y)
    N = y.shape[0] if y.ndim == 2 else 1
    return (y - xp.reshape(t, y.shape)) / N


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
    # sum(t1 * ls) as one contraction: one array operation where a product and a sum are two
    # (each operation is a kernel launch on a GPU)
    return xp.tensordot(t1, ls, axes=2) * (-1.0 / x.shape[0]), xp.exp(ls), t1


def dropout(x, mask, ratio):
    """Inverted dropout: keep where ``mask`` and scale by 1/(1 - ratio), so eval needs no correction."""
    xp = namespace(x)
    return x * xp.astype(mask, x.dtype) * (1.0 / (1.0 - ratio))


# --------------------------------------------------------------------------- geometry
def output_size(size, k, stride, pad, what="conv"):
    """OH for input ``size``, window ``k``; raises when the window does not tile the input exactly."""
    span = size + 2 * pad - k
    if span < 0:
        raise ShapeError(f"{what}: window {k} is larger than the padded input "
                         f"({size} + 2*{pad} = {size + 2 * pad}); use a smaller window or more padding")
    if span % stride:
        raise ShapeError(f"{what}: input size {size} with window {k}, stride {stride}, pad {pad} "
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
        raise ShapeError(f"convolution expects input (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ShapeError(f"convolution: input has {x.shape[1]} channels (shape {tuple(x.shape)}) but "
                         f"the filters expect {W.shape[1]} (W shape {tuple(W.shape)})")


CONV_METHODS = ("auto", "im2col", "gemm", "rows", "shift")
"""Convolution algorithms :func:`conv2d` accepts.

``"im2col"``
    The book's method: per-sample columns (N, C*FH*FW, OH*OW) and one batched matmul.
    The reference the others are tested against, and the CPU's choice for few input
    channels.  (CuPy copies the columns for its batched dW product every step.)
``"gemm"``
    im2col with the columns of the whole batch in one (C*FH*FW, N*OH*OW) matrix, so the
    forward and both backward products are single 2-D GEMMs (dW on a transposed view,
    which neither BLAS nor cuBLAS copies).  Any stride.  The path for GPUs.
``"rows"``
    im2col for stride 1, built for a CPU's caches: the input padded into a batch-innermost
    (C, H, W, N) grid, so that each tap of a whole output row of the batch is one long
    contiguous run; the columns of a few output rows at a time (about
    :data:`ROWS_CHUNK_BYTES`); the bias as one more GEMM row; dx by the same gather on the
    gradient.  Backward rebuilds the columns instead of keeping them.  Returns its output
    as a batch-innermost view.  The CPU's choice for stride 1, except few channels with
    large filters.
``"shift"``
    Shift-and-GEMM (kn2row): no column matrix; every filter tap is one GEMM on a shifted
    slice of the padded input, accumulated on the padded output grid.  Stride 1 only.
    On one CPU thread the fastest for 3x3 filters on large maps with many channels; bad
    for few channels or big filters (many thin GEMMs).  Never chosen by "auto".
``"auto"``
    Chooses per layer shape, stride and array library; see :func:`choose_conv_method`.
"""

STRIDE1_METHODS = ("rows", "shift")
"""The methods of :data:`CONV_METHODS` that take stride 1 only."""


def choose_conv_method(x_shape, W_shape, stride=1, pad=0, host=True):
    """The method ``method="auto"`` runs for input ``x_shape`` (N, C, H, W) and filters ``W_shape``.

    Parameters
    ----------
    host : bool
        True when the arrays live on the host (the CPU rules); False on a device whose cost is
        kernel launches (``Device.is_host`` says which; :class:`dualnet.layers.Convolution` asks).

    Returns
    -------
    str : ``"im2col"``, ``"gemm"`` or ``"rows"`` (``"shift"`` only when asked for by name)
    """
    if not host:
        # GPU (and the simulated device that stands in for one): launches are what cost, and
        # "gemm" is the fewest, largest kernels: one copy per tap and one cuBLAS GEMM per product.
        # "shift" takes FH*FW GEMMs plus as many adds, and its column slices are strided, which
        # CuPy copies before every GEMM; "im2col"'s batched dW product copies the columns too;
        # "rows" cuts the batch into cache-sized blocks, each with its own copies and GEMMs.
        return "gemm"
    C, T = x_shape[1], W_shape[2] * W_shape[3]
    # CPU rules, measured on a 2-core EPYC (Zen 4, OpenBLAS SkylakeX kernels), 1 thread:
    # - whole training steps (interleaved, medians): DeepConvNet with "rows" everywhere 99-100
    #   ms at batch 100 and 275-278 at 256, against 101-102 and 285-287 with im2col for its
    #   1-channel first layer (whose NCHW output the next layer must transpose) and 145 and
    #   415-418 with im2col + "gemm" (the rule before "rows"); SimpleConvNet (1->30, 5x5)
    #   15.0-15.3 / 38.8-39.0 ms with im2col, 16.5-16.8 / 60-61 with "rows".
    # - per layer alone (scripts/conv_layers.py --threads 1, batch 100, forward + backward ms,
    #   im2col / gemm / rows / shift / PyTorch): 16->16 at 28x28 43.7 / 37.7 / 25.5 / 34.8 / 13.1;
    #   16->32 at 14x14 15.6 / 12.7 / 10.7 / 18.3 / 6.6; 32->32 at 14x14 pad 2 46.8 / 40.3 / 24.4 /
    #   33.4 / 14.4; 32->64 at 8x8 16.4 / 13.3 / 12.1 / 16.4 / 7.2; 64->64 at 8x8 37.2 / 27.1 /
    #   20.8 / 30.4 / 13.2; the 1-channel first layer alone 2.0 / 3.0 / 3.5 / 19.0 / 2.0 (its
    #   layout, not its own time, makes "rows" pay there); SimpleConvNet's 1->30 5x5 4.6 / 6.2 /
    #   6.2 / 84 / 4.1.  "shift" (kn2row) runs K=C GEMMs, too thin to pay.
    if stride != 1:
        return "im2col" if C < 8 else "gemm"
    if C < 8 and T > 9:
        return "im2col"
    return "rows"


def _resolve_method(method, x, W, stride, pad):
    if method not in CONV_METHODS:
        raise ConfigError(f"unknown convolution method {method!r}; choose one of {', '.join(CONV_METHODS)}")
    if method == "auto":
        return choose_conv_method(tuple(x.shape), tuple(W.shape), stride, pad)
    if method in STRIDE1_METHODS and stride != 1:
        raise ConfigError(f"convolution method {method!r} needs stride 1 (got stride {stride}); "
                         f"use 'gemm' or 'auto'")
    return method


def _swap01(a):
    """(A, B, H, W), any strides  ->  C-contiguous (B, A, H, W): one transposing copy.

    A reshape that cannot be a view copies in C order on every backend, which is what makes
    the result contiguous (``asarray(copy=True)`` would keep NumPy's transposed strides).
    """
    xp = namespace(a)
    A, B, H, W = a.shape
    flat = xp.reshape(xp.permute_dims(a, (1, 0, 2, 3)), (B, A * H * W))
    return xp.reshape(flat, (B, A, H, W))


def conv2d(x, W, b, stride=1, pad=0, method="auto"):
    """2-D convolution (cross-correlation).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    W : array, shape (FN, C, FH, FW)
    b : array, shape (FN,)
    method : str
        The algorithm, one of :data:`CONV_METHODS`; all give the same result to rounding.

    Returns
    -------
    out : array, shape (N, FN, OH, OW)
    ctx : tuple   what :func:`conv2d_backward` needs (opaque to callers)
    """
    _check_conv(x, W)
    method = _resolve_method(method, x, W, stride, pad)
    if method == "gemm":
        return _conv_gemm(x, W, b, stride, pad)
    if method == "shift":
        return _conv_shift(x, W, b, pad)
    if method == "rows":
        return _conv_rows(x, W, b, pad)
    xp = namespace(x)
    FN, C, FH, FW = W.shape
    N, _, H, Wd = x.shape
    OH = output_size(H, FH, stride, pad)
    OW = output_size(Wd, FW, stride, pad)
    col = im2col(x, FH, FW, stride, pad)
    out = xp.matmul(xp.reshape(W, (FN, C * FH * FW)), col)    # (N, FN, OH*OW)
    out = out + xp.reshape(b, (1, FN, 1))
    return xp.reshape(out, (N, FN, OH, OW)), ("im2col", col, tuple(x.shape), stride, pad)


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
    method = ctx[0]
    if method == "gemm":
        return _conv_gemm_backward(dout, ctx, W, need_dx)
    if method == "shift":
        return _conv_shift_backward(dout, ctx, W, need_dx)
    if method == "rows":
        return _conv_rows_backward(dout, ctx, W, need_dx)
    xp = namespace(dout)
    _, col, x_shape, stride, pad = ctx
    FN, C, FH, FW = W.shape
    N = dout.shape[0]
    d = xp.reshape(dout, (N, FN, dout.shape[2] * dout.shape[3]))
    db = xp.sum(d, axis=(0, 2))
    # Per-sample GEMMs against the transposed view of col, then a sum over N: unlike
    # tensordot this never copies col into a transposed layout (3.5x faster in NumPy).
    # (CuPy's batched matmul does copy it: the "gemm" method avoids that.)
    dW = xp.reshape(xp.sum(xp.matmul(d, xp.matrix_transpose(col)), axis=0), W.shape)
    dx = None
    if need_dx:
        dcol = xp.matmul(xp.matrix_transpose(xp.reshape(W, (FN, C * FH * FW))), d)  # (N, CFF, OH*OW)
        dx = col2im(dcol, x_shape, FH, FW, stride, pad)
    return dx, dW, db


# ---- "gemm": the whole batch's columns in one matrix
def _batch_columns(x, FH, FW, stride, pad, OH, OW):
    """Columns of the whole batch, shape (C*FH*FW, N*OH*OW).

    Row ``c*FH*FW + i*FW + j``, column ``n*OH*OW + oh*OW + ow`` holds padded pixel
    (n, c, oh*stride + i, ow*stride + j).  The padded copy is laid out (C, N, Hp, Wp): the
    padding costs that copy anyway, and the taps are then plain strided copies without a
    transpose (16->16 at 28x28, batch 100: 7.8 ms against 8.2 from an (N, C, Hp, Wp) pad).
    """
    xp = namespace(x)
    N, C, H, W = x.shape
    if pad:
        img = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=x.dtype, device=array_device(x))
        img[:, :, pad:pad + H, pad:pad + W] = xp.permute_dims(x, (1, 0, 2, 3))
    else:
        img = xp.permute_dims(x, (1, 0, 2, 3))  # a view; the taps transpose as they copy
    col = xp.empty((C, FH, FW, N, OH, OW), dtype=x.dtype, device=array_device(x))
    for i in range(FH):
        for j in range(FW):
            col[:, i, j, :, :, :] = img[_window_index(i, j, OH, OW, stride)]
    return xp.reshape(col, (C * FH * FW, N * OH * OW))


def _fold_batch_columns(dcol, x_shape, FH, FW, stride, pad, OH, OW):
    """The adjoint of :func:`_batch_columns`: (C*FH*FW, N*OH*OW) -> dx (N, C, H, W).

    Sums into a (C, N, Hp, Wp) grid, then transposes once: the adds run without a transpose
    (16->16 at 28x28: 9.1 ms with the final copy, 11.4 ms adding into (N, C, Hp, Wp) directly;
    32->32 at 14x14 pad 2: 7.8 against 11.1).
    """
    xp = namespace(dcol)
    N, C, H, W = x_shape
    col = xp.reshape(dcol, (C, FH, FW, N, OH, OW))
    img = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=dcol.dtype, device=array_device(dcol))
    for i in range(FH):
        for j in range(FW):
            # An in-place add on the window view: ``img[sl] += v`` would also run a
            # ``__setitem__`` of the view onto itself, a second kernel per tap on CuPy.
            win = img[_window_index(i, j, OH, OW, stride)]
            win += col[:, i, j, :, :, :]
    return _swap01(img[:, :, pad:pad + H, pad:pad + W])


def _conv_gemm(x, W, b, stride, pad):
    xp = namespace(x)
    FN, C, FH, FW = W.shape
    N, _, H, Wd = x.shape
    OH = output_size(H, FH, stride, pad)
    OW = output_size(Wd, FW, stride, pad)
    col = _batch_columns(x, FH, FW, stride, pad, OH, OW)
    y = xp.matmul(xp.reshape(W, (FN, C * FH * FW)), col)        # (FN, N*OH*OW): one 2-D GEMM
    out = _swap01(xp.reshape(y, (FN, N, OH, OW)))               # the only price of the layout
    out += xp.reshape(b, (1, FN, 1, 1))
    return out, ("gemm", col, tuple(x.shape), stride, pad)


def _conv_gemm_backward(dout, ctx, W, need_dx):
    xp = namespace(dout)
    _, col, x_shape, stride, pad = ctx
    FN, C, FH, FW = W.shape
    N, _, OH, OW = dout.shape
    d = xp.reshape(_swap01(dout), (FN, N * OH * OW))
    db = xp.sum(d, axis=1)
    dW = xp.reshape(xp.matmul(d, xp.matrix_transpose(col)), W.shape)   # 2-D, col not copied
    dx = None
    if need_dx:
        dcol = xp.matmul(xp.matrix_transpose(xp.reshape(W, (FN, C * FH * FW))), d)
        dx = _fold_batch_columns(dcol, x_shape, FH, FW, stride, pad, OH, OW)
    return dx, dW, db


# ---- "rows": im2col by blocks of output rows, on a batch-innermost grid
ROWS_CHUNK_BYTES = 2 << 20
"""Size of the column block :func:`conv2d` builds at a time with ``method="rows"``: small enough
to stay in a CPU's last-level cache between the copies that build it and the GEMMs that read it
(1-thread medians, batch 100, DeepConvNet's five wide layers forward + backward, interleaved on a
quiet 2-core EPYC: 1 MiB 104.2 ms, 2 MiB 97.6, 4 MiB 104.0, 8 MiB 114.2; the full-batch columns of
16->16 at 28x28 would be 45 MB)."""


def _rows_block(depth, L, itemsize, rows):
    """Output rows per column block: ``depth`` GEMM rows of L = OW*N columns per output row,
    about ROWS_CHUNK_BYTES in all, at most ``rows``."""
    return max(1, min(rows, ROWS_CHUNK_BYTES // (depth * L * itemsize)))


def _framed(src, shape, top, left):
    """A new array of ``shape`` (A, rows, cols, N) holding ``src`` (A, h, w, N) at (top, left)
    and zeros around it.  Only the frame is zeroed: zeros() first would write every element
    twice (a padded 16x28x28 batch of 100, timed in a loop: 0.16 against 0.19 ms)."""
    xp = namespace(src)
    _, h, w, _ = src.shape
    out = xp.empty(shape, dtype=src.dtype, device=array_device(src))
    out[:, top:top + h, left:left + w, :] = src
    out[:, :top, :, :] = 0
    out[:, top + h:, :, :] = 0
    out[:, top:top + h, :left, :] = 0
    out[:, top:top + h, left + w:, :] = 0
    return out


def _conv_rows(x, W, b, pad):
    """Stride-1 convolution on a batch-innermost grid, a block of output rows at a time
    (see ``"rows"`` in :data:`CONV_METHODS`).

    The padded input is laid out (C, Hp, Wp, N).  Then for output row oh and tap (i, j) the
    pixels of all OW columns and all N images are one contiguous run of OW*N values,
    grid[c, oh+i, j:j+OW, :], so the columns (C*FH*FW + 1, rows*OW*N) of a block of output rows
    are FH*FW copies of long runs, and the GEMM computes no position that is cut afterwards.
    A row of ones in the columns and the bias as a last filter column add the bias inside the
    GEMM.  The result (FN, OH, OW, N) is returned as an (N, FN, OH, OW) view: elementwise
    layers and pooling keep that order (NumPy allocates their results like their inputs), so
    the next "rows" layer finds its input batch-innermost and copies it without transposing.
    """
    xp = namespace(x)
    N, C, H, Wd = x.shape
    FN, _, FH, FW = W.shape
    Hp, Wp = H + 2 * pad, Wd + 2 * pad
    OH, OW = output_size(H, FH, 1, pad), output_size(Wd, FW, 1, pad)
    T = FH * FW
    K, L = C * T, OW * N
    dev = array_device(x)
    grid = _framed(xp.permute_dims(x, (1, 2, 3, 0)), (C, Hp, Wp, N), pad, pad)
    Wb = xp.concat([xp.reshape(W, (FN, K)), xp.reshape(b, (FN, 1))], axis=1)   # (FN, K+1)
    rb = _rows_block(K + 1, L, xp.finfo(x.dtype).bits // 8, OH)
    buf = xp.empty((K + 1, rb, L), dtype=x.dtype, device=dev)
    buf[K, :, :] = 1
    y = xp.empty((FN, OH, L), dtype=x.dtype, device=dev)
    for h0 in range(0, OH, rb):
        r = min(rb, OH - h0)
        _fill_rows(buf, grid, h0, r, FH, FW, OW, lambda i, j: (i, j))
        y[:, h0:h0 + r, :] = xp.reshape(xp.matmul(Wb, xp.reshape(buf[:, :r, :], (K + 1, r * L))), (FN, r, L))
    out = xp.permute_dims(xp.reshape(y, (FN, OH, OW, N)), (3, 0, 1, 2))
    return out, ("rows", grid, tuple(x.shape), 1, pad)


def _fill_rows(buf, src, h0, r, FH, FW, width, offset):
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


def _conv_rows_backward(dout, ctx, W, need_dx):
    """Backward of :func:`_conv_rows`, block by block, the columns rebuilt from the kept grid
    (a copy in cache is cheaper than reading full-batch columns back from memory).

    [dW | db] = sum over blocks of cols @ G_blk.T, with G = dout as (FN, OH*OW*N) (a view when
    dout is batch-innermost, as the layers above hand it back); the ones row gives db.
    dx is the full correlation of dout with the flipped filters, computed like the forward:
    dout in a zero grid Gz (FN, H+FH-1, W+FW-1, N), tap (i, j) of dx row hh reads Gz row
    hh+FH-1-i from column FW-1-j on, and dx_blk = W' (C, FN*FH*FW) @ cols_G -- a gather of long
    runs instead of a scatter-add into shifted windows.
    """
    xp = namespace(dout)
    _, grid, x_shape, _, pad = ctx
    N, C, H, Wd = x_shape
    FN, _, FH, FW = W.shape
    OH, OW = dout.shape[2], dout.shape[3]
    T = FH * FW
    K, L = C * T, OW * N
    dev = array_device(dout)
    size = xp.finfo(dout.dtype).bits // 8
    G = xp.reshape(xp.permute_dims(dout, (1, 2, 3, 0)), (FN, OH, L))
    rb = _rows_block(K + 1, L, size, OH)
    buf = xp.empty((K + 1, rb, L), dtype=dout.dtype, device=dev)
    buf[K, :, :] = 1
    acc = None
    for h0 in range(0, OH, rb):
        r = min(rb, OH - h0)
        _fill_rows(buf, grid, h0, r, FH, FW, OW, lambda i, j: (i, j))
        part = xp.matmul(xp.reshape(buf[:, :r, :], (K + 1, r * L)),
                         xp.matrix_transpose(xp.reshape(G[:, h0:h0 + r, :], (FN, r * L))))
        if acc is None:
            acc = part
        else:
            acc += part
    dW = xp.reshape(xp.matrix_transpose(acc[:K, :]), (FN, C, FH, FW))   # acc: rows of dW.T, then db
    db = acc[K, :]
    if not need_dx:
        return None, dW, db
    # Output (oh, ow) sits at Gz (oh + FH-1-pad, ow + FW-1-pad); outputs that no dx pixel
    # reads (pad >= FH or FW) are left out.
    Hg, Wg = H + FH - 1, Wd + FW - 1
    A, B = FH - 1 - pad, FW - 1 - pad
    r0, r1, c0, c1 = max(0, -A), min(OH, Hg - A), max(0, -B), min(OW, Wg - B)
    Gz = _framed(xp.reshape(G, (FN, OH, OW, N))[:, r0:r1, c0:c1, :], (FN, Hg, Wg, N), r0 + A, c0 + B)
    Wt = xp.reshape(xp.permute_dims(W, (1, 0, 2, 3)), (C, FN * T))       # W'[c, f*T + t]
    KG, Lx = FN * T, Wd * N
    rbg = _rows_block(KG, Lx, size, H)
    bufg = xp.empty((KG, rbg, Lx), dtype=dout.dtype, device=dev)
    dX = xp.empty((C, H, Lx), dtype=dout.dtype, device=dev)
    for h0 in range(0, H, rbg):
        r = min(rbg, H - h0)
        _fill_rows(bufg, Gz, h0, r, FH, FW, Wd, lambda i, j: (FH - 1 - i, FW - 1 - j))
        dX[:, h0:h0 + r, :] = xp.reshape(xp.matmul(Wt, xp.reshape(bufg[:, :r, :], (KG, r * Lx))), (C, r, Lx))
    dx = xp.permute_dims(xp.reshape(dX, (C, H, Wd, N)), (3, 0, 1, 2))
    return dx, dW, db


# ---- "shift": one GEMM per filter tap on shifted slices, no column matrix
def _tap_major(W):
    """W (FN, C, FH, FW) as contiguous (FH*FW, FN, C): each tap's (FN, C) matrix is a plain
    contiguous block that BLAS takes without a copy (W[:, :, i, j] has a 9-element stride)."""
    xp = namespace(W)
    FN, C, FH, FW = W.shape
    return xp.reshape(xp.permute_dims(W, (2, 3, 0, 1)), (FH * FW, FN, C))


def _conv_shift(x, W, b, pad):
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
    FN, C, FH, FW = W.shape
    N, _, H, Wd = x.shape
    Hp, Wp = H + 2 * pad, Wd + 2 * pad
    OH, OW = output_size(H, FH, 1, pad), output_size(Wd, FW, 1, pad)
    M = N * Hp * Wp
    grid = xp.zeros((C, N + 1, Hp, Wp), dtype=x.dtype, device=array_device(x))
    grid[:, :N, pad:pad + H, pad:pad + Wd] = xp.permute_dims(x, (1, 0, 2, 3))
    X = xp.reshape(grid, (C, (N + 1) * Hp * Wp))
    Wt = _tap_major(W)
    acc = None
    for i in range(FH):
        for j in range(FW):
            s = i * Wp + j
            y = xp.matmul(Wt[i * FW + j, :, :], X[:, s:s + M])          # (FN, M)
            if acc is None:
                acc = y
            else:
                acc += y   # no accumulate-into GEMM in the standard: a temporary and an add
    out = _swap01(xp.reshape(acc, (FN, N, Hp, Wp))[:, :, :OH, :OW])
    out += xp.reshape(b, (1, FN, 1, 1))
    return out, ("shift", X, tuple(x.shape), 1, pad)


def _conv_shift_backward(dout, ctx, W, need_dx):
    """Backward of :func:`_conv_shift`.

    dout goes into a zeroed padded grid G (FN, 1+N, Hp, Wp) -- a zero image in front, and
    zeros wherever the forward's grid held no valid output, so those rows add nothing.  Then
    per tap: dW_ij = G @ X[:, s:s+M].T (a transposed view: no copy), and
    dX = sum_ij W_ij.T @ G shifted back by s, which reads G (the front zero image covers
    shifts up to Hp*Wp) instead of adding into shifted slices of dX.
    """
    xp = namespace(dout)
    _, X, x_shape, _, pad = ctx
    FN, C, FH, FW = W.shape
    N, _, H, Wd = x_shape
    Hp, Wp = H + 2 * pad, Wd + 2 * pad
    OH, OW = dout.shape[2], dout.shape[3]
    S, M = Hp * Wp, N * Hp * Wp
    grid = xp.zeros((FN, N + 1, Hp, Wp), dtype=dout.dtype, device=array_device(dout))
    grid[:, 1:, :OH, :OW] = xp.permute_dims(dout, (1, 0, 2, 3))
    G = xp.reshape(grid, (FN, (N + 1) * S))
    Gv = G[:, S:]
    db = xp.sum(dout, axis=(0, 2, 3))
    Wt = _tap_major(W)
    taps = [(i, j, i * Wp + j) for i in range(FH) for j in range(FW)]
    dWt = xp.stack([xp.matmul(Gv, xp.matrix_transpose(X[:, s:s + M])) for _, _, s in taps])
    dW = xp.reshape(xp.permute_dims(xp.reshape(dWt, (FH, FW, FN, C)), (2, 3, 0, 1)), (FN, C * FH * FW))
    dW = xp.reshape(dW, W.shape)
    dx = None
    if need_dx:
        acc = None
        for i, j, s in taps:
            y = xp.matmul(xp.matrix_transpose(Wt[i * FW + j, :, :]), G[:, S - s:S - s + M])   # (C, M)
            if acc is None:
                acc = y
            else:
                acc += y
        dx = _swap01(xp.reshape(acc, (C, N, Hp, Wp))[:, :, pad:pad + H, pad:pad + Wd])
    return dx, dW, db


# --------------------------------------------------------------------------- pooling
def _pool_geometry(x, PH, PW, stride, pad, what):
    if x.ndim != 4:
        raise ShapeError(f"{what} expects input (N, C, H, W), got shape {tuple(x.shape)}")
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
    # ``*_like`` keeps the memory order of the input on NumPy (order "K"): a batch-innermost map
    # from the "rows" convolution gets a batch-innermost gradient, with no transposing writes.
    make = xp.empty_like if tiles else xp.zeros_like
    dxpad = make(xpad, dtype=dout.dtype, device=array_device(dout))
    # Ties go to the first maximal offset by handing out a "remaining" gradient: an offset that
    # hits takes all of what is left of its window's dout and leaves 0 for later offsets.  That
    # is 5 array operations per offset (4 for the last), 19 for a 2x2 window, against 24 for
    # tracking a boolean "not found yet" mask; same speed in NumPy (SimpleConvNet's pool at
    # batch 100: 3.3 ms against 3.5).  ``where`` instead of the float mask was 3x slower there.
    rest = dout   # the part of dout not yet routed
    last = PH * PW - 1
    for k in range(PH * PW):
        i, j = divmod(k, PW)
        g = xp.astype(_window(xpad, i, j, OH, OW, stride) == out, dout.dtype)  # a new array...
        g *= rest                                                              # ...so in place
        if k < last:
            if rest is dout:
                rest = dout - g
            else:
                rest -= g
        sl = _window_index(i, j, OH, OW, stride)
        if disjoint:
            dxpad[sl] = g
        else:
            win = dxpad[sl]   # add on the view: no second __setitem__ kernel on CuPy
            win += g
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


# --------------------------------------------------------------------------- augmentation
def shift_flip(x, dy, dx, flip, pad):
    """Shift each image by (dy, dx) pixels (zeros come in) and mirror it left-right where ``flip``.

    The book's chapter-8 augmentation, for a whole batch in one gather: every output pixel's
    source index in the zero-padded batch is computed, then taken at once (a few small
    index operations and one ``take``, the same on every backend, instead of a loop over images).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    dy, dx : integer arrays, shape (N,), values in [-pad, pad]
        Output pixel (i, j) of image n is input pixel (i - dy[n], j - dx[n]) (after the flip).
    flip : bool array, shape (N,)
    pad : int

    Returns
    -------
    out : array, shape (N, C, H, W)
    """
    xp = namespace(x)
    N, C, H, W = x.shape
    Hp, Wp = H + 2 * pad, W + 2 * pad
    dev = array_device(x)
    flat = xp.reshape(pad2d(x, pad), (-1,))
    i = xp.reshape(xp.arange(H, device=dev), (1, 1, H, 1))
    j = xp.reshape(xp.arange(W, device=dev), (1, 1, 1, W))
    n = xp.reshape(xp.arange(N, device=dev), (N, 1, 1, 1))
    c = xp.reshape(xp.arange(C, device=dev), (1, C, 1, 1))
    rows = i + pad - xp.reshape(dy, (N, 1, 1, 1))
    src = j - xp.reshape(dx, (N, 1, 1, 1))                      # column in the (flipped) image
    cols = xp.where(xp.reshape(flip, (N, 1, 1, 1)), (W - 1) - src, src) + pad
    idx = ((n * C + c) * Hp + rows) * Wp + cols
    return xp.reshape(xp.take(flat, xp.reshape(idx, (-1,))), (N, C, H, W))
