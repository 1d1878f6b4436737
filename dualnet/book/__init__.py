"""The book's own API -- *Deep Learning from Scratch* (ゼロから作るDeep Learning), chapters 4-8 --
on dualnet, on any device.

The book's training and experiment scripts run with only their import lines changed::

    from dataset.mnist import load_mnist      ->  from dualnet.book.dataset.mnist import load_mnist
    from common.trainer import Trainer        ->  from dualnet.book.common.trainer import Trainer
    from simple_convnet import SimpleConvNet  ->  from dualnet.book.simple_convnet import SimpleConvNet

and likewise ``common.layers``, ``common.functions``, ``common.gradient``, ``common.optimizer``,
``common.util``, ``common.multi_layer_net``, ``common.multi_layer_net_extend``,
``two_layer_net`` (chapter 5's; chapter 4's sigmoid version is ``dualnet.book.ch04.two_layer_net``)
and ``deep_convnet``.  Same class and function names, arguments, defaults, parameter keys and
return values; the classes are thin adapters over dualnet's layers, models and optimizers.

The device comes from the environment (the scripts have no device argument), read when a
network, layer or data set is made: ``DUALNET_DEVICE=cuda python train_convnet.py``.  See
:mod:`dualnet.book._env` for ``DUALNET_DEVICE``, ``DUALNET_DTYPE``, ``DUALNET_SEED``,
``DUALNET_DATA_DIR`` and ``DUALNET_DATASET``.  Host (NumPy) arrays passed in are moved to the
device; numbers the book prints (losses, accuracies) come back as Python floats.
"""
from ._env import device, dtype

__all__ = ["device", "dtype"]
