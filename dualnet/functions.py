"""Pure functions: activations, losses, im2col/col2im and pooling (convolution: :mod:`dualnet.conv`).

Every function takes its namespace from its arguments, so the same code runs on
NumPy, CuPy and array_api_strict.

Notation used throughout dualnet
--------------------------------
N : batch size            C : input channels         H, W : input height, width
FN : number of filters    FH, FW : filter (or pool window) height, width
OH, OW : output height, width = (H + 2*pad - FH) // stride + 1  (floored, as the book,
         PyTorch and Keras: rows and columns no window reaches get a zero gradient)
x : layer input           out : layer output
dout : gradient of the loss w.r.t. ``out``;  dx, dW, db : w.r.t. ``x``, ``W``, ``b``
"""
from __future__ import annotations

import math


from .backend import namespace, array_device
from .errors import ShapeError

__all__ = [
    "step", "sigmoid", "relu", "tanh", "identity", "softmax", "log_softmax",
    "mean_squared_error", "d_mean_squared_error", "cross_entropy_error", "softmax_cross_entropy", "one_hot",
    "output_size", "pad2d", "im2col", "col2im",
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
    """max(x, 0) in one pass: a Python 0 takes ``x``'s dtype (integers stay integers), so no
    array of zeros is made."""
    return namespace(x).maximum(x, 0)


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
    """OH for input ``size``, window ``k``: ``(size + 2*pad - k) // stride + 1``, floored.

    A stride that does not divide ``size + 2*pad - k`` leaves the last rows unreached (the
    book, PyTorch and Keras do the same); only a window larger than the padded input raises.
    """
    span = size + 2 * pad - k
    if span < 0:
        raise ShapeError(f"{what}: window {k} is larger than the padded input "
                         f"({size} + 2*{pad} = {size + 2 * pad}); use a smaller window or more padding")
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


# --------------------------------------------------------------------------- pooling
def _pool_geometry(x, PH, PW, stride, pad, what):
    if x.ndim != 4:
        raise ShapeError(f"{what} expects input (N, C, H, W), got shape {tuple(x.shape)}")
    return (output_size(x.shape[2], PH, stride, pad, what),
            output_size(x.shape[3], PW, stride, pad, what))


def max_pool2d(x, PH, PW, stride, pad=0, record=True):
    """Max pooling as elementwise maxima over PH*PW strided views.

    Cheaper than im2col followed by a max over a tiny last axis: every pass is
    one elementwise op on (N, C, OH, OW).  Where the windows tile the (padded) input, as
    the usual 2x2 stride 2 pool on an even map does, and ``record`` is true, the forward
    also records where each window's first maximum is, so that the backward is a few large
    operations: for a 2x2 pool of a C-order map (every map on a GPU) two stages of leads
    (:func:`_max_pool_2x2_rows`), else a first-maximum mask of the input's shape and memory
    order (:func:`_max_pool_tiled`; a batch-innermost map on the host).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    record : bool
        False (inference) records nothing; a backward from such a ``ctx`` routes
        the gradient window offset by window offset instead, to the same result.

    Returns
    -------
    out : array, shape (N, C, OH, OW)
    ctx : tuple   what :func:`max_pool2d_backward` needs (opaque to callers)
    """
    xp = namespace(x)
    OH, OW = _pool_geometry(x, PH, PW, stride, pad, "max pooling")
    xpad = pad2d(x, pad, value=-math.inf)
    tiles = stride == PH == PW and OH * PH == xpad.shape[2] and OW * PW == xpad.shape[3]
    if record and tiles and PH == 2 and _c_order(xpad):
        out, leads = _max_pool_2x2_rows(xpad)
        return out, ("2x2 rows", leads, tuple(x.shape), pad)
    if record and tiles and PH * PW > 1:
        out, mask = _max_pool_tiled(xpad, PH, PW, OH, OW)
        return out, ("tiled", mask, out, tuple(x.shape), PH, PW, stride, pad)
    out = None
    for i in range(PH):
        for j in range(PW):
            v = _window(xpad, i, j, OH, OW, stride)
            out = v if out is None else xp.maximum(out, v)
    if out is not None and PH * PW == 1:
        out = xp.asarray(out, copy=True)
    return out, ("windows", xpad, out, tuple(x.shape), PH, PW, stride, pad)


def _max_pool_tiled(xpad, PH, PW, OH, OW):
    """Max over disjoint windows that tile ``xpad`` (N, C, OH*PH, OW*PW), and a boolean mask of
    ``xpad``'s shape (and memory order) that is True at each window's first maximal offset.

    A running maximum over the offsets in row-major order never decreases, so the first
    maximum is the offset at which it first equals the window's maximum: offset k's mask is
    (running max at k == max) XOR (running max at k-1 == max), one operation each, the
    running maxima being fresh, contiguous arrays (only offset 0's compare reads a strided
    view).  A window holding NaN equals nothing and gets no gradient, as in the routing of
    :func:`_max_pool_windows_backward`.

    Returns
    -------
    out : array, shape (N, C, OH, OW)
    mask : bool array, shape (N, C, OH*PH, OW*PW)
    """
    xp = namespace(xpad)
    run = []   # run[k]: the running maximum over offsets 0..k
    for k in range(PH * PW):
        v = _window(xpad, *divmod(k, PW), OH, OW, PH)
        run.append(v if not run else xp.maximum(run[-1], v))
    out = run[-1]
    # ``*_like`` keeps the memory order of the input on NumPy (order "K"): a batch-innermost
    # map gets a batch-innermost mask, and so a batch-innermost gradient.
    mask = xp.empty_like(xpad, dtype=xp.bool)
    reached = None   # where the running maximum at the offset before had reached the maximum
    for k in range(PH * PW):
        now = run[k] == out
        sl = _window_index(*divmod(k, PW), OH, OW, PH)
        mask[sl] = now if reached is None else now ^ reached
        reached = now
    return out, mask


def _max_pool_2x2_rows(xpad):
    """2x2 stride-2 max of a C-order ``xpad`` (N, C, H, W), H and W even, in two stages: the
    maximum of each column pair, then of each row pair of those.  Where a stage's second
    operand is strictly larger it "leads"; a tie keeps the first, so the winner (the second
    row where the row stage led, then the second column of that row where its column pair
    led) is the window's first maximum in row-major order.

    Half the work of each stage runs on contiguous rows, where the running maximum over the
    four offsets of :func:`_max_pool_tiled` reads every element at a stride of 2 (and its
    mask's multiply runs inner loops of 2 elements in C order).

    Returns
    -------
    out : array, shape (N, C, H/2, W/2)
    leads : (bool (N, C, H, W/2): the column stage's, bool (N, C, H/2, W/2): the row stage's)
    """
    xp = namespace(xpad)
    c0, c1 = xpad[:, :, :, 0::2], xpad[:, :, :, 1::2]
    cols = xp.maximum(c0, c1)
    r0, r1 = cols[:, :, 0::2, :], cols[:, :, 1::2, :]
    return xp.maximum(r0, r1), (c1 > c0, r1 > r0)


def _max_pool_2x2_rows_backward(dout, ctx):
    """Split ``dout`` (N, C, OH, OW) between the rows of each window, then between the columns
    of each row, each split one multiply and one subtraction; interleaving the halves is
    one ``stack`` whose C-order result is the finer grid (a reshape, no copy)."""
    xp = namespace(dout)
    _, (col_lead, row_lead), (N, C, H, W), pad = ctx
    OH, OW = dout.shape[2], dout.shape[3]
    second = dout * xp.astype(row_lead, dout.dtype)
    rows = xp.reshape(xp.stack([dout - second, second], axis=3), (N, C, 2 * OH, OW))
    second = rows * xp.astype(col_lead, dout.dtype)
    dxpad = xp.reshape(xp.stack([rows - second, second], axis=4), (N, C, 2 * OH, 2 * OW))
    return dxpad[:, :, pad:pad + H, pad:pad + W] if pad else dxpad


def _c_order(a):
    """Whether ``a`` is laid out in C order, or does not say (array_api_strict)."""
    order = _axis_order(a)
    return order is None or order == sorted(order)


def _axis_order(a):
    """Axes of ``a`` of more than one element, outermost in memory first; None where the
    array does not expose its strides (array_api_strict)."""
    strides = getattr(a, "strides", None)
    if strides is None:
        return None
    return sorted((k for k in range(a.ndim) if a.shape[k] > 1), key=lambda k: -strides[k])


def _in_order_of(a, like):
    """``a``, copied into the memory order of ``like`` (same shape) where its own differs.

    An elementwise operation on operands of two memory orders walks one of them across its
    strides at every element; one copy of the smaller array puts that transpose in one pass
    (the gradient of a flattened map comes back in C order while the map was batch-innermost).
    """
    if _axis_order(a) == _axis_order(like):
        return a
    out = namespace(a).empty_like(like, dtype=a.dtype)
    out[...] = a
    return out


def max_pool2d_backward(dout, ctx):
    """Route ``dout`` (N, C, OH, OW) to the arg-max of each window; ties go to the first.

    ``ctx`` is the second result of :func:`max_pool2d`.

    Returns
    -------
    dx : array, shape (N, C, H, W)
    """
    if ctx[0] == "tiled":
        return _max_pool_tiled_backward(dout, ctx)
    if ctx[0] == "2x2 rows":
        return _max_pool_2x2_rows_backward(dout, ctx)
    return _max_pool_windows_backward(dout, ctx)


def _max_pool_tiled_backward(dout, ctx):
    """One broadcast multiply: (N, C, OH, PH, OW, PW) mask by (N, C, OH, 1, OW, 1) ``dout``."""
    xp = namespace(dout)
    _, mask, out, x_shape, PH, PW, _, pad = ctx
    N, C, H, W = x_shape
    OH, OW = dout.shape[2], dout.shape[3]
    dout = _in_order_of(dout, out)   # the product takes the mask's order only if dout shares it
    m = xp.astype(xp.reshape(mask, (N, C, OH, PH, OW, PW)), dout.dtype)
    dxpad = xp.reshape(m * xp.reshape(dout, (N, C, OH, 1, OW, 1)), (N, C, OH * PH, OW * PW))
    return dxpad[:, :, pad:pad + H, pad:pad + W] if pad else dxpad


def _max_pool_windows_backward(dout, ctx):
    """The backward of windows that overlap, leave input rows unreached or were not recorded."""
    xp = namespace(dout)
    _, xpad, out, x_shape, PH, PW, stride, pad = ctx
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
    # tracking a boolean "not found yet" mask, and as fast in NumPy; ``where`` instead of the
    # float mask is slower (measured in docs/convolution.md, "Smaller choices").
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
