"""The book's ``common/gradient.py``: numerical gradients by central differences."""
from __future__ import annotations

import numpy as np   # the book's module exports np through a star import

from ...backend import namespace
from ...errors import DTypeError
from ...gradcheck import numerical_gradient as _central_differences
from .._env import host

__all__ = ["numerical_gradient", "numerical_gradient_2d", "np"]


def numerical_gradient(f, x):
    """Gradient of ``f(x)`` (a number) with respect to the float array ``x``, any shape.

    Each element is moved by ``h = 1e-4`` up and down in place (and restored), as in the book:
    two calls of ``f`` per element, so it is slow and meant for checking backprop.  Works on
    host arrays and on device arrays (it computes where ``x`` lives).

    Parameters
    ----------
    f : callable, x -> float or 0-d array
    x : float array (modified during the call, restored after)

    Returns
    -------
    grad : array like ``x``
    """
    try:
        namespace(x)
    except TypeError:
        x = host().asarray(x)
    if "float" not in str(x.dtype):
        raise DTypeError(f"numerical_gradient needs a float array but x has dtype {x.dtype}: "
                         f"a step of 1e-4 would be rounded away; pass x as floats, e.g. "
                         f"np.array([3.0, 4.0])", param="x")
    return _central_differences(lambda: f(x), x, h=1e-4)


def numerical_gradient_2d(f, X):
    """Row-wise numerical gradients: for (N, D) ``X`` row i of the result is the gradient of
    ``f`` at ``X[i]`` (``f`` takes one row); for 1-D ``X``, :func:`numerical_gradient`.

    Parameters
    ----------
    f : callable, (D,) array -> number
    X : float array, (D,) or (N, D)

    Returns
    -------
    grad : array like ``X``
    """
    try:
        xp = namespace(X)
    except TypeError:
        X = host().asarray(X)
        xp = namespace(X)
    if X.ndim == 1:
        return numerical_gradient(f, X)
    # Each row is stepped in a copy of its own: f sees exactly the row it is given.
    return xp.stack([numerical_gradient(f, xp.asarray(X[i], copy=True)) for i in range(X.shape[0])])
