"""Parameters: what a layer declares, and the one flat buffer a model keeps them in.

A layer declares each parameter as a :class:`ParamSpec`: its shape, how its initial value is
drawn on the host (from a seeded :class:`dualnet.backend.HostRNG`, so one seed gives the same
values on every device) and its role (``weight``, ``bias``, ``scale``, ``shift``; weight decay
acts on weights only).  Building draws every parameter once and :func:`place` copies them into
ONE flat buffer on the device, in one transfer; the layers' ``params`` are views of it.

The contract the views carry: writing the flat buffer shows through every layer's arrays and
back (they share memory), so an optimizer updates all parameters of a model with the handful of
array operations of its rule, not that handful per parameter -- on a GPU each array operation
is a kernel launch, and launches are what a small step costs.  Nothing re-binds a layer's
arrays: values are written into them in place.  A :class:`FlatDict` is how a model hands its
parameters (or gradients) out: the views by name, plus the buffer they view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .backend import namespace
from .errors import ConfigError, ShapeError
from .init import weight_std

__all__ = ["ParamSpec", "FlatDict", "place", "split", "concat"]

INITS = ("normal", "zeros", "ones")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a layer declares.

    Attributes
    ----------
    shape : tuple of int
    init : {"normal", "zeros", "ones"}
        ``"normal"``: a normal draw whose std follows the layer's ``weight_init`` rule and
        ``fan_in`` (see :mod:`dualnet.init`); the others draw nothing.
    role : {"weight", "bias", "scale", "shift"}
    fan_in : int
        Inputs of one unit (in_features for Affine, C*FH*FW for a filter); used by "normal".
    """

    shape: tuple
    init: str
    role: str
    fan_in: int = 0

    def __post_init__(self):
        if self.init not in INITS:
            raise ConfigError(f"unknown parameter init {self.init!r}; choose one of {', '.join(INITS)}")

    def draw(self, rng, weight_init):
        """The initial value as a host array (float64), drawn from ``rng`` (a HostRNG)."""
        if self.init == "normal":
            return rng.normal(self.shape, weight_std(weight_init, self.fan_in))
        return rng.zeros(self.shape) if self.init == "zeros" else rng.ones(self.shape)


class FlatDict(dict):
    """Arrays by name that are views, in order, of the 1-D buffer :attr:`flat` (None when
    they are not, e.g. after a layer's array was replaced): a model's parameters or gradients.

    An optimizer given one updates :attr:`flat` in one go.  Assigning a key copies the value
    into that array in place (the layer keeps its array, the buffer stays whole), so the
    book's ``params[key] -= lr * grad`` and ``params[key] = new_values`` both work.
    """

    def __init__(self, items=(), flat=None):
        super().__init__(items)
        self.flat = flat

    def __setitem__(self, key, value):
        if key not in self:
            raise KeyError(f"{key!r} is not a parameter of this network; it has {', '.join(self)}")
        cur = self[key]
        if value is cur:  # what ``params[key] -= v`` stores back after updating in place
            return
        if tuple(value.shape) != tuple(cur.shape):
            raise ShapeError(f"parameter {key!r} has shape {tuple(cur.shape)}; cannot write an array "
                             f"of shape {tuple(value.shape)} into it")
        cur[...] = value


def concat(arrays):
    """The arrays flattened into one new 1-D array (one operation)."""
    xp = namespace(*arrays)
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])


def split(flat, shapes):
    """Views of ``flat``, one per shape of ``shapes`` in order (the inverse of :func:`concat`)."""
    xp = namespace(flat)
    out, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(xp.reshape(flat[offset:offset + n], tuple(shape)))
        offset += n
    return out


def place(device, dtype, groups):
    """Copy host arrays into ONE new flat buffer on ``device`` (one transfer).

    Parameters
    ----------
    device : Device
    dtype : {"float32", "float64"}
    groups : list of dict name -> host array (one dict per layer)

    Returns
    -------
    flat : 1-D device array, or None when there is no array at all
    views : list of dict name -> view of ``flat`` (one per group, same names and shapes)
    """
    host = [a for g in groups for a in g.values()]
    if not host:
        return None, [{} for _ in groups]
    joined = concat(host)  # on the host: one transfer below, not one per array
    with device.bind():
        flat = device.asarray(joined, device.dtype(dtype))
        views = iter(split(flat, [tuple(a.shape) for a in host]))
    return flat, [{k: next(views) for k in g} for g in groups]
