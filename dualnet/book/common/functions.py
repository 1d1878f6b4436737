"""The book's ``common/functions.py``: activations and losses on arrays.

Each function computes where its argument lives (host NumPy, CuPy, the simulated device);
a host label array passed with device scores is moved to their device.  The losses return
Python floats, as the book prints them; the activations return arrays.
"""
from __future__ import annotations

import numpy as np   # the book's module exports np through a star import

from ... import functions as F
from ...backend import namespace
from .._env import device, host, is_host_data

__all__ = ["identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu", "relu_grad",
           "softmax", "mean_squared_error", "sum_squared_error", "cross_entropy_error", "softmax_loss",
           "np"]


def _arr(x):
    """An array of some namespace: numbers and lists become host arrays."""
    try:
        namespace(x)
        return x
    except TypeError:
        return host().asarray(x)


def _pair(y, t):
    """``y`` and ``t`` in one namespace: host ``t`` follows ``y`` to the book's device."""
    y, t = _arr(y), _arr(t)
    if namespace(y) is not namespace(t) and is_host_data(t):
        t = device().asarray(t)
    return y, t


def identity_function(x):
    return x


def step_function(x):
    """1 where ``x > 0`` else 0, as integers (int64)."""
    x = _arr(x)
    xp = namespace(x)
    return xp.astype(x > 0, xp.int64)


def sigmoid(x):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    return F.sigmoid(_arr(x))


def sigmoid_grad(x):
    """d sigmoid / dx at ``x``: (1 - sigmoid(x)) * sigmoid(x)."""
    s = F.sigmoid(_arr(x))
    return (1.0 - s) * s


def relu(x):
    return F.relu(_arr(x))


def relu_grad(x):
    """1 where ``x >= 0`` else 0, in ``x``'s dtype (the book's convention at 0)."""
    x = _arr(x)
    return namespace(x).astype(x >= 0, x.dtype)


def softmax(x):
    """Softmax over the last axis of (K,) or (N, K) scores; the row max is subtracted first."""
    return F.softmax(_arr(x))


def mean_squared_error(y, t):
    """0.5 * sum((y - t)**2) over all elements (the book does not average over the batch)."""
    y, t = _pair(y, t)
    d = y - t
    return float(namespace(y).sum(d * d)) * 0.5


# The book's current name for the same loss (its first printings said mean_squared_error).
sum_squared_error = mean_squared_error


def cross_entropy_error(y, t):
    """-sum(t * log(y + 1e-7)) / N for probabilities ``y`` (K,) or (N, K) and labels ``t``
    (one-hot, or class indices), as a Python float."""
    y, t = _pair(y, t)
    return float(F.cross_entropy_error(y, t))


def softmax_loss(X, t):
    """cross_entropy_error(softmax(X), t)."""
    return cross_entropy_error(softmax(X), t)
