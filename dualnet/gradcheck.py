"""Numerical gradients and CS231n's relative error, for checking backprop.

Central differences are taken on the device, one element at a time, so use
float64 and small inputs.  ``rel_error(a, b) = max(|a - b| / max(1e-8, |a| + |b|))``.

The relative error says nothing where the true gradient is ~0: a bias feeding a
batch norm has a gradient of exactly zero, and 1e-17 against 2e-11 is a "relative
error" near 1.  So a parameter is judged by both: it passes when its relative error
is below ``tol`` *or* its largest absolute error is below ``atol`` (far below any
gradient that matters: a wrong backward errs by the size of the gradient itself).
"""
from __future__ import annotations

import random
from typing import NamedTuple

from .backend import array_device, namespace, on_device_of

__all__ = ["numerical_gradient", "rel_error", "check_model", "GradError"]


class GradError(NamedTuple):
    """The errors of one parameter's backprop gradient against the numerical one."""

    rel: float   # CS231n's relative error, largest over the checked elements
    abs: float   # largest absolute difference

    def ok(self, tol=1e-6, atol=1e-8):
        return self.rel < tol or self.abs < atol


def rel_error(a, b):
    """CS231n's relative error of two arrays of one namespace (or two lists of floats),
    the largest over elements, as a float."""
    if isinstance(a, (list, tuple)):
        return max((abs(x - y) / max(1e-8, abs(x) + abs(y)) for x, y in zip(a, b)), default=0.0)
    xp = namespace(a, b)
    with on_device_of(a):
        s = xp.abs(a) + xp.abs(b)
        # maximum, not clip: array-api-compat's CuPy clip assigns through boolean masks (a host sync)
        floor = xp.full((), 1e-8, dtype=s.dtype, device=array_device(s))
        return float(xp.max(xp.abs(a - b) / xp.maximum(s, floor)))


def _flat_indices(shape, rng, max_checks):
    size = 1
    for s in shape:
        size *= s
    flat = list(range(size)) if max_checks is None or size <= max_checks else \
        sorted(rng.sample(range(size), max_checks))
    out = []
    for f in flat:
        idx = []
        for s in reversed(shape):
            idx.append(f % s)
            f //= s
        out.append(tuple(reversed(idx)))
    return out


def numerical_gradient(f, x, h=1e-5, indices=None):
    """Central-difference gradient of scalar ``f()`` w.r.t. array ``x`` (modified in place, restored).

    Parameters
    ----------
    f : callable () -> scalar (0-d array or float)
    x : array (any shape), float64 recommended
    indices : list of index tuples, optional
        Check only these elements (others are returned as 0); all when None.

    Returns
    -------
    grad : array like ``x``
    """
    xp = namespace(x)
    grad = xp.zeros_like(x)
    if indices is None:
        indices = _flat_indices(tuple(x.shape), None, None)
    for idx in indices:
        old = float(x[idx])
        x[idx] = old + h
        fp = float(f())
        x[idx] = old - h
        fm = float(f())
        x[idx] = old
        grad[idx] = (fp - fm) / (2 * h)
    return grad


def check_model(model, x, t, max_checks=20, seed=0, h=1e-5):
    """Compare backprop with numerical gradients for every parameter of ``model``.

    Dropout masks are re-drawn from the same seed before every evaluation so the
    function being differentiated stays fixed.  Checks ``max_checks`` random
    elements per parameter (all of a small one).

    Returns
    -------
    dict : parameter name -> :class:`GradError` (relative and absolute error)
    """
    rng = random.Random(seed)

    def f():
        model.set_seed(seed)
        return model.loss(x, t, train=True)

    f()
    grads = dict(model.backward())
    errors = {}
    for k, p in model.params.items():
        idx = _flat_indices(tuple(p.shape), rng, max_checks)
        num = numerical_gradient(f, p, h, idx)
        a, b = [float(grads[k][i]) for i in idx], [float(num[i]) for i in idx]
        errors[k] = GradError(rel_error(a, b), max((abs(x - y) for x, y in zip(a, b)), default=0.0))
    return errors
