"""What the book's scripts cannot say themselves: device, dtype, seed and data, from the environment.

The book's scripts take no device argument, so :mod:`dualnet.book` reads it from the
environment each time a network, a layer or a data set is made (not at import, so a
script or a test may set it first):

``DUALNET_DEVICE``   ``cpu`` (default), ``cuda``, ``cuda:N``, ``auto``, ``sim``, ``sim:N``
``DUALNET_DTYPE``    ``float64`` (default: the book's NumPy arithmetic, so its gradient checks
                     print the book's tiny differences) or ``float32`` (faster, half the memory)
``DUALNET_SEED``     base seed of the initial weights (default 0); each network made in a
                     process gets the next seed, so two networks differ as they do in the book
``DUALNET_DATA_DIR`` folder holding the four IDX ``.gz`` files, searched before dualnet's usual places
``DUALNET_DATASET``  ``mnist`` (default) or ``fashion-mnist``
"""
from __future__ import annotations

import itertools
import os

from ..backend import get_device, namespace, tune_allocator
from ..errors import ConfigError, DataError, DeviceError

__all__ = ["device", "dtype", "next_seed", "host", "dataset_name", "data_dir", "is_host_data",
           "weight_init", "model_kwargs", "ENV_DEVICE", "ENV_DTYPE", "ENV_SEED", "ENV_DATA_DIR",
           "ENV_DATASET"]

ENV_DEVICE, ENV_DTYPE, ENV_SEED = "DUALNET_DEVICE", "DUALNET_DTYPE", "DUALNET_SEED"
ENV_DATA_DIR, ENV_DATASET = "DUALNET_DATA_DIR", "DUALNET_DATASET"
DATASETS = ("mnist", "fashion-mnist")

_devices = {}                 # one Device per spec string: "auto" probes CUDA once per process
_counter = itertools.count()  # networks made so far in this process


def device():
    """The :class:`~dualnet.backend.Device` named by ``DUALNET_DEVICE`` (default ``cpu``)."""
    spec = os.environ.get(ENV_DEVICE, "").strip() or "cpu"
    if spec not in _devices:
        tune_allocator()  # a book script is a program of its own: tune its allocator once
        try:
            _devices[spec] = get_device(spec)
        except DeviceError as e:
            raise DeviceError(f"{ENV_DEVICE}={spec!r} cannot be used: {str(e).rstrip('.')}. Set "
                              f"{ENV_DEVICE} to cpu, "
                              f"auto, cuda, cuda:N, sim or sim:N (unset means cpu).",
                              param=ENV_DEVICE) from None
    return _devices[spec]


def host():
    """The host device: where the book's NumPy arrays live (loaded data, shuffles, curves)."""
    if "cpu" not in _devices:   # made once: a CPU device reads /proc/cpuinfo for its name
        _devices["cpu"] = get_device("cpu")
    return _devices["cpu"]


def is_host_data(a):
    """True for host NumPy arrays and for things that are no array at all (lists, numbers)."""
    try:
        namespace(a)
    except TypeError:
        return True
    return host().owns(a)


def dtype():
    """``DUALNET_DTYPE``: ``"float64"`` (default) or ``"float32"``."""
    d = os.environ.get(ENV_DTYPE, "").strip() or "float64"
    if d not in ("float32", "float64"):
        raise ConfigError(f"{ENV_DTYPE}={d!r} is not a dtype dualnet trains in; set it to float64 "
                          f"(the book's, the default) or float32", param=ENV_DTYPE)
    return d


def next_seed():
    """The seed of the next network: ``DUALNET_SEED`` (default 0) plus how many came before."""
    raw = os.environ.get(ENV_SEED, "").strip() or "0"
    try:
        base = int(raw)
    except ValueError:
        base = None
    if base is None or base < 0:
        raise ConfigError(f"{ENV_SEED}={raw!r} is not an integer >= 0; set it to a whole number such "
                          f"as 0", param=ENV_SEED)
    return base + next(_counter)


def weight_init(std):
    """The book's ``weight_init_std`` in dualnet's spelling: ``'relu'``/``'he'`` -> ``"he"``,
    ``'sigmoid'``/``'xavier'`` -> ``"xavier"`` (any case), a number -> a float.

    One spelling per rule, so a saved network's configuration reads back as written.
    """
    if isinstance(std, str):
        key = std.strip().lower()
        if key in ("relu", "he"):
            return "he"
        if key in ("sigmoid", "xavier"):
            return "xavier"
        try:
            return float(key)
        except ValueError:
            raise ConfigError(f"weight_init_std={std!r} is not a rule the book knows; pass a number "
                              f"(e.g. 0.01), 'relu' / 'he' (sqrt(2/n)) or 'sigmoid' / 'xavier' "
                              f"(sqrt(1/n))", param="weight_init_std") from None
    return float(std)


def model_kwargs():
    """``device``, ``dtype`` and ``seed`` for a new dualnet model, from the environment."""
    return {"device": device(), "dtype": dtype(), "seed": next_seed()}


def dataset_name():
    """``DUALNET_DATASET``: ``"mnist"`` (default) or ``"fashion-mnist"``."""
    name = os.environ.get(ENV_DATASET, "").strip().lower() or "mnist"
    if name not in DATASETS:
        raise ConfigError(f"{ENV_DATASET}={name!r} is not a data set load_mnist can stand in with "
                          f"(the book's scripts expect 28x28 grey images in 10 classes); set it to "
                          f"{' or '.join(DATASETS)}", param=ENV_DATASET)
    return name


def data_dir():
    """``DUALNET_DATA_DIR`` or None; an unset or empty variable means dualnet's usual lookup."""
    d = os.environ.get(ENV_DATA_DIR, "").strip()
    if not d:
        return None
    if not os.path.isdir(d):
        raise DataError(f"{ENV_DATA_DIR}={d!r} is not a folder; point it at the folder that holds "
                        f"train-images-idx3-ubyte.gz and the other three IDX files, or unset it to "
                        f"use dualnet's cache (~/.cache/dualnet) and download")
    return d
