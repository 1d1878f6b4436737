"""dualnet: from-scratch deep learning, one code path for NumPy (CPU) and CuPy (CUDA).

>>> import dualnet as dn
>>> dev = dn.get_device("auto")
>>> net = dn.SimpleConvNet(device=dev)

The core (no module of it imports an application): ``backend`` (devices), ``errors``,
``functions``, ``init``, ``params``, ``layers``, ``models``, ``optimizers``, ``training``, ``io``,
``checkpoint``, ``gradcheck``.  The applications built on it: ``data``, ``plots``,
``bench``, ``studies``, ``cli``.
"""
__version__ = "0.2.0"

from .backend import Device, get_device, cuda_status
from .errors import (DualnetError, ConfigError, ShapeError, DTypeError, DeviceError, DataError,
                     CheckpointError, TrainingDiverged)
from . import conv, functions, layers, init
from .layers import (Affine, ReLU, Sigmoid, Tanh, Flatten, Convolution, MaxPooling, AvgPooling,
                     BatchNormalization, Dropout, SoftmaxWithLoss)
from .layers import Resize
from .models import (Sequential, TwoLayerNet, MultiLayerNet, SimpleConvNet, DeepConvNet, build_model,
                     model_from_config, MODELS)
from .models import AlexNet
from .optimizers import SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, LRSchedule, make_optimizer
from .training import train_step, BatchSource, Trainer
from .gradcheck import numerical_gradient, rel_error, check_model
from .checkpoint import save_checkpoint, load_checkpoint

__all__ = ["Device", "get_device", "cuda_status",
           "DualnetError", "ConfigError", "ShapeError", "DTypeError", "DeviceError", "DataError",
           "CheckpointError", "TrainingDiverged", "functions", "layers", "init",
           "Affine", "ReLU", "Sigmoid", "Tanh", "Flatten", "Convolution", "MaxPooling", "AvgPooling",
           "BatchNormalization", "Dropout", "SoftmaxWithLoss", "Sequential", "TwoLayerNet",
           "MultiLayerNet", "SimpleConvNet", "DeepConvNet", "AlexNet", "Resize", "build_model", "model_from_config", "MODELS",
           "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "LRSchedule", "make_optimizer",
           "train_step", "BatchSource", "Trainer",
           "numerical_gradient", "rel_error", "check_model", "save_checkpoint", "load_checkpoint"]
