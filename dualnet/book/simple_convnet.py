"""The book's ``simple_convnet.py`` (chapter 7)."""
from __future__ import annotations

import os
import pickle
import sys
from collections import OrderedDict

import numpy as np

from .. import models as M
from ..errors import ConfigError
from ._env import model_kwargs, weight_init
from ._net import BookNetwork
from .common.layers import *   # noqa: F403 -- as the book's module does
from .common.layers import __all__ as _LAYERS
from .common.gradient import numerical_gradient

# The book's module imports these itself, so its star import hands them on (it has no __all__).
__all__ = ["SimpleConvNet", "conv_settings", *_LAYERS, "np", "os", "sys", "OrderedDict", "numerical_gradient", "pickle"]

_CONV_KEYS = ("filter_num", "filter_size", "pad", "stride")


def conv_settings(conv_param, what="conv_param"):
    """``(filter_num, filter_size, pad, stride)`` from the book's dict, naming a missing key."""
    missing = [k for k in _CONV_KEYS if k not in conv_param]
    if missing:
        raise ConfigError(f"{what} lacks {', '.join(map(repr, missing))}; give all four of "
                          f"{', '.join(map(repr, _CONV_KEYS))}, e.g. {{'filter_num': 30, "
                          f"'filter_size': 5, 'pad': 0, 'stride': 1}}", param=what)
    return tuple(int(conv_param[k]) for k in _CONV_KEYS)


class SimpleConvNet(BookNetwork):
    """conv - ReLU - pool(2x2, stride 2) - Affine - ReLU - Affine - SoftmaxWithLoss.

    Parameters
    ----------
    input_dim : (C, H, W) of one image, (1, 28, 28) for MNIST
    conv_param : dict with 'filter_num', 'filter_size', 'pad', 'stride'
    hidden_size, output_size : int
    weight_init_std : float or {'relu', 'he', 'sigmoid', 'xavier'}

    Parameters are ``W1`` (filter_num, C, filter_size, filter_size), ``b1``, ``W2``, ``b2``
    (the hidden Affine) and ``W3``, ``b3``.  ``accuracy(x, t, batch_size=100)`` evaluates in
    batches; images must keep their shape (``load_mnist(flatten=False)``).
    """

    _eval_batch = 100

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param={'filter_num': 30, 'filter_size': 5, 'pad': 0, 'stride': 1},
                 hidden_size=100, output_size=10, weight_init_std=0.01):
        fn, fs, pad, stride = conv_settings(conv_param)
        super().__init__(M.SimpleConvNet(tuple(input_dim), filter_num=fn, filter_size=fs, pad=pad,
                                         stride=stride, hidden_size=hidden_size,
                                         output_size=output_size, weight_init=weight_init(weight_init_std),
                                         **model_kwargs()))
