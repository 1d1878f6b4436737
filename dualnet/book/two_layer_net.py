"""The book's ``two_layer_net.py`` of chapter 5: Affine - ReLU - Affine - SoftmaxWithLoss."""
from __future__ import annotations

from .. import models as M
from ._env import model_kwargs, weight_init
from ._net import BookNetwork

__all__ = ["TwoLayerNet"]


class TwoLayerNet(BookNetwork):
    """Two-layer net with backprop, parameters ``W1`` (input_size, hidden_size), ``b1``,
    ``W2`` (hidden_size, output_size), ``b2``, drawn with std ``weight_init_std``.

    Methods: ``predict(x)``, ``loss(x, t)``, ``accuracy(x, t)``, ``numerical_gradient(x, t)``,
    ``gradient(x, t)`` (see :class:`~dualnet.book._net.BookNetwork`).
    """

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        super().__init__(M.TwoLayerNet(input_size, hidden_size, output_size,
                                       weight_init=weight_init(weight_init_std), **model_kwargs()))
