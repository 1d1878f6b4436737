"""CS231n's ``cs231n/gradient_check.py``: numerical gradients by central differences, on the host.

The notebook checks the net's backward pass with them: ``f`` reads ``x`` (one of
``net.params``), so each element of ``x`` is moved in place, ``f`` is called, and ``x`` is
restored.  Two calls of ``f`` per element: meant for small arrays.
"""
from __future__ import annotations

import random

import numpy as np

from ..errors import DTypeError

__all__ = ["eval_numerical_gradient", "eval_numerical_gradient_array", "grad_check_sparse"]


def _float_host(x, what="x"):
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        kind = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DTypeError(f"{what} is a {kind}, but a numerical gradient steps a float NumPy array "
                         f"in place (a step of 1e-5 is lost in integers); pass e.g. "
                         f"net.params['W1'] or np.asarray(x, dtype=np.float64)", param=what)
    return x


def _central(fn, x, ix, h):
    """(fn() at x[ix] + h  -  fn() at x[ix] - h) / 2h, with x[ix] restored after."""
    old = x[ix]
    x[ix] = old + h
    up = fn()
    x[ix] = old - h
    down = fn()
    x[ix] = old
    return (up - down) / (2 * h)


def eval_numerical_gradient(f, x, verbose=True, h=1e-5):
    """Gradient of the scalar ``f(x)`` with respect to the float array ``x`` (any shape).

    Parameters
    ----------
    f : callable, x -> float
    x : float NumPy array; changed during the call, restored after
    verbose : bool, print each element's index and derivative
    h : float, the step

    Returns
    -------
    grad : float64 array shaped like ``x``
    """
    x = _float_host(x)
    grad = np.zeros(x.shape)
    for ix in np.ndindex(*x.shape):
        grad[ix] = _central(lambda: float(f(x)), x, ix, h)
        if verbose:
            print(ix, grad[ix])
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Gradient with respect to ``x`` of ``sum(f(x) * df)``: backprop of the upstream ``df``
    through an array-valued ``f`` (a layer's forward), one element of ``x`` at a time."""
    x = _float_host(x)
    df = np.asarray(df)
    grad = np.zeros(x.shape)
    for ix in np.ndindex(*x.shape):
        grad[ix] = _central(lambda: np.sum(np.asarray(f(x), dtype=np.float64) * df), x, ix, h)
    return grad


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-5):
    """Compare ``analytic_grad`` with central differences at ``num_checks`` random elements
    (Python's ``random``), printing both and their relative error for each.

    Returns
    -------
    list of the relative errors, one per checked element
    """
    x = _float_host(x)
    analytic_grad = np.asarray(analytic_grad)
    errors = []
    for _ in range(int(num_checks)):
        ix = tuple(random.randrange(s) for s in x.shape)
        numeric = _central(lambda: float(f(x)), x, ix, h)
        analytic = float(analytic_grad[ix])
        rel = abs(numeric - analytic) / max(1e-12, abs(numeric) + abs(analytic))
        print(f"numerical: {numeric:f} analytic: {analytic:f}, relative error: {rel:e}")
        errors.append(rel)
    return errors
