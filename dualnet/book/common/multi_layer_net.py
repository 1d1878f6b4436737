"""The book's ``common/multi_layer_net.py``: a fully connected net with weight decay."""
from __future__ import annotations

import os
import sys
from collections import OrderedDict

import numpy as np

from ... import models as M
from .._env import model_kwargs, weight_init
from .._net import BookNetwork
from .layers import *   # noqa: F403 -- as the book's module does
from .layers import __all__ as _LAYERS
from .gradient import numerical_gradient

# The book's module imports these itself, so its star import hands them on (it has no __all__).
__all__ = ["MultiLayerNet", *_LAYERS, "np", "os", "sys", "OrderedDict", "numerical_gradient"]


class MultiLayerNet(BookNetwork):
    """(Affine - activation) for each of ``hidden_size_list``, then Affine - SoftmaxWithLoss.

    Parameters
    ----------
    input_size : int (784 for MNIST)
    hidden_size_list : list of int, e.g. [100, 100, 100]
    output_size : int (10 for MNIST)
    activation : {'relu', 'sigmoid'}   (dualnet also accepts 'tanh')
    weight_init_std : float or {'relu', 'he', 'sigmoid', 'xavier'}
        A fixed std, or He's sqrt(2/n) ('relu', 'he') or Xavier's sqrt(1/n) ('sigmoid', 'xavier').
    weight_decay_lambda : float
        L2 decay: the loss gains 0.5 * lambda * sum(W**2) over every W, each dW gains lambda * W.

    Parameters are ``W1``, ``b1``, ..., ``W{n+1}``, ``b{n+1}`` for n hidden layers.
    """

    def __init__(self, input_size, hidden_size_list, output_size, activation='relu',
                 weight_init_std='relu', weight_decay_lambda=0):
        super().__init__(M.MultiLayerNet(input_size, list(hidden_size_list), output_size,
                                         activation=activation, weight_init=weight_init(weight_init_std),
                                         weight_decay=weight_decay_lambda, **model_kwargs()))
