"""Batch normalization of (N, D) features or (N, C, H, W) channels, with running statistics
kept as buffers for evaluation."""
from __future__ import annotations

import math

from ..backend import HostRNG, namespace
from ..errors import ConfigError, ShapeError
from .base import Layer, check_size


class BatchNormalization(Layer):
    """Batch normalization per feature of (N, D) or per channel of (N, C, H, W).

    gamma, beta : (D,) or (C,);  running_mean, running_var : same, updated in
    training as ``momentum * running + (1 - momentum) * batch`` and used in eval.
    """

    roles = {"gamma": "scale", "beta": "shift"}
    per_sample = False   # training normalizes by the batch's mean and variance
    backward_state = ("xn", "std")

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
