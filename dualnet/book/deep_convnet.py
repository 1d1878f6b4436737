"""The book's ``deep_convnet.py`` (chapter 8)."""
from __future__ import annotations

import math
import os
import pickle
import sys
from collections import OrderedDict

import numpy as np

from .. import models as M
from .. import layers as L   # dualnet's layers; the book's (same names) are exported below
from ._env import model_kwargs
from ._net import BookNetwork
from .common.layers import *   # noqa: F403 -- as the book's module does
from .common.layers import __all__ as _LAYERS
from .simple_convnet import conv_settings

# The book's module imports these itself, so its star import hands them on (it has no __all__).
__all__ = ["DeepConvNet", *_LAYERS, "np", "os", "sys", "OrderedDict", "pickle"]


class DeepConvNet(BookNetwork):
    """conv - ReLU - conv - ReLU - pool - conv - ReLU - conv - ReLU - pool - conv - ReLU - conv -
    ReLU - pool - Affine - ReLU - Dropout - Affine - Dropout - SoftmaxWithLoss, He initialization.

    Pools are 2x2 with stride 2.  Parameters ``W1``..``W6`` (the convolutions), ``W7`` (the
    hidden Affine), ``W8`` and their biases.  As in the book, ``loss(x, t)`` runs in training
    mode (dropout on); ``accuracy(x, t, batch_size=100)`` in inference mode.
    """

    _eval_batch = 100
    _loss_train = True
    _numgrad_train = True

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param_1={'filter_num': 16, 'filter_size': 3, 'pad': 1, 'stride': 1},
                 conv_param_2={'filter_num': 16, 'filter_size': 3, 'pad': 1, 'stride': 1},
                 conv_param_3={'filter_num': 32, 'filter_size': 3, 'pad': 1, 'stride': 1},
                 conv_param_4={'filter_num': 32, 'filter_size': 3, 'pad': 2, 'stride': 1},
                 conv_param_5={'filter_num': 64, 'filter_size': 3, 'pad': 1, 'stride': 1},
                 conv_param_6={'filter_num': 64, 'filter_size': 3, 'pad': 1, 'stride': 1},
                 hidden_size=50, output_size=10):
        shape = tuple(int(s) for s in input_dim)
        layers, c = [], shape[0]
        convs = (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5, conv_param_6)
        for k, cp in enumerate(convs, 1):
            fn, fs, pad, stride = conv_settings(cp, f"conv_param_{k}")
            layers += [L.Convolution(c, fn, fs, stride, pad), L.ReLU()]
            if k % 2 == 0:
                layers.append(L.MaxPooling(2, 2, 2))
            c = fn
        for layer in layers:  # the flattened size the hidden Affine takes
            shape = layer.output_shape(shape)
        layers += [L.Affine(math.prod(shape), hidden_size), L.ReLU(), L.Dropout(0.5),
                   L.Affine(hidden_size, output_size), L.Dropout(0.5)]
        super().__init__(M.Sequential(layers, tuple(input_dim), weight_init="he", **model_kwargs()))

    def loss(self, x, t, train_flg=True):
        """Mean loss of the batch in training mode (dropout on), as a Python float."""
        return super().loss(x, t, train_flg)
