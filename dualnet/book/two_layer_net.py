"""The book's ``two_layer_net.py`` of chapter 5: Affine - ReLU - Affine - SoftmaxWithLoss."""
from __future__ import annotations

import os
import sys
from collections import OrderedDict

import numpy as np

from .. import models as M
from ._env import model_kwargs, weight_init
from ._net import BookNetwork
from .common.layers import *   # noqa: F403 -- as the book's module does
from .common.layers import __all__ as _LAYERS
from .common.gradient import numerical_gradient

# The book's module imports these itself, so its star import hands them on (it has no __all__).
__all__ = ["TwoLayerNet", *_LAYERS, "np", "os", "sys", "OrderedDict", "numerical_gradient"]


class TwoLayerNet(BookNetwork):
    """Two-layer net with backprop, parameters ``W1`` (input_size, hidden_size), ``b1``,
    ``W2`` (hidden_size, output_size), ``b2``, drawn with std ``weight_init_std``.

    Methods: ``predict(x)``, ``loss(x, t)``, ``accuracy(x, t)``, ``numerical_gradient(x, t)``,
    ``gradient(x, t)`` (see :class:`~dualnet.book._net.BookNetwork`).
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        super().__init__(M.TwoLayerNet(input_size, hidden_size, output_size,
                                       weight_init=weight_init(weight_init_std), **model_kwargs()))
