"""Layers: each forward sits next to its backward, and forward keeps exactly what backward needs.

A layer declares its parameters (:meth:`Layer.param_specs`: shape, how the initial value is
drawn from a seeded host generator, role) and is built once: a model builds all its layers
together (:func:`build_layers`: one device, one generator, one flat buffer whose views are the
layers' ``params``); a layer used alone builds itself on first use, from its own ``seed`` and
``device``.  It holds ``grads`` after ``backward``, and ``buffers`` (state saved in checkpoints
but not trained, such as batch norm's running statistics).  Each parameter's role (``weight``,
``bias``, ``scale``, ``shift``) is how weight decay picks the weights.  A layer works alone:

>>> fc = Affine(3, 2, device="cpu", seed=0)
>>> out = fc.forward(x, train=True); dx = fc.backward(dout); fc.grads["W"]

``spec()`` describes the layer so it can be rebuilt (:func:`layer_from_spec`).
Shape letters and gradient names are those of :mod:`dualnet.functions`.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers

from . import conv, functions as F
from .backend import HostRNG, array_device, get_device, namespace, on_device_of
from .checks import check_labels
from .errors import ConfigError, ShapeError
from .params import ParamSpec, place

__all__ = ["Layer", "Affine", "ReLU", "Sigmoid", "Tanh", "Flatten", "Resize", "Convolution",
           "MaxPooling", "AvgPooling", "BatchNormalization", "Dropout", "Loss", "SoftmaxWithLoss", "MeanSquaredError",
           "LAYERS", "layer_from_spec"]


class Layer:
    """Base class: ``forward(x, train=False)`` and ``backward(dout)``.

    Parameters (keyword-only, for every layer)
    ----------
    device : str or Device, default "cpu"
        Where a layer used alone lives (resolved on first use); a model puts its layers on
        its own device.
    dtype : {"float32", "float64"}
    seed : int or HostRNG
        Draws the initial parameters on the host when the layer builds itself (a model draws
        from its own generator instead).
    weight_init : float or {"he", "xavier"}
        Standard deviation rule for weights (see :mod:`dualnet.init`).

    Attributes
    ----------
    params, grads : dict[str, array]
    buffers : dict[str, array]
    roles : dict[str, str]
        Role of each parameter: ``"weight"``, ``"bias"``, ``"scale"`` or ``"shift"``.
    need_dx : bool
        When False, ``backward`` skips the input gradient and returns None
        (a network sets it on its first layer, whose dx nobody uses).
    """

    roles = {}
    keeps_layout = False
    """True when ``forward`` and ``backward`` return arrays in the memory order of their input
    (the contract of :mod:`dualnet.conv.layout`, which ``"rows"`` convolutions rely on for speed)."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "_init_params" in cls.__dict__:  # the hook before the build phase: drawn, never called
            raise TypeError(f"{cls.__name__} defines _init_params(); a layer declares its parameters "
                            f"with param_specs() (dualnet.params.ParamSpec) instead")
        _bind_compute(cls)

    def __init__(self, *, device="cpu", dtype="float32", seed=0, weight_init="he"):
        self._device_spec, self._device = device, None   # resolved on first use
        self.dtype = _check_dtype(dtype)
        self._seed, self.weight_init = check_seed(seed), weight_init
        self._params, self._buffers, self.grads = None, None, {}
        self.need_dx = True

    # -- parameters ----------------------------------------------------------------
    @property
    def device(self):
        """The layer's device: its own ``device=`` used alone, its model's inside one."""
        if self._device is None:
            self._device = get_device(self._device_spec)
        return self._device

    @property
    def params(self):
        """Parameters by name (device arrays); a layer used alone builds itself on first use."""
        if self._params is None:
            self.build()
        return self._params

    @property
    def buffers(self):
        if self._buffers is None:
            self.build()
        return self._buffers

    def param_specs(self):
        """The parameters this layer declares, by name in drawing order: :class:`ParamSpec`."""
        return {}

    def _spec(self, name, shape, init, fan_in=0):
        return ParamSpec(tuple(int(s) for s in shape), init, self.roles[name], int(fan_in))

    def build(self, rng=None):
        """Draw fresh parameters and buffers from ``rng`` (a seed or a :class:`HostRNG`; default:
        the layer's own ``seed``) into one flat buffer on the layer's device; returns self."""
        build_layers([self], self.device, self.dtype, self._seed if rng is None else rng)
        return self

    def to(self, device=None, dtype=None):
        """Move parameters and buffers to ``device`` and/or ``dtype`` (copies); returns self."""
        new = get_device(device if device is not None else self.device)
        dtype = _check_dtype(dtype or self.dtype)
        if self._params is None:  # not built yet: it builds there
            self._device, self.dtype = new, dtype
        else:
            move_layers([self], new, dtype)
        return self

    def _init_buffers(self):
        """Initial buffers as host arrays."""
        return {}

    # -- description -------------------------------------------------------------------
    def spec(self):
        """JSON-ready description that :func:`layer_from_spec` rebuilds the layer from."""
        return {"type": type(self).__name__, **self._kwargs()}

    def _kwargs(self):
        return {}

    def output_shape(self, shape):
        """Shape of one sample's output for one sample's input ``shape`` (no batch axis)."""
        return shape

    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __repr__(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self._kwargs().items())
        return f"{type(self).__name__}({kw})"


_SPECS_ONLY = contextvars.ContextVar("dualnet_specs_only", default=False)


@contextlib.contextmanager
def specs_only():
    """Layers (and networks) built in this context allocate no parameters or buffers: only their
    sizes and :meth:`Layer.spec` are real.  A checkpoint's configuration is checked this way
    before anything is built, whatever sizes it claims."""
    token = _SPECS_ONLY.set(True)
    try:
        yield
    finally:
        _SPECS_ONLY.reset(token)


def _bind_compute(cls):
    """Wrap the ``forward`` and ``backward`` a class defines in :func:`_bound`."""
    for name in ("forward", "backward"):
        if name in cls.__dict__:
            setattr(cls, name, _bound(cls.__dict__[name]))


def _bound(method):
    """``method`` run under its layer's ``device.bind()``: a layer called alone computes on its
    own GPU (CuPy allocates on the current one, whatever ``device=`` says) -- the device of the
    layer for a :class:`Layer`, of the input for a :class:`Loss`."""
    backward = method.__name__ == "backward"

    def run(self, x=None, *args, **kw):
        # Call order: a flag in the instance, set after a forward that returned (no array is
        # touched, so no host sync on a device).
        if backward and not self.__dict__.get("_forwarded"):
            raise ConfigError(f"{type(self).__name__}.backward() was called before its forward(): "
                              f"call forward(x, ...) on the batch first, then backward(dout)")
        dev = getattr(self, "device", None)
        if dev is not None:
            ctx = dev.bind()
        elif x is not None and hasattr(x, "shape"):
            self._bind = on_device_of(x)  # a loss: its input's device, kept for backward
            ctx = self._bind
        else:
            ctx = getattr(self, "_bind", None) or contextlib.nullcontext()
        with ctx:
            out = method(self, *args, **kw) if x is None else method(self, x, *args, **kw)
        if not backward:
            self._forwarded = True
        return out
    run.__name__, run.__qualname__, run.__doc__ = method.__name__, method.__qualname__, method.__doc__
    run.__wrapped__ = method
    return run


def build_layers(layers, device, dtype, rng=0, weight_init=None):
    """Build ``layers`` together on ``device``: every parameter drawn once, in order, from one
    host generator ``rng`` (a seed or a :class:`HostRNG`), all of them in ONE flat buffer (one
    transfer) whose views become the layers' ``params``; the buffers likewise.

    ``weight_init``, when given, replaces every layer's own rule.  Returns the two flat buffers
    (parameters, buffers), each None when there is nothing in it.
    """
    if _SPECS_ONLY.get():  # see specs_only(): sizes and specs only, nothing drawn or allocated
        for layer in layers:
            layer._device, layer.dtype = device, dtype
            layer._params, layer._buffers, layer.grads = {}, {}, {}
        return None, None
    host = rng if isinstance(rng, HostRNG) else HostRNG(check_seed(rng))
    params, buffers = [], []
    for layer in layers:
        if weight_init is not None:
            layer.weight_init = weight_init
        params.append({k: s.draw(host, layer.weight_init) for k, s in layer.param_specs().items()})
        buffers.append(layer._init_buffers())
    return _place_layers(layers, device, dtype, params, buffers)


def move_layers(layers, device, dtype):
    """Copy the layers' current parameters and buffers into new flat buffers on ``device``
    (as :func:`build_layers` places them); returns the two flat buffers."""
    params = [{k: l.device.to_numpy(v) for k, v in l.params.items()} for l in layers]
    buffers = [{k: l.device.to_numpy(v) for k, v in l.buffers.items()} for l in layers]
    return _place_layers(layers, device, dtype, params, buffers)


def _place_layers(layers, device, dtype, params, buffers):
    P, pviews = place(device, dtype, params)
    B, bviews = place(device, dtype, buffers)
    for layer, pv, bv in zip(layers, pviews, bviews):
        layer._device, layer.dtype = device, dtype
        layer._params, layer._buffers, layer.grads = pv, bv, {}
    return P, B


def _check_dtype(dtype):
    d = str(dtype)
    if d not in ("float32", "float64"):
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}", param="dtype")
    return d


def check_size(value, what, lo=1):
    """``value`` as an int >= ``lo``: every size a layer or network is built with passes here, so
    a hidden size of 0 or -3 is one ConfigError naming it (not NumPy's error, or a division by 0)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok = True
    if not ok or int(value) < lo:
        raise ConfigError(f"{what} must be an integer >= {lo}, got {value!r}", param=None)
    return int(value)


def check_seed(seed, param="seed"):
    """A seed of the host generator: an integer >= 0."""
    if isinstance(seed, HostRNG):
        return seed
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)) or int(seed) < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}", param=param)
    return int(seed)


# --------------------------------------------------------------------------- activations
class ReLU(Layer):
    keeps_layout = True

    def forward(self, x, train=False):
        # A float 0/1 mask: one multiply each way is ~3x cheaper than where() in NumPy.
        self.mask = namespace(x).astype(x > 0, x.dtype)
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class Sigmoid(Layer):
    keeps_layout = True

    def forward(self, x, train=False):
        self.out = F.sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * self.out * (1.0 - self.out)


class Tanh(Layer):
    keeps_layout = True

    def forward(self, x, train=False):
        self.out = F.tanh(x)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out * self.out)


class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    def output_shape(self, shape):
        return (math.prod(shape),)

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return namespace(x).reshape(x, (x.shape[0], -1))

    def backward(self, dout):
        return namespace(dout).reshape(dout, self.x_shape)


class Resize(Layer):
    """Bilinear resize of (N, C, H, W) maps to (N, C, height, width), as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres, edges clamped).

    Resizing is linear in x, one matrix per axis: out = Rh @ x @ Rwᵀ with Rh (height, H) and
    Rw (width, W), so backward is dx = Rhᵀ @ dout @ Rw -- two batched matmuls each way, no
    scatter.  It lets a network built for large images (AlexNet) train on small ones.
    """

    def __init__(self, height, width=None, **kw):
        self.height, self.width = int(height), int(width if width is not None else height)
        self._mats = {}
        super().__init__(**kw)

    def _kwargs(self):
        return {"height": self.height, "width": self.width}

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ShapeError(f"Resize expects (C, H, W) per sample but gets {shape}")
        return (shape[0], self.height, self.width)

    def _matrix(self, n_out, n_in, like):
        """(n_out, n_in) interpolation weights on the device and dtype of ``like`` (cached)."""
        key = (n_out, n_in, str(like.dtype), str(array_device(like)))
        if key not in self._mats:
            rows, scale = [], n_in / n_out
            for o in range(n_out):
                src = max((o + 0.5) * scale - 0.5, 0.0)
                i0 = min(int(src), n_in - 1)
                i1, frac = min(i0 + 1, n_in - 1), src - i0
                row = [0.0] * n_in
                row[i0] += 1.0 - frac
                row[i1] += frac
                rows.append(row)
            xp = namespace(like)
            self._mats[key] = xp.asarray(rows, dtype=like.dtype, device=array_device(like))
        return self._mats[key]

    def forward(self, x, train=False):
        xp = namespace(x)
        self.Rh = self._matrix(self.height, x.shape[2], x)
        self.Rw = self._matrix(self.width, x.shape[3], x)
        return xp.matmul(xp.matmul(self.Rh, x), xp.matrix_transpose(self.Rw))

    def backward(self, dout):
        xp = namespace(dout)
        return xp.matmul(xp.matmul(xp.matrix_transpose(self.Rh), dout), self.Rw)


# --------------------------------------------------------------------------- affine
class Affine(Layer):
    """out = x @ W + b, with x of any rank flattened to (N, in_features) and dx restored.

    W : (in_features, out_features);  b : (out_features,)
    """

    roles = {"W": "weight", "b": "bias"}

    def __init__(self, in_features, out_features, **kw):
        self.in_features = check_size(in_features, "Affine in_features")
        self.out_features = check_size(out_features, "Affine out_features")
        super().__init__(**kw)

    def _kwargs(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    def output_shape(self, shape):
        n = math.prod(shape)
        if n != self.in_features:
            raise ShapeError(f"Affine expects {self.in_features} input features but gets input of "
                             f"shape {shape} ({n} features)")
        return (self.out_features,)

    def param_specs(self):
        return {"W": self._spec("W", (self.in_features, self.out_features), "normal", self.in_features),
                "b": self._spec("b", (self.out_features,), "zeros")}

    def forward(self, x, train=False):
        xp = namespace(x)
        W, b = self.params["W"], self.params["b"]
        self.x_shape = x.shape
        # x may be a batch-innermost map (dualnet.conv.layout): merging its (C, H, W) axes is a
        # view in either memory order, and matmul takes the transposed (N, D) matrix as it is
        x2 = xp.reshape(x, (x.shape[0], -1))
        if x2.shape[1] != W.shape[0]:
            raise ShapeError(f"Affine: input of shape {tuple(x.shape)} has {x2.shape[1]} features "
                             f"but W has shape {tuple(W.shape)} (expects {W.shape[0]})")
        self.x2 = x2
        return xp.matmul(x2, W) + b

    def backward(self, dout):
        xp = namespace(dout)
        W = self.params["W"]
        self.grads["W"] = xp.matmul(xp.matrix_transpose(self.x2), dout)
        self.grads["b"] = xp.sum(dout, axis=0)
        if not self.need_dx:
            return None
        return xp.reshape(xp.matmul(dout, xp.matrix_transpose(W)), self.x_shape)


# --------------------------------------------------------------------------- convolution
class Convolution(Layer):
    """2-D convolution.

    W : (FN, C, FH, FW);  b : (FN,);  x : (N, C, H, W) -> out : (N, FN, OH, OW)

    ``method`` picks the algorithm (one of :func:`dualnet.conv.method_names`, default
    ``"auto"``: :func:`dualnet.conv.choose` for the input's geometry and the layer's device);
    ``"im2col"`` is the book's, the reference every other method is tested against.
    It is not part of :meth:`spec`: a checkpoint loads into any method.  Output sizes are
    floored (see :class:`dualnet.conv.ConvGeometry`).
    """

    roles = {"W": "weight", "b": "bias"}

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, method=None, **kw):
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        self.C, self.FN, self.FH, self.FW = (check_size(v, f"Convolution {n}") for v, n in (
            (in_channels, "in_channels"), (out_channels, "out_channels"), (k[0], "kernel height"),
            (k[1], "kernel width")))
        self.stride, self.pad = check_size(stride, "Convolution stride"), check_size(pad, "Convolution pad", 0)
        self.method = method or "auto"
        if self.method not in conv.method_names():
            raise ConfigError(f"unknown convolution method {method!r}; choose one of "
                              f"{', '.join(conv.method_names())}", param="method")
        super().__init__(**kw)

    def _kwargs(self):
        return {"in_channels": self.C, "out_channels": self.FN, "kernel_size": [self.FH, self.FW],
                "stride": self.stride, "pad": self.pad}

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.C:
            raise ShapeError(f"Convolution expects input (C={self.C}, H, W) per sample but gets {shape}")
        g = conv.ConvGeometry.of((1, *shape), (self.FN, self.C, self.FH, self.FW), self.stride, self.pad)
        conv.resolve(self.method, g)   # an explicit method that cannot run this geometry fails here
        return (self.FN, g.OH, g.OW)

    def param_specs(self):
        return {"W": self._spec("W", (self.FN, self.C, self.FH, self.FW), "normal", self.C * self.FH * self.FW),
                "b": self._spec("b", (self.FN,), "zeros")}

    def forward(self, x, train=False):
        # "auto" chooses by geometry and by whether the device is the host or launch-bound
        out, self.saved = conv.conv2d(x, self.params["W"], self.params["b"], self.stride, self.pad,
                                      self.method, host=self.device.is_host)
        return out

    def backward(self, dout):
        dx, self.grads["W"], self.grads["b"] = conv.conv2d_backward(
            dout, self.saved, self.params["W"], self.need_dx)
        return dx


# --------------------------------------------------------------------------- pooling
class _Pooling(Layer):
    def __init__(self, pool_h, pool_w=None, stride=None, pad=0, **kw):
        self.PH = check_size(pool_h, "pooling pool_h")
        self.PW = check_size(pool_w if pool_w is not None else pool_h, "pooling pool_w")
        self.stride = check_size(stride if stride is not None else self.PH, "pooling stride")
        self.pad = check_size(pad, "pooling pad", 0)
        super().__init__(**kw)

    def _kwargs(self):
        return {"pool_h": self.PH, "pool_w": self.PW, "stride": self.stride, "pad": self.pad}

    def output_shape(self, shape):
        """Floored output size, as in :class:`Convolution`."""
        if len(shape) != 3:
            raise ShapeError(f"{type(self).__name__} expects (C, H, W) per sample but gets {shape}")
        return (shape[0], F.output_size(shape[1], self.PH, self.stride, self.pad, "pooling"),
                F.output_size(shape[2], self.PW, self.stride, self.pad, "pooling"))


class MaxPooling(_Pooling):
    """Max over PH x PW windows per channel: (N, C, H, W) -> (N, C, OH, OW).

    ``pad="same"`` is Keras' ``padding='same'``: OH = ceil(H / stride), and the input is padded
    by max((OH - 1) * stride + PH - H, 0) rows in all, half on top and the odd one at the
    bottom (columns likewise, the odd one on the right), with -inf so padded cells never win.
    """

    def __init__(self, pool_h, pool_w=None, stride=None, pad=0, **kw):
        self.same = pad == "same"
        super().__init__(pool_h, pool_w, stride, 0 if self.same else pad, **kw)

    def _kwargs(self):
        return {**super()._kwargs(), **({"pad": "same"} if self.same else {})}

    def output_shape(self, shape):
        if not self.same:
            return super().output_shape(shape)
        if len(shape) != 3:
            raise ShapeError(f"MaxPooling expects (C, H, W) per sample but gets {shape}")
        return (shape[0], -(-shape[1] // self.stride), -(-shape[2] // self.stride))

    def _same_geometry(self, H, W):
        """(rows, cols, top, left): the padded size whose windows give ceil(H / stride) outputs
        exactly, and where the input sits in it (a negative total crops the unreached tail)."""
        rows = (-(-H // self.stride) - 1) * self.stride + self.PH
        cols = (-(-W // self.stride) - 1) * self.stride + self.PW
        return rows, cols, max(rows - H, 0) // 2, max(cols - W, 0) // 2

    @property
    def keeps_layout(self):
        return self.pad == 0 and not self.same   # a padded input is a new array in C order

    def forward(self, x, train=False):
        if not self.same:
            out, self.ctx = F.max_pool2d(x, self.PH, self.PW, self.stride, self.pad)
            return out
        N, C, H, W = x.shape
        rows, cols, top, left = self._same_geometry(H, W)
        self.x_shape, self.offset = tuple(x.shape), (top, left)
        xpad = _place(x, (N, C, rows, cols), top, left, -math.inf)
        out, self.ctx = F.max_pool2d(xpad, self.PH, self.PW, self.stride, 0)
        return out

    def backward(self, dout):
        dx = F.max_pool2d_backward(dout, self.ctx)
        if not self.same:
            return dx
        top, left = self.offset
        return _place(dx, self.x_shape, -top, -left, 0.0)  # the padding's gradient is dropped


def _place(a, shape, top, left, fill):
    """``a`` (N, C, H, W) inside a new array of ``shape`` filled with ``fill``, its first row at
    ``top`` and first column at ``left`` (negative: ``a`` starts above/left, cut off there)."""
    H, W, OH, OW = a.shape[2], a.shape[3], shape[2], shape[3]
    if (top, left) == (0, 0) and (H, W) == (OH, OW):
        return a
    xp = namespace(a)
    out = xp.full(shape, fill, dtype=a.dtype, device=array_device(a))
    r0, r1 = max(top, 0), min(top + H, OH)   # rows of ``out`` that ``a`` covers
    c0, c1 = max(left, 0), min(left + W, OW)
    out[:, :, r0:r1, c0:c1] = a[:, :, r0 - top:r1 - top, c0 - left:c1 - left]
    return out


class AvgPooling(_Pooling):
    """Mean over PH x PW windows per channel: (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return F.avg_pool2d(x, self.PH, self.PW, self.stride, self.pad)

    def backward(self, dout):
        return F.avg_pool2d_backward(dout, self.x_shape, self.PH, self.PW, self.stride, self.pad)


# --------------------------------------------------------------------------- normalization
class BatchNormalization(Layer):
    """Batch normalization per feature of (N, D) or per channel of (N, C, H, W).

    gamma, beta : (D,) or (C,);  running_mean, running_var : same, updated in
    training as ``momentum * running + (1 - momentum) * batch`` and used in eval.
    """

    roles = {"gamma": "scale", "beta": "shift"}

    def __init__(self, num_features, momentum=0.9, eps=1e-5, **kw):
        self.D, self.momentum, self.eps = check_size(num_features, "BatchNormalization num_features"), \
            float(momentum), float(eps)
        if not (0 <= self.momentum <= 1 and 0 < self.eps < math.inf):
            raise ConfigError(f"BatchNormalization needs momentum in [0, 1] and eps in (0, inf), got "
                              f"momentum {momentum!r}, eps {eps!r}")
        super().__init__(**kw)

    def _kwargs(self):
        return {"num_features": self.D, "momentum": self.momentum, "eps": self.eps}

    def output_shape(self, shape):
        if shape[0] != self.D:
            raise ShapeError(f"BatchNormalization has {self.D} features but gets input {shape}")
        return shape

    def param_specs(self):
        return {"gamma": self._spec("gamma", (self.D,), "ones"), "beta": self._spec("beta", (self.D,), "zeros")}

    def _init_buffers(self):
        return {"running_mean": HostRNG.zeros(self.D), "running_var": HostRNG.ones(self.D)}

    def _axes(self, x):
        if x.ndim == 2:
            return (0,), (1, self.D)
        if x.ndim == 4:
            return (0, 2, 3), (1, self.D, 1, 1)
        raise ShapeError(f"BatchNormalization expects (N, D) or (N, C, H, W), got {tuple(x.shape)}")

    def forward(self, x, train=False):
        xp = namespace(x)
        axes, bshape = self._axes(x)
        if x.shape[1] != self.D:
            raise ShapeError(f"BatchNormalization has {self.D} features but input shape is {tuple(x.shape)}")
        gamma = xp.reshape(self.params["gamma"], bshape)
        beta = xp.reshape(self.params["beta"], bshape)
        self.train = train
        if train:
            mu = xp.mean(x, axis=axes, keepdims=True)
            xc = x - mu
            var = xp.mean(xc * xc, axis=axes, keepdims=True)
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm[...] = m * rm + (1 - m) * xp.reshape(mu, (self.D,))
            rv[...] = m * rv + (1 - m) * xp.reshape(var, (self.D,))
        else:
            xc = x - xp.reshape(self.buffers["running_mean"], bshape)
            var = xp.reshape(self.buffers["running_var"], bshape)
        self.std = xp.sqrt(var + self.eps)
        self.xn = xc / self.std
        self.axes, self.bshape = axes, bshape
        return gamma * self.xn + beta

    def backward(self, dout):
        xp = namespace(dout)
        axes, bshape = self.axes, self.bshape
        self.grads["beta"] = xp.sum(dout, axis=axes)
        self.grads["gamma"] = xp.sum(self.xn * dout, axis=axes)
        dxn = xp.reshape(self.params["gamma"], bshape) * dout
        if not self.train:
            return dxn / self.std
        # Simplified form of the chain through mean and variance:
        # dx = (dxn - mean(dxn) - xn * mean(dxn * xn)) / std
        mean_d = xp.mean(dxn, axis=axes, keepdims=True)
        mean_dx = xp.mean(dxn * self.xn, axis=axes, keepdims=True)
        return (dxn - mean_d - self.xn * mean_dx) / self.std


class Dropout(Layer):
    """Inverted dropout: in training keep each unit with probability 1 - ratio and scale by
    1/(1 - ratio), so evaluation is the identity.  Masks are drawn on the layer's device by
    ``self.rng`` (seeded by ``seed``; :meth:`set_seed` re-seeds it)."""

    def __init__(self, ratio=0.5, **kw):
        if not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(f"dropout ratio must be in [0, 1), got {ratio}", param="dropout")
        self.ratio = float(ratio)
        super().__init__(**kw)
        self.set_seed(kw.get("seed", 0))

    def _kwargs(self):
        return {"ratio": self.ratio}

    def set_seed(self, seed):
        """Re-seed the device generator that draws the masks (training does this every step).

        The generator is made once per device and then only re-seeded: on CuPy a new generator
        is a cuRAND generator created, and later destroyed, per step."""
        self.seed = int(seed)
        if getattr(self, "_rng", None) is not None and self._rng_device is self._device:
            self._rng.reseed(self.seed)
        elif self._device is not None:  # built (a model re-seeds after building): make it now
            self._rng, self._rng_device = self._device.rng(self.seed), self._device
        else:
            self._rng = None  # made on first use, once the layer's device is resolved

    @property
    def rng(self):
        """The device generator of the masks (made on the layer's device at first use)."""
        if self._rng is None or self._rng_device is not self.device:
            self._rng, self._rng_device = self.device.rng(self.seed), self.device
        return self._rng

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        self.set_seed(self.seed)  # a generator of the new device, if it changed
        return self

    def forward(self, x, train=False):
        self.mask = None
        if not train or self.ratio == 0.0:
            return x
        self.mask = self.rng.uniform(tuple(x.shape), x.dtype) >= self.ratio
        return F.dropout(x, self.mask, self.ratio)

    def backward(self, dout):
        return dout if self.mask is None else F.dropout(dout, self.mask, self.ratio)


# --------------------------------------------------------------------------- loss
class Loss:
    """Base of loss layers: ``forward(scores, t)`` returns the mean loss (0-d array) of a batch
    against labels ``t``; ``backward(dout=1.0)`` returns d loss / d scores.  A loss has no
    parameters, so it is not a :class:`Layer` and has no ``train`` flag; it computes on the
    device of its scores."""

    classifies = True   # scores are class scores: accuracy means something

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _bind_compute(cls)

    def spec(self):
        return {"type": type(self).__name__}

    def forward(self, x, t):
        raise NotImplementedError

    def backward(self, dout=1.0):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class SoftmaxWithLoss(Loss):
    """Softmax followed by mean cross-entropy; labels as integers (N,) or one-hot (N, K)."""

    def forward(self, x, t):
        # dtype and shapes only: the range costs a host sync on a device (the network checks it
        # where that is free)
        check_labels(t, x.shape[-1], x.shape[0], check_range=False)
        self.loss, self.y, self.t = F.softmax_cross_entropy(x, t)
        return self.loss

    def backward(self, dout=1.0):
        return (self.y - self.t) * (dout / self.y.shape[0])


class MeanSquaredError(Loss):
    """Regression: the output is the scores themselves (identity), the loss their mean squared
    error ``0.5 * sum((y - t)**2) / N`` against real-valued targets ``t`` (N, K) floats.

    There are no classes, so a model with this loss has no accuracy (it is refused)."""

    classifies = False

    def forward(self, x, t):
        xp = namespace(x)
        if not xp.isdtype(t.dtype, "real floating") or math.prod(t.shape) != math.prod(x.shape):
            raise ShapeError(f"regression targets have shape {tuple(t.shape)} and dtype {t.dtype} but the "
                             f"outputs have shape {tuple(x.shape)}: pass float targets of the same shape, "
                             f"e.g. t.reshape(N, {x.shape[-1]}) as float")
        self.y, self.t = x, t
        return F.mean_squared_error(x, t)

    def backward(self, dout=1.0):
        return F.d_mean_squared_error(self.y, self.t) * dout


LAYERS = {c.__name__: c for c in (Affine, ReLU, Sigmoid, Tanh, Flatten, Convolution, MaxPooling,
                                   AvgPooling, BatchNormalization, Dropout, SoftmaxWithLoss,
                                   MeanSquaredError)}
LAYERS["Resize"] = Resize


def layer_from_spec(spec):
    """Rebuild a layer from :meth:`Layer.spec` output."""
    spec = dict(spec)
    name = spec.pop("type")
    if name not in LAYERS:
        raise ConfigError(f"unknown layer type {name!r}; known: {', '.join(sorted(LAYERS))}")
    return LAYERS[name](**spec)
