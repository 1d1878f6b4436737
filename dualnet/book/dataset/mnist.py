"""The book's ``dataset/mnist.py``: ``load_mnist`` over :func:`dualnet.data.load_dataset`."""
from __future__ import annotations

import gzip
import os
import pickle
import urllib.request

import numpy as np

from ...data import load_dataset
from ...errors import DataError
from .._env import ENV_DATA_DIR, data_dir, dataset_name

# The book's module-level names that describe the data (its download URL, its folder and its
# mnist.pkl cache are not dualnet's: files come from dualnet.data's lookup and are never pickled).
key_file = {"train_img": "train-images-idx3-ubyte.gz", "train_label": "train-labels-idx1-ubyte.gz",
            "test_img": "t10k-images-idx3-ubyte.gz", "test_label": "t10k-labels-idx1-ubyte.gz"}
train_num, test_num = 60000, 10000
img_dim, img_size = (1, 28, 28), 784

# The book's module imports these itself, so its star import hands them on (it has no __all__).
__all__ = ["load_mnist", "key_file", "train_num", "test_num", "img_dim", "img_size", "np", "os",
           "gzip", "pickle", "urllib"]


def load_mnist(normalize=True, flatten=True, one_hot_label=False):
    """MNIST as host NumPy arrays: ``(x_train, t_train), (x_test, t_test)``.

    Parameters
    ----------
    normalize : bool
        Pixels as float32 in [0, 1]; else the raw uint8 values 0..255.
    flatten : bool
        Images as (N, 784) rows; else (N, 1, 28, 28).
    one_hot_label : bool
        Labels as (N, 10) one-hot float32 rows; else int64 class indices (N,).

    The IDX files are looked up in ``DUALNET_DATA_DIR`` (and its ``mnist`` subfolder) first, then
    in dualnet's usual places (``~/.cache/dualnet/mnist``, ``/usr/share/datasets/mnist``), and
    downloaded when missing.  ``DUALNET_DATASET=fashion-mnist`` loads Fashion-MNIST instead (same
    shapes and classes count; Debian ships it: ``apt-get install dataset-fashion-mnist``).
    """
    try:
        ds = load_dataset(dataset_name(), data_dir=data_dir(), normalize=bool(normalize),
                          flatten=bool(flatten), one_hot=bool(one_hot_label))
    except DataError as e:
        if e.param != "data_dir":
            raise
        # The book's scripts take no arguments: the folder is the environment variable's.
        raise DataError(str(e).replace("data_dir", ENV_DATA_DIR), param=ENV_DATA_DIR) from None
    x_train, x_test = ds.x_train, ds.x_test
    if not normalize:   # the book keeps the file's bytes
        x_train, x_test = x_train.astype("uint8"), x_test.astype("uint8")
    return (x_train, ds.t_train), (x_test, ds.t_test)
