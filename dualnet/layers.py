"""Layers: each forward sits next to its backward, and forward keeps exactly what backward needs.

A layer creates and owns its parameters (``params``, drawn from a seeded host
generator so one seed gives the same layer on every device), their ``grads`` after
``backward``, and ``buffers`` (state saved in checkpoints but not trained, such as
batch norm's running statistics).  Each parameter has a role (``weight``, ``bias``,
``scale``, ``shift``), which is how weight decay picks the weights.  A layer works
alone:

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

from . import functions as F
from .backend import HostRNG, get_device, namespace, on_device_of
from .checks import check_labels
from .errors import ConfigError, ShapeError
from .init import weight_std

__all__ = ["Layer", "Affine", "ReLU", "Sigmoid", "Tanh", "Flatten", "Convolution",
           "MaxPooling", "AvgPooling", "BatchNormalization", "Dropout", "Loss", "SoftmaxWithLoss",
           "LAYERS", "layer_from_spec"]


class Layer:
    """Base class: ``forward(x, train=False)`` and ``backward(dout)``.

    Parameters (keyword-only, for every layer)
    ----------
    device : str or Device, default "cpu"
    dtype : {"float32", "float64"}
    seed : int or HostRNG
        Draws the initial parameters on the host.
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

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _bind_compute(cls)

    def __init__(self, *, device="cpu", dtype="float32", seed=0, weight_init="he"):
        self.device = get_device(device)
        self.dtype = _check_dtype(dtype)
        self.weight_init = weight_init
        self.params, self.grads, self.buffers = {}, {}, {}
        self.need_dx = True
        self.reset_parameters(seed)

    # -- parameters ----------------------------------------------------------------
    def reset_parameters(self, rng=0, weight_init=None):
        """Draw fresh parameters and buffers from ``rng`` (a seed or a :class:`HostRNG`)."""
        if weight_init is not None:
            self.weight_init = weight_init
        if _SPECS_ONLY.get():  # see specs_only()
            self.params, self.buffers, self.grads = {}, {}, {}
            return self
        host = rng if isinstance(rng, HostRNG) else HostRNG(check_seed(rng))
        dt = self.device.dtype(self.dtype)
        with self.device.bind():
            self.params = {k: self.device.asarray(v, dt) for k, v in self._init_params(host).items()}
            self.buffers = {k: self.device.asarray(v, dt) for k, v in self._init_buffers().items()}
        self.grads = {}
        return self

    def to(self, device=None, dtype=None):
        """Move parameters and buffers to ``device`` and/or ``dtype`` (copies); returns self."""
        self.device = get_device(device if device is not None else self.device)
        self.dtype = _check_dtype(dtype or self.dtype)
        dt = self.device.dtype(self.dtype)
        with self.device.bind():
            self.params = {k: self.device.asarray(v, dt) for k, v in self.params.items()}
            self.buffers = {k: self.device.asarray(v, dt) for k, v in self.buffers.items()}
        self.grads = {}
        return self

    def _init_params(self, rng):
        """Initial parameters as host arrays, drawn from ``rng`` (a :class:`HostRNG`)."""
        return {}

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


def _output_size(size, k, stride, pad, what):
    try:
        return F.output_size(size, k, stride, pad, what)
    except ValueError as e:
        raise ShapeError(str(e)) from None


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
    def forward(self, x, train=False):
        # A float 0/1 mask: one multiply each way is ~3x cheaper than where() in NumPy.
        self.mask = namespace(x).astype(x > 0, x.dtype)
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class Sigmoid(Layer):
    def forward(self, x, train=False):
        self.out = F.sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * self.out * (1.0 - self.out)


class Tanh(Layer):
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

    def _init_params(self, rng):
        std = weight_std(self.weight_init, self.in_features)
        return {"W": rng.normal((self.in_features, self.out_features), std),
                "b": rng.zeros(self.out_features)}

    def forward(self, x, train=False):
        xp = namespace(x)
        W, b = self.params["W"], self.params["b"]
        self.x_shape = x.shape
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

    ``method`` picks the algorithm (one of :data:`dualnet.functions.CONV_METHODS`);
    ``"im2col"`` is the book's, the reference every other method is tested against.
    It is not part of :meth:`spec`: a checkpoint loads into any method.
    """

    roles = {"W": "weight", "b": "bias"}

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, method=None, **kw):
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        self.C, self.FN, self.FH, self.FW = (check_size(v, f"Convolution {n}") for v, n in (
            (in_channels, "in_channels"), (out_channels, "out_channels"), (k[0], "kernel height"),
            (k[1], "kernel width")))
        self.stride, self.pad = check_size(stride, "Convolution stride"), check_size(pad, "Convolution pad", 0)
        self.method = method or F.CONV_METHODS[0]
        if self.method not in F.CONV_METHODS:
            raise ConfigError(f"unknown convolution method {method!r}; choose one of "
                              f"{', '.join(F.CONV_METHODS)}", param="method")
        super().__init__(**kw)

    def _kwargs(self):
        return {"in_channels": self.C, "out_channels": self.FN, "kernel_size": [self.FH, self.FW],
                "stride": self.stride, "pad": self.pad}

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.C:
            raise ShapeError(f"Convolution expects input (C={self.C}, H, W) per sample but gets {shape}")
        return (self.FN, _output_size(shape[1], self.FH, self.stride, self.pad, "convolution"),
                _output_size(shape[2], self.FW, self.stride, self.pad, "convolution"))

    def _init_params(self, rng):
        std = weight_std(self.weight_init, self.C * self.FH * self.FW)
        return {"W": rng.normal((self.FN, self.C, self.FH, self.FW), std), "b": rng.zeros(self.FN)}

    def forward(self, x, train=False):
        W = self.params["W"]
        method = self.method
        if method == "auto":  # by shape, and by whether the device is the host or launch-bound
            method = F.choose_conv_method(tuple(x.shape), tuple(W.shape), self.stride, self.pad,
                                          self.device.is_host)
        out, self.ctx = F.conv2d(x, W, self.params["b"], self.stride, self.pad, method)
        return out

    def backward(self, dout):
        dx, self.grads["W"], self.grads["b"] = F.conv2d_backward(
            dout, self.ctx, self.params["W"], self.need_dx)
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
        if len(shape) != 3:
            raise ShapeError(f"{type(self).__name__} expects (C, H, W) per sample but gets {shape}")
        return (shape[0], _output_size(shape[1], self.PH, self.stride, self.pad, "pooling"),
                _output_size(shape[2], self.PW, self.stride, self.pad, "pooling"))


class MaxPooling(_Pooling):
    """Max over PH x PW windows per channel: (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x, train=False):
        out, self.ctx = F.max_pool2d(x, self.PH, self.PW, self.stride, self.pad)
        return out

    def backward(self, dout):
        return F.max_pool2d_backward(dout, self.ctx)


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

    def _init_params(self, rng):
        return {"gamma": rng.ones(self.D), "beta": rng.zeros(self.D)}

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
        if getattr(self, "_rng_device", None) is self.device:
            self.rng.reseed(self.seed)
        else:
            self.rng, self._rng_device = self.device.rng(self.seed), self.device

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


LAYERS = {c.__name__: c for c in (Affine, ReLU, Sigmoid, Tanh, Flatten, Convolution, MaxPooling,
                                   AvgPooling, BatchNormalization, Dropout, SoftmaxWithLoss)}


def layer_from_spec(spec):
    """Rebuild a layer from :meth:`Layer.spec` output."""
    spec = dict(spec)
    name = spec.pop("type")
    if name not in LAYERS:
        raise ConfigError(f"unknown layer type {name!r}; known: {', '.join(sorted(LAYERS))}")
    return LAYERS[name](**spec)
