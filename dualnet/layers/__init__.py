"""Layers: each forward sits next to its backward, and forward keeps exactly what backward needs.

A layer declares its parameters (:meth:`Layer.param_specs`: shape, how the initial value is
drawn from a seeded host generator, role) and is built once: a model builds all its layers
together (:func:`build_layers`: one device, one generator, one flat buffer whose views are the
layers' ``params``); a layer used alone builds itself on first use, from its own ``seed`` and
``device``.  It holds ``grads`` after ``backward``, and ``buffers`` (state saved in checkpoints
but not trained, such as batch norm's running statistics).  Each parameter's role (``weight``,
``bias``, ``scale``, ``shift``) is how weight decay picks the weights.  A layer works alone:

>>> fc = Affine(3, 2, device="cpu", seed=0)
>>> out = fc.forward(x, train=True); dx = fc.backward(dout); fc.grads["W"]

``spec()`` describes the layer so it can be rebuilt (:func:`layer_from_spec`).
Shape letters and gradient names are those of :mod:`dualnet.functions`.

The package by job: :mod:`.base` (the :class:`Layer` contract, the build phase, the checks of
sizes, seeds and dtypes), :mod:`.elementwise` (activations, dropout), :mod:`.dense` (flatten,
affine), :mod:`.spatial` (convolution, pooling, resize of (N, C, H, W) maps),
:mod:`.normalization` (batch norm) and :mod:`.losses`.  Every name is importable from here.
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import (Layer, _check_dtype, build_layers, check_seed, check_size, move_layers,
                   specs_only)
from .dense import Affine, Flatten
from .elementwise import Dropout, ReLU, Sigmoid, Tanh
from .losses import Loss, MeanSquaredError, SoftmaxWithLoss
from .normalization import BatchNormalization
from .spatial import AvgPooling, Convolution, MaxPooling, Resize

__all__ = ["Layer", "Affine", "ReLU", "Sigmoid", "Tanh", "Flatten", "Resize", "Convolution",
           "MaxPooling", "AvgPooling", "BatchNormalization", "Dropout", "Loss", "SoftmaxWithLoss", "MeanSquaredError",
           "LAYERS", "layer_from_spec"]

# Every layer a spec may name, by class name (what Layer.spec() writes as "type").
LAYERS = {c.__name__: c for c in (Affine, ReLU, Sigmoid, Tanh, Flatten, Convolution, MaxPooling,
                                   AvgPooling, BatchNormalization, Dropout, SoftmaxWithLoss,
                                   MeanSquaredError, Resize)}


def layer_from_spec(spec):
    """Rebuild a layer from :meth:`Layer.spec` output."""
    spec = dict(spec)
    name = spec.pop("type")
    if name not in LAYERS:
        raise ConfigError(f"unknown layer type {name!r}; known: {', '.join(sorted(LAYERS))}")
    return LAYERS[name](**spec)
