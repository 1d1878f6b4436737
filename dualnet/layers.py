"""Layers: each forward sits next to its backward, and forward keeps exactly what backward needs.

A layer holds ``params`` and their ``grads`` (dicts of device arrays with the
same keys), optional ``buffers`` (state saved in checkpoints but not trained,
such as batchnorm's running statistics), and a ``spec()`` from which it can be
rebuilt.  Shape letters and gradient names are those of :mod:`dualnet.functions`.
"""
from __future__ import annotations

from . import functions as F
from .backend import namespace
from .init import weight_std

__all__ = ["Layer", "Affine", "ReLU", "Sigmoid", "Tanh", "Flatten", "Convolution",
           "MaxPooling", "AvgPooling", "BatchNormalization", "Dropout", "SoftmaxWithLoss",
           "LAYERS", "layer_from_spec"]


class Layer:
    """Base class.

    Attributes
    ----------
    params, grads : dict[str, array]
    buffers : dict[str, array]
    need_dx : bool
        When False, ``backward`` skips the input gradient and returns None
        (set on a network's first layer, whose dx nobody uses).
    """

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.need_dx = True

    def spec(self):
        """JSON-ready description that :func:`layer_from_spec` rebuilds the layer from."""
        return {"type": type(self).__name__, **self._kwargs()}

    def _kwargs(self):
        return {}

    def output_shape(self, shape):
        """Shape of one sample's output for one sample's input ``shape`` (no batch axis)."""
        return shape

    def init_params(self, rng, weight_init):
        """Initial parameters as host arrays, drawn from ``rng`` (a :class:`dualnet.backend.HostRNG`)."""
        return {}

    def init_buffers(self, rng):
        """Initial buffers as host arrays."""
        return {}

    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __repr__(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self._kwargs().items())
        return f"{type(self).__name__}({kw})"


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
        n = 1
        for s in shape:
            n *= s
        return (n,)

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

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)

    def _kwargs(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    def output_shape(self, shape):
        n = 1
        for s in shape:
            n *= s
        if n != self.in_features:
            raise ValueError(f"Affine expects {self.in_features} input features but gets input of "
                             f"shape {shape} ({n} features)")
        return (self.out_features,)

    def init_params(self, rng, weight_init):
        std = weight_std(weight_init, self.in_features)
        return {"W": rng.normal((self.in_features, self.out_features), std),
                "b": rng.zeros(self.out_features)}

    def forward(self, x, train=False):
        xp = namespace(x)
        W, b = self.params["W"], self.params["b"]
        self.x_shape = x.shape
        x2 = xp.reshape(x, (x.shape[0], -1))
        if x2.shape[1] != W.shape[0]:
            raise ValueError(f"Affine: input of shape {tuple(x.shape)} has {x2.shape[1]} features "
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
    """2-D convolution by im2col/col2im.

    W : (FN, C, FH, FW);  b : (FN,);  x : (N, C, H, W) -> out : (N, FN, OH, OW)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0):
        super().__init__()
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        self.C, self.FN, self.FH, self.FW = int(in_channels), int(out_channels), int(k[0]), int(k[1])
        self.stride, self.pad = int(stride), int(pad)

    def _kwargs(self):
        return {"in_channels": self.C, "out_channels": self.FN, "kernel_size": [self.FH, self.FW],
                "stride": self.stride, "pad": self.pad}

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.C:
            raise ValueError(f"Convolution expects input (C={self.C}, H, W) per sample but gets {shape}")
        return (self.FN, F.output_size(shape[1], self.FH, self.stride, self.pad),
                F.output_size(shape[2], self.FW, self.stride, self.pad))

    def init_params(self, rng, weight_init):
        std = weight_std(weight_init, self.C * self.FH * self.FW)
        return {"W": rng.normal((self.FN, self.C, self.FH, self.FW), std), "b": rng.zeros(self.FN)}

    def forward(self, x, train=False):
        out, self.col = F.conv2d(x, self.params["W"], self.params["b"], self.stride, self.pad)
        self.x_shape = x.shape
        return out

    def backward(self, dout):
        dx, self.grads["W"], self.grads["b"] = F.conv2d_backward(
            dout, self.col, self.params["W"], self.x_shape, self.stride, self.pad, self.need_dx)
        return dx


# --------------------------------------------------------------------------- pooling
class _Pooling(Layer):
    def __init__(self, pool_h, pool_w=None, stride=None, pad=0):
        super().__init__()
        self.PH = int(pool_h)
        self.PW = int(pool_w if pool_w is not None else pool_h)
        self.stride = int(stride if stride is not None else self.PH)
        self.pad = int(pad)

    def _kwargs(self):
        return {"pool_h": self.PH, "pool_w": self.PW, "stride": self.stride, "pad": self.pad}

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{type(self).__name__} expects (C, H, W) per sample but gets {shape}")
        return (shape[0], F.output_size(shape[1], self.PH, self.stride, self.pad, "pooling"),
                F.output_size(shape[2], self.PW, self.stride, self.pad, "pooling"))


class MaxPooling(_Pooling):
    """Max over PH x PW windows per channel: (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        self.out, self.xpad = F.max_pool2d(x, self.PH, self.PW, self.stride, self.pad)
        return self.out

    def backward(self, dout):
        return F.max_pool2d_backward(dout, self.xpad, self.out, self.x_shape,
                                     self.PH, self.PW, self.stride, self.pad)


class AvgPooling(_Pooling):
    """Mean over PH x PW windows per channel: (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return F.avg_pool2d(x, self.PH, self.PW, self.stride, self.pad)

    def backward(self, dout):
        return F.avg_pool2d_backward(dout, self.x_shape, self.PH, self.PW, self.stride, self.pad)


# Book name.
Pooling = MaxPooling


# --------------------------------------------------------------------------- normalization
class BatchNormalization(Layer):
    """Batch normalization per feature of (N, D) or per channel of (N, C, H, W).

    gamma, beta : (D,) or (C,);  running_mean, running_var : same, updated in
    training as ``momentum * running + (1 - momentum) * batch`` and used in eval.
    """

    def __init__(self, num_features, momentum=0.9, eps=1e-5):
        super().__init__()
        self.D, self.momentum, self.eps = int(num_features), float(momentum), float(eps)

    def _kwargs(self):
        return {"num_features": self.D, "momentum": self.momentum, "eps": self.eps}

    def output_shape(self, shape):
        if shape[0] != self.D:
            raise ValueError(f"BatchNormalization has {self.D} features but gets input {shape}")
        return shape

    def init_params(self, rng, weight_init):
        return {"gamma": rng.ones(self.D), "beta": rng.zeros(self.D)}

    def init_buffers(self, rng):
        return {"running_mean": rng.zeros(self.D), "running_var": rng.ones(self.D)}

    def _axes(self, x):
        if x.ndim == 2:
            return (0,), (1, self.D)
        if x.ndim == 4:
            return (0, 2, 3), (1, self.D, 1, 1)
        raise ValueError(f"BatchNormalization expects (N, D) or (N, C, H, W), got {tuple(x.shape)}")

    def forward(self, x, train=False):
        xp = namespace(x)
        axes, bshape = self._axes(x)
        if x.shape[1] != self.D:
            raise ValueError(f"BatchNormalization has {self.D} features but input shape is {tuple(x.shape)}")
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
    1/(1 - ratio), so evaluation is the identity. Masks come from ``self.rng``, a
    :class:`dualnet.backend.DeviceRNG` that the network sets, so they are drawn on the device."""

    def __init__(self, ratio=0.5):
        super().__init__()
        if not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"dropout ratio must be in [0, 1), got {ratio}")
        self.ratio = float(ratio)
        self.rng = None

    def _kwargs(self):
        return {"ratio": self.ratio}

    def forward(self, x, train=False):
        self.mask = None
        if not train or self.ratio == 0.0:
            return x
        if self.rng is None:
            raise RuntimeError("Dropout needs a random generator: build it inside a Sequential or set layer.rng")
        self.mask = self.rng.uniform(tuple(x.shape), x.dtype) >= self.ratio
        return F.dropout(x, self.mask, self.ratio)

    def backward(self, dout):
        return dout if self.mask is None else F.dropout(dout, self.mask, self.ratio)


# --------------------------------------------------------------------------- loss
class SoftmaxWithLoss(Layer):
    """Softmax followed by mean cross-entropy; labels as integers (N,) or one-hot (N, K)."""

    def forward(self, x, t):
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
        raise ValueError(f"unknown layer type {name!r}; known: {', '.join(sorted(LAYERS))}")
    return LAYERS[name](**spec)
