"""The book's ``common/layers.py``: layers built from the arrays they use.

Each class wraps the dualnet layer of the same job (:mod:`dualnet.layers`) and gives it the
book's constructor and attributes: ``Affine(W, b)`` takes its weights, ``forward``/``backward``
compute, and ``dW``/``db`` (``dgamma``/``dbeta``) hold the gradients after ``backward``.

Every layer computes on the device of ``DUALNET_DEVICE`` at the time it is made: parameter
arrays and host inputs are moved there (host arrays of the layer's dtype on the CPU are used
as they are, so ``layer.W`` is then the very array passed in, as in the book).  Parameters keep
their float dtype; anything else takes ``DUALNET_DTYPE``.
"""
from __future__ import annotations

import math

import numpy as np

from ... import layers as L
from ...errors import ShapeError
from ...checks import check_labels
from .._env import device, dtype as env_dtype, is_host_data
from .._net import to_device_input, to_device_labels
from .functions import *   # noqa: F403 -- the book's layers.py star-imports its functions
from .functions import __all__ as _FUNCTIONS
from .util import col2im, im2col

__all__ = ["Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout", "BatchNormalization",
           "Convolution", "Pooling", *_FUNCTIONS, "im2col", "col2im"]


def _float_dtype(a):
    s = str(getattr(a, "dtype", ""))
    return "float32" if "float32" in s else "float64" if "float64" in s else env_dtype()


class _Layer:
    """The book's layer interface over one dualnet layer ``self._layer``."""

    def _setup(self, layer, dt):
        self._layer, self._dtype, self.device = layer, dt, layer.device

    def _in(self, x, what="x"):
        return to_device_input(self.device, x, self._dtype, what)

    def _param(self, name, value):
        """Put ``value`` (host or device array) in as parameter ``name``."""
        self._layer.params[name] = to_device_input(self.device, value, self._dtype,
                                                   f"{type(self).__name__}.{name}")

    def forward(self, x):
        with self.device.bind():
            return self._layer.forward(self._in(x), train=True)

    def backward(self, dout):
        with self.device.bind():
            return self._layer.backward(self._in(dout, "dout"))

    def __repr__(self):
        return f"{type(self).__name__}(on {self.device.spec}, wrapping {self._layer!r})"


def _param_property(name, doc):
    def get(self):
        return self._layer.params[name]

    def set(self, value):
        self._param(name, value)
    return property(get, set, doc=doc)


def _grad_property(name):
    return property(lambda self: self._layer.grads.get(name),
                    doc=f"Gradient of ``{name}`` from the last backward (None before one).")


class Relu(_Layer):
    """max(0, x); backward passes dout where x > 0."""

    def __init__(self):
        dev, dt = device(), env_dtype()
        self._setup(L.ReLU(device=dev, dtype=dt), dt)


class Sigmoid(_Layer):
    """1 / (1 + exp(-x)); backward: dout * y * (1 - y)."""

    def __init__(self):
        dev, dt = device(), env_dtype()
        self._setup(L.Sigmoid(device=dev, dtype=dt), dt)


class Affine(_Layer):
    """out = x @ W + b; input of any rank is flattened to (N, D) and dx gets its shape back.

    W : (D, M);  b : (M,)
    """

    W = _param_property("W", "Weights (D, M), on the layer's device.")
    b = _param_property("b", "Bias (M,), on the layer's device.")
    dW = _grad_property("W")
    db = _grad_property("b")

    def __init__(self, W, b):
        dt = _float_dtype(W)
        if len(W.shape) != 2 or tuple(b.shape) != (W.shape[1],):
            raise ShapeError(f"Affine(W, b) needs W of shape (D, M) and b of shape (M,); got W "
                             f"{tuple(W.shape)} and b {tuple(b.shape)}")
        self._setup(L.Affine(W.shape[0], W.shape[1], device=device(), dtype=dt), dt)
        self.W, self.b = W, b


class Convolution(_Layer):
    """2-D convolution (im2col and one matrix product).

    W : (FN, C, FH, FW);  b : (FN,);  x : (N, C, H, W) -> (N, FN, OH, OW)
    """

    W = _param_property("W", "Filters (FN, C, FH, FW), on the layer's device.")
    b = _param_property("b", "Bias (FN,), on the layer's device.")
    dW = _grad_property("W")
    db = _grad_property("b")

    def __init__(self, W, b, stride=1, pad=0):
        dt = _float_dtype(W)
        if len(W.shape) != 4 or tuple(b.shape) != (W.shape[0],):
            raise ShapeError(f"Convolution(W, b) needs W of shape (FN, C, FH, FW) and b of shape "
                             f"(FN,); got W {tuple(W.shape)} and b {tuple(b.shape)}")
        FN, C, FH, FW = (int(s) for s in W.shape)
        self.stride, self.pad = int(stride), int(pad)
        self._setup(L.Convolution(C, FN, (FH, FW), self.stride, self.pad, device=device(), dtype=dt), dt)
        self.W, self.b = W, b


class Pooling(_Layer):
    """Max pooling over pool_h x pool_w windows (the book's default stride is 1)."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = int(pool_h), int(pool_w), int(stride), int(pad)
        dt = env_dtype()
        self._setup(L.MaxPooling(self.pool_h, self.pool_w, self.stride, self.pad,
                                 device=device(), dtype=dt), dt)


class Dropout(_Layer):
    """Drop each unit with probability ``dropout_ratio`` in training.

    dualnet's form: kept units are scaled by 1/(1 - ratio) in training, so inference is the
    identity (the book instead scales by 1 - ratio at inference; the expected outputs agree).
    """

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = float(dropout_ratio)
        dt = env_dtype()
        self._setup(L.Dropout(self.dropout_ratio, device=device(), dtype=dt), dt)

    def forward(self, x, train_flg=True):
        with self.device.bind():
            return self._layer.forward(self._in(x), train=bool(train_flg))


class BatchNormalization(_Layer):
    """Batch normalization: out = gamma * (x - mean) / sqrt(var + eps) + beta.

    gamma, beta : (D,).  ``x`` is (N, D); for (N, C, H, W) maps, gamma of C*H*W elements
    normalizes each element over the batch (the book's way: it flattens the map), and gamma of
    C elements normalizes per channel (dualnet's way).  Running mean and variance, for
    inference, follow ``momentum``; eps is the book's 1e-6.
    """

    gamma = _param_property("gamma", "Scale (D,), on the layer's device.")
    beta = _param_property("beta", "Shift (D,), on the layer's device.")
    dgamma = _grad_property("gamma")
    dbeta = _grad_property("beta")
    _shape = ()  # the last forward's input shape; none before one (backward then says so)

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        dt = _float_dtype(gamma)
        D = math.prod(gamma.shape)
        if tuple(gamma.shape) != (D,) or tuple(beta.shape) != (D,):
            raise ShapeError(f"BatchNormalization(gamma, beta) needs two vectors of one length; got "
                             f"gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)}")
        self.momentum = float(momentum)
        self._setup(L.BatchNormalization(D, momentum=self.momentum, eps=1e-6, device=device(),
                                         dtype=dt), dt)
        self.gamma, self.beta = gamma, beta
        for name, v in (("running_mean", running_mean), ("running_var", running_var)):
            if v is not None:
                with self.device.bind():
                    self._layer.buffers[name][...] = self._in(v, name)

    @property
    def running_mean(self):
        return self._layer.buffers["running_mean"]

    @property
    def running_var(self):
        return self._layer.buffers["running_var"]

    def _flat(self, x):
        """Whether (N, C, H, W) input is normalized per element (flattened to (N, C*H*W))."""
        D = self._layer.D
        if x.ndim == 2 or (x.ndim == 4 and x.shape[1] == D):
            return False
        if math.prod(x.shape[1:]) == D:
            return True
        raise ShapeError(f"BatchNormalization has {D} features (gamma {D},) but x has shape "
                         f"{tuple(x.shape)}; gamma needs C (per channel) or C*H*W (per element) "
                         f"values for a map, D for (N, D)")

    def forward(self, x, train_flg=True):
        xp = self.device.xp
        with self.device.bind():
            x = self._in(x)
            self._shape = tuple(x.shape)
            if self._flat(x):
                out = self._layer.forward(xp.reshape(x, (x.shape[0], -1)), train=bool(train_flg))
                return xp.reshape(out, self._shape)
            return self._layer.forward(x, train=bool(train_flg))

    def backward(self, dout):
        xp = self.device.xp
        with self.device.bind():
            dout = self._in(dout, "dout")
            if len(self._shape) == 4 and self._shape[1] != self._layer.D:
                dx = self._layer.backward(xp.reshape(dout, (dout.shape[0], -1)))
                return xp.reshape(dx, self._shape)
            return self._layer.backward(dout)


class SoftmaxWithLoss:
    """Softmax then cross-entropy: ``forward(x, t)`` returns the mean loss as a Python float,
    ``backward(dout=1)`` returns (softmax(x) - t) / N on the device."""

    def __init__(self):
        self.device = device()
        self._layer = L.SoftmaxWithLoss()
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        dt = _float_dtype(x)
        if is_host_data(t) and hasattr(t, "shape") and hasattr(x, "shape"):  # host labels: the range is free
            check_labels(t, x.shape[-1], x.shape[0], what="t")
        with self.device.bind():
            loss = self._layer.forward(to_device_input(self.device, x, dt),
                                       to_device_labels(self.device, t))
        self.y, self.t = self._layer.y, self._layer.t
        self.loss = float(self.device.to_numpy(loss))
        return self.loss

    def backward(self, dout=1):
        with self.device.bind():
            return self._layer.backward(float(dout))
