"""The book's ``two_layer_net.py`` of chapter 4: Affine - Sigmoid - Affine - softmax.

Chapter 4 trains it with numerical gradients; ``predict`` returns probabilities (softmax
applied), as that chapter's version does.  Chapter 5's ReLU version is
:mod:`dualnet.book.two_layer_net`.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ... import functions as F
from ... import models as M
from ...layers import Affine, Sigmoid
from .._env import model_kwargs, weight_init
from .._net import BookNetwork
from ..common.functions import *   # noqa: F403 -- as the book's module does
from ..common.functions import __all__ as _FUNCTIONS
from ..common.gradient import numerical_gradient

# The book's module imports these itself, so its star import hands them on (it has no __all__).
__all__ = ["TwoLayerNet", *_FUNCTIONS, "numerical_gradient", "np", "os", "sys"]


class TwoLayerNet(BookNetwork):
    """Parameters ``W1``, ``b1``, ``W2``, ``b2`` drawn with std ``weight_init_std``."""

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        layers = [Affine(input_size, hidden_size), Sigmoid(), Affine(hidden_size, output_size)]
        super().__init__(M.Sequential(layers, (input_size,), weight_init=weight_init(weight_init_std),
                                      **model_kwargs()))

    def predict(self, x, train_flg=False):
        """Class probabilities, (N, output_size), on the device."""
        with self.device.bind():
            return F.softmax(super().predict(x, train_flg))
