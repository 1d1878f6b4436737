"""dualnet: from-scratch deep learning, one code path for NumPy (CPU) and CuPy (CUDA).

>>> import dualnet as dn
>>> dev = dn.get_device("auto")
>>> net = dn.SimpleConvNet(device=dev)
"""
__version__ = "0.1.0"

from .backend import Device, DeviceError, get_device, cuda_status
from . import functions, layers, init
from .layers import (Affine, ReLU, Sigmoid, Tanh, Flatten, Convolution, MaxPooling, AvgPooling,
                     BatchNormalization, Dropout, SoftmaxWithLoss)
from .models import (Sequential, TwoLayerNet, MultiLayerNet, SimpleConvNet, DeepConvNet, build_model,
                     model_from_config, MODELS)
from .optimizers import SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, LRSchedule, make_optimizer
from .gradcheck import numerical_gradient, rel_error, check_model
from .checkpoint import save_checkpoint, load_checkpoint

__all__ = ["Device", "DeviceError", "get_device", "cuda_status", "functions", "layers", "init",
           "Affine", "ReLU", "Sigmoid", "Tanh", "Flatten", "Convolution", "MaxPooling", "AvgPooling",
           "BatchNormalization", "Dropout", "SoftmaxWithLoss", "Sequential", "TwoLayerNet",
           "MultiLayerNet", "SimpleConvNet", "DeepConvNet", "build_model", "model_from_config", "MODELS",
           "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "LRSchedule", "make_optimizer",
           "numerical_gradient", "rel_error", "check_model", "save_checkpoint", "load_checkpoint"]
