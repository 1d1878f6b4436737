"""The book's ``common/multi_layer_net_extend.py``: MultiLayerNet with dropout and batch norm."""
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
__all__ = ["MultiLayerNetExtend", *_LAYERS, "np", "os", "sys", "OrderedDict", "numerical_gradient"]


class MultiLayerNetExtend(BookNetwork):
    """(Affine - [BatchNorm] - activation - [Dropout]) per hidden layer, then Affine - SoftmaxWithLoss.

    Arguments as :class:`~dualnet.book.common.multi_layer_net.MultiLayerNet`, plus
    ``use_dropout`` with ``dropout_ration`` (the book's spelling) and ``use_batchnorm``, which
    adds ``gamma1``, ``beta1``, ... per hidden layer.

    ``predict(x, train_flg=False)`` and ``loss(x, t, train_flg=False)`` take the book's flag:
    True for training behaviour (dropout masks, batch statistics).  ``gradient`` and
    ``numerical_gradient`` differentiate the training-mode loss.
    """

    _numgrad_train = True

    def __init__(self, input_size, hidden_size_list, output_size, activation='relu',
                 weight_init_std='relu', weight_decay_lambda=0, use_dropout=False,
                 dropout_ration=0.5, use_batchnorm=False):
        self.use_dropout, self.use_batchnorm = bool(use_dropout), bool(use_batchnorm)
        super().__init__(M.MultiLayerNet(input_size, list(hidden_size_list), output_size,
                                         activation=activation, weight_init=weight_init(weight_init_std),
                                         use_batchnorm=use_batchnorm,
                                         dropout=float(dropout_ration) if use_dropout else 0.0,
                                         weight_decay=weight_decay_lambda, **model_kwargs()))
