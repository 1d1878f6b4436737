"""CS231n's ``cs231n/data_utils.py``: CIFAR-10 from the course's ``cifar-10-batches-py`` folder.

The python version of CIFAR-10 is a set of pickles, and a pickle can run any code while it is
read.  So the batches are read by an unpickler that builds only what CIFAR-10's files hold --
dicts, lists, byte and text strings, numbers, and NumPy arrays with their dtypes -- and refuses
anything else (a function to call, a class to build) with a :class:`~dualnet.errors.DataError`
naming the file, before any of it runs.  (dualnet's own loader,
:func:`dualnet.data.load_cifar10`, reads the binary version and never unpickles.)
"""
from __future__ import annotations

import codecs
import os
import pickle

import numpy as np

from ..errors import DataError

__all__ = ["load_CIFAR_batch", "load_CIFAR10"]

_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_PIXELS = 3 * 32 * 32


def _allowed_globals():
    """The callables NumPy's pickles of arrays name, and nothing else.

    ``_reconstruct`` (and protocol 5's ``_frombuffer``) are taken from an array's own pickling
    recipe, so they are whichever module this NumPy keeps them in; the names they are written
    under are NumPy 1's (the course's files) and NumPy 2's.  ``_codecs.encode`` turns text back into bytes in protocol-2 pickles written
    by Python 3.
    """
    reconstruct = np.zeros(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]   # protocol 5 pickles arrays through it
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _Refused(Exception):
    """What a batch asked for that a CIFAR-10 batch never holds."""


class _BatchUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and NumPy arrays; refuses every other global."""

    _allowed = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"persistent object {pid!r}")


def _read_pickle(path):
    try:
        with open(path, "rb") as f:
            # latin1: the course's batches were pickled by Python 2, whose str holds raw bytes
            return _BatchUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; load_CIFAR10 reads data_batch_1..5 and test_batch "
                        f"of the python version of CIFAR-10: download {_SOURCE} and unpack it, "
                        f"then pass the cifar-10-batches-py folder") from None
    except _Refused as e:
        raise DataError(f"{path} is not a CIFAR-10 batch: it asks the unpickler for {e}, which "
                        f"CIFAR-10's files never hold, so it was refused and none of it ran "
                        f"(only dicts, lists, strings and NumPy arrays are read). Replace the "
                        f"file with one from {_SOURCE}") from None
    except Exception as e:   # a truncated or garbled pickle: any error of the unpickler
        raise DataError(f"{path} cannot be read as a pickled CIFAR-10 batch ({type(e).__name__}: "
                        f"{e}); the file is damaged or not a batch: replace it with one from "
                        f"{_SOURCE}") from None


def _field(batch, key):
    """``batch[key]`` under a text key or the same key as bytes (Python 3's pickles)."""
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    return None


def load_CIFAR_batch(filename):
    """One batch: images ``X`` (N, 32, 32, 3) float64 in 0..255 and labels ``Y`` (N,) int64."""
    raw = _read_pickle(filename)
    data = _field(raw, "data") if isinstance(raw, dict) else None
    labels = _field(raw, "labels") if isinstance(raw, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _PIXELS):
        got = f"data of shape {data.shape}, dtype {data.dtype}" if isinstance(data, np.ndarray) \
            else f"a {type(raw).__name__}" if not isinstance(raw, dict) else "no uint8 'data' array"
        raise DataError(f"{filename}: a CIFAR-10 batch is a dict with 'data', uint8 (N, {_PIXELS}), "
                        f"and 'labels', but this file holds {got}; replace it with one from {_SOURCE}")
    try:
        Y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        Y = None
    if Y is None or Y.shape != (data.shape[0],) or (Y.size and (Y.min() < 0 or Y.max() > 9)):
        raise DataError(f"{filename}: 'labels' must be {data.shape[0]} class numbers 0..9, one per "
                        f"image, but the file's are {type(labels).__name__} "
                        f"{np.shape(labels) if Y is not None else ''}; replace it with one from {_SOURCE}")
    # rows hold the red plane, then green, then blue (32 x 32 each): to (N, H, W, C)
    X = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float64)
    return X, Y


def load_CIFAR10(ROOT):
    """All of CIFAR-10 from ``ROOT`` (the ``cifar-10-batches-py`` folder), as host NumPy:

    ``Xtr`` (50000, 32, 32, 3) float64, ``Ytr`` (50000,) int64 from ``data_batch_1`` .. ``_5``;
    ``Xte``, ``Yte`` from ``test_batch`` (10000).  The counts are whatever the files hold.
    """
    if not os.path.isdir(ROOT):
        raise DataError(f"{ROOT} is not a folder; pass the cifar-10-batches-py folder that "
                        f"unpacking {_SOURCE} makes")
    parts = [load_CIFAR_batch(os.path.join(ROOT, f"data_batch_{b}")) for b in range(1, 6)]
    Xtr = np.concatenate([p[0] for p in parts])
    Ytr = np.concatenate([p[1] for p in parts])
    Xte, Yte = load_CIFAR_batch(os.path.join(ROOT, "test_batch"))
    return Xtr, Ytr, Xte, Yte
