"""Weight initializers: the standard deviation of the normal draw for a layer's weights.

``weight_init`` is one of
- a number: that fixed std (the book's ``weight_init_std``, e.g. 0.01);
- ``"xavier"`` (alias ``"sigmoid"``): std = sqrt(1 / fan_in), for sigmoid/tanh;
- ``"he"`` (alias ``"relu"``): std = sqrt(2 / fan_in), for ReLU.

fan_in is the number of inputs of one unit: in_features for Affine, C*FH*FW for a filter.
"""
from __future__ import annotations

import math

from .errors import ConfigError

__all__ = ["weight_std"]


def weight_std(weight_init, fan_in):
    """Standard deviation for ``weight_init`` and ``fan_in`` (see module docstring)."""
    if isinstance(weight_init, str):
        w = weight_init.lower()
        if w in ("xavier", "sigmoid"):
            return math.sqrt(1.0 / fan_in)
        if w in ("he", "relu"):
            return math.sqrt(2.0 / fan_in)
        try:
            return float(w)
        except ValueError:
            raise ConfigError(f"unknown weight_init {weight_init!r}: use a number, 'xavier' or 'he'",
                              param="weight_init") from None
    std = float(weight_init)
    if not std > 0:
        raise ConfigError(f"weight_init std must be positive, got {weight_init}", param="weight_init")
    return std
