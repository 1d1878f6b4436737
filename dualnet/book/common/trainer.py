"""The book's ``common/trainer.py``: mini-batch training with per-epoch accuracies."""
from __future__ import annotations

import inspect
import math
import os
import sys

import numpy as np

from ...errors import ConfigError, ShapeError
from ...seeds import book_seed as _book_seed
from .._env import host, is_host_data, next_seed
from .._net import BookNetwork
from .optimizer import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop

# The book's module imports these itself, so its star import hands them on (it has no __all__).
__all__ = ["Trainer", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "np", "os", "sys"]

# The book's keys; its misspelt 'rmsprpo' is accepted too.
OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "rmsprpo": RMSprop, "adam": Adam}


def _make_optimizer(name, param):
    if not isinstance(name, str):
        if hasattr(name, "update"):
            return name   # an optimizer object (an extension: the book passes names)
        raise ConfigError(f"optimizer={name!r} is neither a name nor an optimizer; pass one of "
                          f"'SGD', 'Momentum', 'Nesterov', 'AdaGrad', 'RMSprop', 'Adam'",
                          param="optimizer")
    cls = OPTIMIZERS.get(name.lower())
    if cls is None:
        raise ConfigError(f"optimizer={name!r} is not one of the book's optimizers; choose one of "
                          f"'SGD', 'Momentum', 'Nesterov', 'AdaGrad', 'RMSprop', 'Adam' (any case)",
                          param="optimizer")
    try:
        return cls(**dict(param))
    except TypeError:
        raise ConfigError(f"optimizer_param={dict(param)!r} does not fit {cls.__name__}, whose "
                          f"parameters are {inspect.signature(cls.__init__)}; e.g. "
                          f"optimizer_param={{'lr': 0.01}}", param="optimizer_param") from None


class Trainer:
    """Train ``network`` for ``epochs`` with mini-batches drawn at random (with replacement).

    Each step: ``grads = network.gradient(x, t)``, ``optimizer.update(network.params, grads)``,
    then the batch's loss after the update goes to ``train_loss_list``.  At the start of each
    epoch the accuracies on the training and test sets (their first
    ``evaluate_sample_num_per_epoch`` samples, or all) go to ``train_acc_list`` and
    ``test_acc_list``.  An epoch is ``max(N / mini_batch_size, 1)`` steps, as in the book, so a
    run of ``epochs`` epochs records ``epochs`` accuracies when the batch size divides N.

    For a network of :mod:`dualnet.book`, the data moves to the network's device once (when it
    fits in half the device's free memory, else batch by batch), batches are drawn there, and
    with ``verbose=False`` the losses are read back once per epoch instead of once per step.
    Any other object with the book's network methods trains on the arrays as given.

    Attributes
    ----------
    train_loss_list, train_acc_list, test_acc_list : list of float
    optimizer : the optimizer built from ``optimizer`` and ``optimizer_param``
    """

    def __init__(self, network, x_train, t_train, x_test, t_test,
                 epochs=20, mini_batch_size=100,
                 optimizer='SGD', optimizer_param={'lr': 0.01},
                 evaluate_sample_num_per_epoch=None, verbose=True):
        self.network = network
        self.verbose = verbose
        self.epochs = int(epochs)
        self.batch_size = int(mini_batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"mini_batch_size must be a positive integer, got {mini_batch_size!r}",
                              param="mini_batch_size")
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        if x_train.shape[0] != t_train.shape[0] or x_test.shape[0] != t_test.shape[0]:
            raise ShapeError(f"x_train has {x_train.shape[0]} samples and t_train {t_train.shape[0]}; "
                             f"x_test {x_test.shape[0]} and t_test {t_test.shape[0]}; pass one label "
                             f"per sample")
        if x_train.shape[0] == 0:
            raise ShapeError("the training set is empty; pass at least one sample")
        self.optimizer = _make_optimizer(optimizer, optimizer_param)

        self._device = network.device if isinstance(network, BookNetwork) else None
        self.x_train, self.t_train = self._place(x_train, t_train)
        self.x_test, self.t_test = self._place(x_test, t_test)
        self._on_device = self._device is not None and self._device.owns(self.x_train)
        self._rng = (self._device if self._on_device else host()).rng(_book_seed(next_seed(), "trainer"))

        self.train_size = x_train.shape[0]
        self.iter_per_epoch = max(self.train_size / self.batch_size, 1)
        self.max_iter = int(self.epochs * self.iter_per_epoch)
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list = []
        self.train_acc_list = []
        self.test_acc_list = []
        self._pending = []   # losses still on the device (verbose=False)

    def _place(self, x, t):
        """The data on the network's device when it fits in half its free memory, else as given."""
        if self._device is None or not (is_host_data(x) and is_host_data(t)):
            return x, t
        net = self.network
        itemsize = 8 if net.dtype == "float64" else 4
        nbytes = math.prod(x.shape) * itemsize + math.prod(t.shape) * 8
        if nbytes >= 0.5 * self._device.free_memory():
            return x, t
        return net._x(x, "x"), net._t(t, "t")

    def _batch(self):
        """A batch of ``batch_size`` samples drawn with replacement, where the data lives."""
        n, b = self.train_size, self.batch_size
        if self._on_device:
            xp = self._device.xp
            with self._device.bind():
                idx = _indices(xp, self._rng.uniform((b,), xp.float64), n)
                return xp.take(self.x_train, idx, axis=0), xp.take(self.t_train, idx, axis=0)
        idx = _indices(host().xp, self._rng.uniform((b,), host().xp.float64), n)
        return self.x_train[idx], self.t_train[idx]

    def _flush(self):
        """Read the losses kept on the device back to the host in one transfer."""
        if self._pending:
            dev = self._device
            with dev.bind():
                vals = dev.to_numpy(dev.xp.stack(self._pending)).tolist()
            self.train_loss_list.extend(vals)
            self._pending = []

    def train_step(self):
        x_batch, t_batch = self._batch()
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        if isinstance(self.network, BookNetwork) and not self.verbose:
            net = self.network
            self._pending.append(net._loss(x_batch, t_batch, net._loss_train))
        else:
            loss = self.network.loss(x_batch, t_batch)
            self.train_loss_list.append(loss)
            if self.verbose:
                print("train loss:" + str(loss))

        if self.current_iter % self.iter_per_epoch == 0:
            self._flush()
            self.current_epoch += 1
            xs, ts, xe, te = self.x_train, self.t_train, self.x_test, self.t_test
            k = self.evaluate_sample_num_per_epoch
            if k is not None:
                k = int(k)
                xs, ts, xe, te = xs[:k, ...], ts[:k, ...], xe[:k, ...], te[:k, ...]
            train_acc = self.network.accuracy(xs, ts)
            test_acc = self.network.accuracy(xe, te)
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            if self.verbose:
                print(f"=== epoch:{self.current_epoch}, train acc:{train_acc}, test acc:{test_acc} ===")
        self.current_iter += 1

    def train(self):
        """Run all ``epochs``, then print the accuracy on the whole test set (when verbose);
        it is kept in ``final_test_acc``."""
        for _ in range(self.max_iter):
            self.train_step()
        self._flush()
        self.final_test_acc = self.network.accuracy(self.x_test, self.t_test)
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print("test acc:" + str(self.final_test_acc))


def _indices(xp, u, n):
    """Indices floor(u * n) in 0..n-1 for u uniform in [0, 1).  ``% n`` maps the one value that
    rounding can reach, n, back into range.  (Not ``xp.clip``: array-api-compat's clip for CuPy
    assigns through boolean masks, and each such assignment reads the mask's size back to the
    host -- a device sync.)"""
    return xp.astype(xp.floor(u * n), xp.int64) % n
