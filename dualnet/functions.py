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
    "mean_squared_error", "cross_entropy_error", "softmax_cross_entropy", "one_hot",
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
STRIDE1_METHODS = ("rows", "shift")
"""The methods of :data:`CONV_METHODS` that take stride 1 only."""
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
    im2col for stride 1, built for a CPU's caches: the columns of a few images at a time
    (about :data:`ROWS_CHUNK_BYTES`), copied as whole rows of the flattened padded input
    (long contiguous copies instead of OW-long ones), with the bias as one more GEMM row;
    outputs are computed on rows padded to the input width and cut.  Backward rebuilds the
    columns instead of keeping them.  The CPU's choice for 3x3 layers with 8 or more input
    channels (see :func:`choose_conv_method`).
``"shift"``
    Shift-and-GEMM (kn2row): no column matrix; every filter tap is one GEMM on a shifted
    slice of the padded input, accumulated on the padded output grid.  Stride 1 only.
    On one CPU thread the fastest for 3x3 filters on large maps with many channels; bad
    for few channels or big filters (many thin GEMMs).  Never chosen by "auto".
``"auto"``
    Chooses per layer shape, stride and array library; see :func:`choose_conv_method`.
"""


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
    C = x_shape[1]
    # CPU rules, from scripts/conv_layers.py --threads 1 on a 2-core EPYC (Zen 4, OpenBLAS
    # SkylakeX kernels), batch 100, forward + backward medians in ms (im2col / gemm / rows / torch):
    #   1->16 at 28x28 (no dx)   1.7 /  2.8 /  3.0 / 1.8    SimpleConvNet 1->30 5x5: 4.4 / 5.8 / - / 4.1
    #   16->16 at 28x28         44.0 / 37.3 / 25.5 / 13.3   32->32 14x14 pad 2:  48.3 / 39.1 / 25.2 / 13.8
    #   16->32 at 14x14         17.2 / 13.7 / 12.3 / 6.5    32->64 at 8x8:       17.9 / 13.8 / 13.7 / 7.2
    #   64->64 at 8x8           38.7 / 26.9 / 24.2 / 13.2
    # "rows" wins where the maps are wide (its copies are long and its column blocks stay in
    # cache); on 8x8 maps its extra arithmetic (Wp/OW = 1.25) eats the gain.  "shift" (kn2row)
    # was 35.4 and 35.4 ms on the two big layers: its K=C GEMMs are thin.  With few input
    # channels the book's per-sample GEMMs stay in cache and its dW needs no transposed copy.
    if C < 8:
        return "im2col"
    return "rows" if stride == 1 else "gemm"


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


# ---- "rows": im2col a few images at a time, from whole rows of the flattened padded input
ROWS_CHUNK_BYTES = 2 << 20
"""Size of the column block :func:`conv2d` builds at a time with ``method="rows"``: small enough
to stay in a CPU's last-level cache between the copies that build it and the GEMM that reads it
(scripts/conv_layers.py, 1 thread, batch 100: 1-4 MiB within 5% of each other; the full-batch
columns, 45 MB for 16->16 at 28x28, run the GEMM at half the speed)."""


def _rows_geometry(x_shape, W_shape, pad):
    N, C, H, Wd = x_shape
    FN, _, FH, FW = W_shape
    Hp, Wp = H + 2 * pad, Wd + 2 * pad
    OH, OW = output_size(H, FH, 1, pad), output_size(Wd, FW, 1, pad)
    return N, C, H, Wd, FN, FH, FW, Hp, Wp, OH, OW


def _rows_chunk(K, R, itemsize, N):
    """Images per column block: (K+1) rows of R outputs per image, about ROWS_CHUNK_BYTES."""
    return max(1, min(N, ROWS_CHUNK_BYTES // ((K + 1) * R * itemsize)))


def _rows_columns(buf, Xf, T, C, n0, m, S, R, taps):
    """Fill ``buf`` (K+1, nc, R) with the columns of images n0..n0+m: row ``c*T + t`` (channel c,
    tap t, as in W.reshape(FN, K)), image k, position r = oh*Wp + w holds flat padded pixel (n0+k)*S + r + s_t.
    Each (tap, image) is one contiguous run of R = OH*Wp pixels per channel."""
    xp = namespace(Xf)
    for t, s in enumerate(taps):
        a = n0 * S + s
        buf[t:T * C:T, :m, :] = xp.reshape(Xf[:, a:a + m * S], (C, m, S))[:, :, :R]


def _conv_rows(x, W, b, pad):
    """Stride-1 convolution by column blocks of a few images (see ``"rows"`` in :data:`CONV_METHODS`).

    On the padded input flattened per channel, Xf (C, (N+1)*Hp*Wp), output (n, oh, w) of tap
    (i, j) reads Xf[:, n*Hp*Wp + oh*Wp + w + i*Wp + j]: for one image and tap the OH output rows,
    taken at the full padded width Wp, are one contiguous run.  The GEMM so also computes the
    Wp - OW columns that wrap past a row's end (1.07x the arithmetic at 28x28, 1.25x at 8x8),
    which are cut from the result; the spare zero image keeps the last runs in bounds.
    """
    xp = namespace(x)
    N, C, H, Wd, FN, FH, FW, Hp, Wp, OH, OW = _rows_geometry(tuple(x.shape), tuple(W.shape), pad)
    S, R, T = Hp * Wp, OH * Wp, FH * FW
    K = C * T
    dev = array_device(x)
    grid = xp.zeros((C, N + 1, Hp, Wp), dtype=x.dtype, device=dev)
    grid[:, :N, pad:pad + H, pad:pad + Wd] = xp.permute_dims(x, (1, 0, 2, 3))
    Xf = xp.reshape(grid, (C, (N + 1) * S))
    # Filters as (FN, K+1), the bias last: the ones row of the columns adds it inside the GEMM,
    # with no pass over the output.
    Wb = xp.concat([xp.reshape(W, (FN, K)), xp.reshape(b, (FN, 1))], axis=1)
    nc = _rows_chunk(K, R, xp.finfo(x.dtype).bits // 8, N)
    buf = xp.empty((K + 1, nc, R), dtype=x.dtype, device=dev)
    buf[K, :, :] = 1
    taps = [i * Wp + j for i in range(FH) for j in range(FW)]
    y = xp.empty((FN, N, OH, Wp), dtype=x.dtype, device=dev)
    for n0 in range(0, N, nc):
        m = min(nc, N - n0)
        _rows_columns(buf, Xf, T, C, n0, m, S, R, taps)
        col = xp.reshape(buf[:, :m, :], (K + 1, m * R))
        y[:, n0:n0 + m, :, :] = xp.reshape(xp.matmul(Wb, col), (FN, m, OH, Wp))
    # (N, FN, OH, OW) as a view of the (FN, N, ...) result: the next layers read it in place
    # and the next convolution's padding copy reads it channel by channel, as it needs.
    out = xp.permute_dims(y[:, :, :, :OW], (1, 0, 2, 3))
    return out, ("rows", Xf, tuple(x.shape), 1, pad)


def _conv_rows_backward(dout, ctx, W, need_dx):
    """Backward of :func:`_conv_rows`, block by block with the columns rebuilt (a cached copy
    is cheaper than reading a stored full-batch column matrix back from memory).

    dW and db: dout goes into G (FN, N, OH, Wp) with zeros in the wrapped columns, so they add
    nothing; per block, [dW | db] = cols @ G_blk.T (the ones row gives db).

    dx: the full correlation of dout with the flipped filters, computed like the forward (a
    gather, not a scatter-add of W.T @ G into shifted windows: half the memory passes).  dout
    sits in a zero grid Gz (FN, N+2, H+FH-1, Wp) whose rows are placed so that dx row hh of
    image n reads Gz rows hh..hh+FH-1 of image n+1; tap (i, j) is then again a contiguous run
    per image, at shift (FH-1-i)*Wp - j, and dx_blk (C, m*H*Wp) = W' (C, FN*FH*FW) @ cols_G.
    """
    xp = namespace(dout)
    _, Xf, x_shape, _, pad = ctx
    N, C, H, Wd, FN, FH, FW, Hp, Wp, OH, OW = _rows_geometry(x_shape, tuple(W.shape), pad)
    S, R, T = Hp * Wp, OH * Wp, FH * FW
    K = C * T
    dev = array_device(dout)
    size = xp.finfo(dout.dtype).bits // 8
    G = xp.zeros((FN, N, OH, Wp), dtype=dout.dtype, device=dev)
    G[:, :, :, :OW] = xp.permute_dims(dout, (1, 0, 2, 3))
    G3 = xp.reshape(G, (FN, N, R))
    nc = _rows_chunk(K, R, size, N)
    buf = xp.empty((K + 1, nc, R), dtype=dout.dtype, device=dev)
    buf[K, :, :] = 1
    taps = [i * Wp + j for i in range(FH) for j in range(FW)]
    acc = None
    for n0 in range(0, N, nc):
        m = min(nc, N - n0)
        _rows_columns(buf, Xf, T, C, n0, m, S, R, taps)
        g = xp.reshape(G3[:, n0:n0 + m, :], (FN, m * R))
        part = xp.matmul(xp.reshape(buf[:, :m, :], (K + 1, m * R)), xp.matrix_transpose(g))
        if acc is None:
            acc = part
        else:
            acc += part
    # acc (K+1, FN): the rows of dW.T, then db
    dW = xp.reshape(xp.matrix_transpose(acc[:K, :]), (FN, C, FH, FW))
    db = acc[K, :]
    if not need_dx:
        return None, dW, db
    # Output row oh goes to Gz row oh + FH-1-pad; rows that no dx row reads (pad >= FH) are left out.
    Hg, top = H + FH - 1, FH - 1 - pad
    o0, o1 = max(0, -top), min(OH, Hg - top)
    Sg, Rx = Hg * Wp, H * Wp
    Gz = xp.zeros((FN, N + 2, Hg, Wp), dtype=dout.dtype, device=dev)
    Gz[:, 1:N + 1, o0 + top:o1 + top, :] = G[:, :, o0:o1, :]
    Gzf = xp.reshape(Gz, (FN, (N + 2) * Sg))
    Wg = xp.reshape(xp.permute_dims(W, (1, 0, 2, 3)), (C, FN * T))    # W'[c, f*T + t]
    KG = FN * T
    ncg = _rows_chunk(KG - 1, Rx, size, N)
    bufg = xp.empty((KG, ncg, Rx), dtype=dout.dtype, device=dev)
    gtaps = [(FH - 1 - i) * Wp - j for i in range(FH) for j in range(FW)]
    DX = xp.empty((C, N, H, Wp), dtype=dout.dtype, device=dev)
    for n0 in range(0, N, ncg):
        m = min(ncg, N - n0)
        _rows_columns(bufg, Gzf, T, FN, n0 + 1, m, Sg, Rx, gtaps)
        cols = xp.reshape(bufg[:, :m, :], (KG, m * Rx))
        DX[:, n0:n0 + m, :, :] = xp.reshape(xp.matmul(Wg, cols), (C, m, H, Wp))
    dx = xp.permute_dims(DX[:, :, :, pad:pad + Wd], (1, 0, 2, 3))
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
    make = xp.empty if tiles else xp.zeros
    dxpad = make(xpad.shape, dtype=dout.dtype, device=array_device(dout))
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
