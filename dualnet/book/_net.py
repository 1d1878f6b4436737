"""The book's networks as thin adapters over dualnet's :class:`~dualnet.models.Sequential`.

A book network (``TwoLayerNet``, ``MultiLayerNet``, ``SimpleConvNet``, ...) holds one dualnet
model and shows it under the book's names:

- ``params`` is a live view that names the model's own arrays ``W1``, ``b1``, ``gamma1``, ...:
  ``network.params["W1"]`` *is* the array of layer ``"0.W"``, so the book's in-place
  ``network.params[key] -= lr * grad[key]`` and its optimizers train the model.  Assigning a
  new array copies it into the parameter (the book's ``half_float_network.py`` does that).
- ``gradient(x, t)`` and ``numerical_gradient(x, t)`` return dicts under the same names.
- ``loss`` and ``accuracy`` return Python floats; ``predict`` returns an array on the device.
- Host (NumPy) inputs are moved to the network's device; arrays already there are used as
  they are; arrays of another device are refused, naming both.

Parameter names: the k-th layer with weights (Affine or Convolution, in order) owns ``Wk``
and ``bk``; the k-th batch normalization owns ``gammak`` and ``betak`` -- the book's numbering.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

from ..backend import array_device, namespace
from ..checkpoint import read_archive, read_checkpoint, save_checkpoint
from ..checks import check_labels
from ..errors import CheckpointError, ConfigError, DeviceError, ShapeError
from ..layers import Affine, BatchNormalization, Convolution
from ..models import count_correct
from . import _env
from .common.gradient import numerical_gradient as _numerical_gradient

__all__ = ["BookNetwork", "ParamView", "ParamKeyError", "npz_name", "to_device_input",
           "to_device_labels"]


class ParamKeyError(ConfigError, KeyError):
    """A parameter name the network does not have (a KeyError too, as a dict's would be)."""

    def __str__(self):  # KeyError would print the message with quotes around it
        return self.args[0]


def _describe(a):
    try:
        return f"{array_device(a)!r} ({namespace(a).__name__})"
    except TypeError:
        return type(a).__name__


def to_device_input(dev, a, dtype, what="x"):
    """Host data -> ``dev`` in float ``dtype``; an array of ``dev`` is cast if needed, never copied
    otherwise; an array of another device raises :class:`DeviceError`."""
    want = dev.dtype(dtype)
    if dev.owns(a):
        return a if a.dtype == want else dev.xp.astype(a, want)
    if _env.is_host_data(a):
        with dev.bind():
            return dev.asarray(a, dtype)
    raise DeviceError(f"{what} lives on {_describe(a)} but the network is on {dev.spec} "
                      f"({_env.ENV_DEVICE}); pass host NumPy arrays (dualnet.book moves them) or "
                      f"arrays of {dev.spec}")


def to_device_labels(dev, t, what="t"):
    """Labels on ``dev``: integer labels as int64, one-hot labels keep their float dtype."""
    if dev.owns(t):
        return t
    if _env.is_host_data(t):
        with dev.bind():
            t = dev.asarray(t)
            return t if "float" in str(t.dtype) else dev.xp.astype(t, dev.xp.int64)
    raise DeviceError(f"{what} lives on {_describe(t)} but the network is on {dev.spec} "
                      f"({_env.ENV_DEVICE}); pass host NumPy arrays (dualnet.book moves them) or "
                      f"arrays of {dev.spec}")


def npz_name(file_name):
    """Where ``save_params``/``load_params`` keep ``file_name``: ``.pkl`` becomes ``.npz``.

    dualnet never pickles, and a file named ``.pkl`` that holds no pickle would mislead,
    so the book's ``params.pkl`` is kept as ``params.npz`` (both calls map the name alike).
    """
    name = os.fspath(file_name)
    root, ext = os.path.splitext(name)
    return root + ".npz" if ext.lower() == ".pkl" else name


def book_keys(model):
    """{book name: (layer index, dualnet name)} in the book's order (weights, then batch norm)."""
    weights, norms = {}, {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (Affine, Convolution)):
            k = len(weights) // 2 + 1
            weights[f"W{k}"], weights[f"b{k}"] = (i, "W"), (i, "b")
        elif isinstance(layer, BatchNormalization):
            k = len(norms) // 2 + 1
            norms[f"gamma{k}"], norms[f"beta{k}"] = (i, "gamma"), (i, "beta")
    return {**weights, **norms}


class ParamView(MutableMapping):
    """``network.params``: the model's parameter arrays under the book's names (no copies)."""

    def __init__(self, net):
        self._net = net

    def _slot(self, key):
        try:
            i, name = self._net._keys[key]
        except KeyError:
            raise ParamKeyError(f"{type(self._net).__name__} has no parameter {key!r}; its "
                                f"parameters are {', '.join(self._net._keys)}") from None
        return self._net._model.layers[i], name

    def __getitem__(self, key):
        layer, name = self._slot(key)
        return layer.params[name]

    def __setitem__(self, key, value):
        cur = self[key]
        if value is cur:  # what ``params[key] -= v`` stores back after updating in place
            return
        net = self._net
        new = to_device_input(net.device, value, net.dtype, f"params[{key!r}]")
        if tuple(new.shape) != tuple(cur.shape):
            raise ShapeError(f"params[{key!r}] has shape {tuple(cur.shape)} but the new value has "
                             f"shape {tuple(new.shape)}; a parameter keeps its shape (assign an "
                             f"array of shape {tuple(cur.shape)}, or build the network with other "
                             f"sizes)")
        with net.device.bind():
            cur[...] = new  # copy into the model's own array: the layer sees the new values

    def __delitem__(self, key):
        raise ConfigError(f"params[{key!r}] cannot be deleted: the network's layers use it")

    def __iter__(self):
        return iter(self._net._keys)

    def __len__(self):
        return len(self._net._keys)

    def __repr__(self):
        return "{" + ", ".join(f"{k!r}: array{tuple(v.shape)}" for k, v in self.items()) + "}"


class BookNetwork:
    """Base of the book's networks: the book's methods over one dualnet model.

    Subclasses build the model (on the device, dtype and seed of :mod:`dualnet.book._env`)
    and call ``super().__init__(model)``.

    Attributes
    ----------
    params : ParamView
        The parameters under the book's names (the model's arrays, on ``device``).
    device : Device
    dtype : str
    model : Sequential
        The dualnet model underneath (for dualnet's own tools: checkpoints, gradcheck, bench).
    """

    _eval_batch = 1000       # samples per forward pass in accuracy()
    _loss_train = False      # the train flag of loss() (the book's DeepConvNet computes it in training mode)
    _numgrad_train = False   # the train flag of the loss numerical_gradient() differentiates

    def __init__(self, model):
        self._model = model
        self.device = model.device
        self.dtype = model.dtype
        self._keys = book_keys(model)
        self.params = ParamView(self)

    @property
    def model(self):
        return self._model

    def __repr__(self):
        return f"{type(self).__name__}(on {self.device.spec}, {self.dtype}, params {self.params!r})"

    # -- moving inputs -------------------------------------------------------------
    def _x(self, x, what="x"):
        return to_device_input(self.device, x, self.dtype, what)

    def _t(self, t, what="t"):
        if _env.is_host_data(t) and hasattr(t, "shape"):  # host labels: their range is free to check
            check_labels(t, self._model.output_shape[-1], what=what)
        return to_device_labels(self.device, t, what)

    def _names(self, by_model):
        """A dict keyed by dualnet names (``"0.W"``) re-keyed by the book's names."""
        return {k: by_model[f"{i}.{n}"] for k, (i, n) in self._keys.items()}

    # -- the book's methods ----------------------------------------------------------
    def predict(self, x, train_flg=False):
        """Scores before softmax, (N, output_size), an array on :attr:`device`."""
        with self.device.bind():
            return self._model.predict(self._x(x), train_flg)

    def _loss(self, x, t, train):
        """The loss as a 0-d device array (no host read)."""
        with self.device.bind():
            return self._model.loss(self._x(x), self._t(t), train)

    def loss(self, x, t, train_flg=None):
        """Mean cross-entropy of the batch plus the weight-decay term, as a Python float."""
        train = self._loss_train if train_flg is None else bool(train_flg)
        return float(self.device.to_numpy(self._loss(x, t, train)))

    def accuracy(self, x, t, batch_size=None):
        """Fraction of ``x`` classified as ``t`` (labels or one-hot), a Python float.

        Evaluated ``batch_size`` samples at a time in inference mode; host arrays are moved
        one batch at a time, and the count is read back once.
        """
        n = x.shape[0]
        if n == 0:
            raise ShapeError(f"accuracy of zero samples is undefined: x has shape {tuple(x.shape)}; "
                             f"pass at least one sample")
        # the checks of the network's loss: host labels cost nothing to range-check
        check_labels(t, self._model.output_shape[-1], n, "t", check_range=self.device.is_host or
                     not self.device.owns(t))
        b = int(batch_size or self._eval_batch)
        dev, correct = self.device, None
        with dev.bind():
            for s in range(0, n, b):
                e = min(s + b, n)
                c = count_correct(self._model.predict(self._x(x[s:e, ...])), self._t(t[s:e, ...]))
                correct = c if correct is None else correct + c
            return float(dev.to_numpy(correct)) / n

    def gradient(self, x, t):
        """Backpropagation: the gradients of :meth:`loss` (training mode) by parameter name.

        Returns a dict of arrays on :attr:`device`, keyed like :attr:`params`.
        """
        with self.device.bind():
            _, grads = self._model.gradient(self._x(x), self._t(t), train=True)
            return self._names(grads)

    def numerical_gradient(self, x, t):
        """Central differences of the loss for every parameter (slow: two losses per element)."""
        with self.device.bind():
            xd, td = self._x(x), self._t(t)
            f = lambda W: self._loss(xd, td, self._numgrad_train)  # noqa: E731 - the book's form
            return {k: _numerical_gradient(f, p) for k, p in self.params.items()}

    # -- files ---------------------------------------------------------------------------
    def save_params(self, file_name="params.pkl"):
        """Save the parameters (and batch-norm statistics) as a dualnet ``.npz``; never a pickle.

        ``params.pkl`` is written as ``params.npz`` (see :func:`npz_name`). Returns the path.
        """
        path = npz_name(file_name)
        save_checkpoint(path, self._model, meta={
            "book_class": type(self).__name__,
            "book_keys": {k: f"{i}.{n}" for k, (i, n) in self._keys.items()}})
        return path

    def load_params(self, file_name="params.pkl"):
        """Load what :meth:`save_params` wrote (any device to any device), or a plain ``.npz``
        of arrays named like :attr:`params` (``W1``, ``b1``, ...).  Pickles are refused."""
        path = npz_name(file_name)
        orig = os.fspath(file_name)
        if not os.path.exists(path):
            if orig != path and os.path.exists(orig):
                raise CheckpointError(
                    f"{orig} is a pickle file (as the book's code writes them) and dualnet never "
                    f"unpickles: a pickle can run any code. load_params({orig!r}) reads {path}: "
                    f"write it by running the training script again with dualnet.book, or, for "
                    f"weights you trust, convert them once: python -c \"import pickle, numpy as np; "
                    f"np.savez('{path}', **pickle.load(open('{orig}', 'rb')))\"")
            raise CheckpointError(f"{path} does not exist (load_params({orig!r}) reads {path}); "
                                  f"write it first with network.save_params({orig!r})")
        try:
            arrays = read_archive(path, "parameter file")
        except CheckpointError as e:
            raise CheckpointError(f"{e}; dualnet reads parameters without pickle: write them with "
                                  f"network.save_params({orig!r})") from None
        names = list(arrays)
        if "meta" in arrays:   # a dualnet checkpoint
            _, stored = read_checkpoint(path)
            state = {k: v for k, v in stored.items() if not k.startswith("opt/")}
            for k, (i, n) in self._keys.items():
                got = state.get(f"param/{i}.{n}")
                want = tuple(self.params[k].shape)
                if got is not None and tuple(got.shape) != want:
                    raise CheckpointError(f"{path}: parameter {k} has shape {tuple(got.shape)} in the "
                                          f"file but {want} in this {type(self).__name__}; build the "
                                          f"network with the sizes of the one that saved it")
            try:
                self._model.load_state(state)
            except ShapeError as e:
                raise CheckpointError(f"{path} was saved by a network of another architecture than "
                                      f"this {type(self).__name__}: {e}") from None
            return
        missing = [k for k in self._keys if k not in arrays]
        extra = [k for k in arrays if k not in self._keys]
        if missing or extra:
            raise CheckpointError(f"{path} holds {', '.join(names) or 'no arrays'} but this "
                                  f"{type(self).__name__} has parameters {', '.join(self._keys)} "
                                  f"(missing: {', '.join(missing) or 'none'}; unexpected: "
                                  f"{', '.join(extra) or 'none'}); load a file saved by the same "
                                  f"network")
        for k in self._keys:
            if tuple(arrays[k].shape) != tuple(self.params[k].shape):
                raise CheckpointError(f"{path}: {k} has shape {tuple(arrays[k].shape)} in the file "
                                      f"but {tuple(self.params[k].shape)} in this "
                                      f"{type(self).__name__}; build the network with the sizes of "
                                      f"the one that saved it")
            self.params[k] = arrays[k]
