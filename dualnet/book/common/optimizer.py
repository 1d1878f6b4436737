"""The book's ``common/optimizer.py``: dualnet's optimizers with the book's defaults.

``SGD(lr=0.01)``, ``Momentum(lr=0.01, momentum=0.9)``, ``Nesterov(lr=0.01, momentum=0.9)``,
``AdaGrad(lr=0.01)``, ``RMSprop(lr=0.01, decay_rate=0.99)``, ``Adam(lr=0.001, beta1=0.9,
beta2=0.999)``; ``update(params, grads)`` changes the arrays of ``params`` in place (on their
device), so ``optimizer.update(network.params, grads)`` trains the network.

Parameters that are plain numbers (chapter 6 follows each optimizer's path on
f(x, y) = x**2/20 + y**2 with ``params = {'x': -7.0, 'y': 2.0}``) are updated by the same rule
and written back into the dict as new numbers.
"""
from __future__ import annotations

import numbers

import numpy as np   # the book's module exports np through a star import

from ... import optimizers as O
from ...errors import ConfigError
from .._env import host

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "np"]


class _BookUpdate:
    """``update(params, grads)`` for dicts of arrays or of plain numbers."""

    def update(self, params, grads):
        missing = [k for k in params if k not in grads]
        if missing:
            raise ConfigError(f"grads has no entry for {', '.join(map(repr, missing))} of params "
                              f"(params: {', '.join(map(str, params))}; grads: "
                              f"{', '.join(map(str, grads))}); pass the dict that gradient() returned "
                              f"for the same network")
        numbers_ = [k for k, v in params.items() if isinstance(v, numbers.Real)]
        if not numbers_:
            return super().update(params, grads)
        # Run the rule on 0-d host arrays (its state keeps its own arrays across calls) and
        # store the results back as numbers: the caller's dict, not a shared array, changes.
        hxp = host().xp
        p = {k: hxp.asarray(float(v), dtype=hxp.float64) if k in numbers_ else v
             for k, v in params.items()}
        g = {k: hxp.asarray(float(grads[k]), dtype=hxp.float64) if k in numbers_ else grads[k]
             for k in params}
        super().update(p, g)
        for k in numbers_:
            params[k] = float(p[k])


class SGD(_BookUpdate, O.SGD):
    """p -= lr * g"""

    def __init__(self, lr=0.01):
        super().__init__(lr)


class Momentum(_BookUpdate, O.Momentum):
    """v = momentum * v - lr * g;  p += v"""

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr, momentum)


class Nesterov(_BookUpdate, O.Nesterov):
    """The book's Nesterov form: v = m*v - lr*g;  p += m*m*v - (1 + m)*lr*g"""

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr, momentum)


class AdaGrad(_BookUpdate, O.AdaGrad):
    """h += g*g;  p -= lr * g / (sqrt(h) + 1e-7)"""

    def __init__(self, lr=0.01):
        super().__init__(lr)


class RMSprop(_BookUpdate, O.RMSprop):
    """h = decay_rate*h + (1 - decay_rate)*g*g;  p -= lr * g / (sqrt(h) + 1e-7)"""

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr, decay_rate)


class Adam(_BookUpdate, O.Adam):
    """Adam with the book's bias-corrected step size lr_t = lr*sqrt(1 - beta2^t)/(1 - beta1^t)."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr, beta1, beta2)
