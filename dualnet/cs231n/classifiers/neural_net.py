"""CS231n's ``cs231n/classifiers/neural_net.py``: a two-layer ReLU net with a softmax loss.

affine - ReLU - affine - softmax, L2 regularization written the course's way,
``reg * (sum(W1**2) + sum(W2**2))`` (dualnet's weight decay lambda is ``2 * reg``).

Where the arrays live
---------------------
The parameters are computed with on the device of ``DUALNET_DEVICE``; the notebook sees host
NumPy arrays.  What crosses, and when:

- ``net.params[k]`` is a float64 host array that *stands for* the parameter: the notebook's
  gradient check changes it in place and expects the next ``loss`` to see the change.  So every
  parameter handed out through ``net.params`` is copied to the device again before each
  ``loss``/``predict``/``train`` call (4 small host-to-device copies; W1 of the CIFAR-10 net is
  3072 x 50 floats, 1.2 MB), and ``train`` copies the trained values back into the same host
  arrays once at its end.  On ``cpu`` in float64 the host arrays *are* the parameters: nothing
  is copied.
- ``loss(X, y)`` and ``predict(X)`` copy ``X`` (and ``y``) to the device and the scores, loss,
  gradients or labels back: one round trip per call, as a NumPy user expects.
- ``train`` copies ``X``, ``y``, ``X_val``, ``y_val`` to the device once, and the batch indices
  once per 1000 iterations (drawn with NumPy's global generator, as the course does, so
  ``np.random.seed`` repeats a run); the steps themselves never wait for the host.  Losses and
  accuracies stay on the device until the end (one copy of each history).  Only
  ``verbose=True`` reads the loss back every 100 iterations, to print it (one sync each).
"""
from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from ... import functions as F
from ...backend import namespace
from ...book._env import device as env_device, dtype as env_dtype
from ...book._net import ParamKeyError
from ...errors import ConfigError, ShapeError

__all__ = ["TwoLayerNet", "two_layer_scores", "two_layer_loss"]

_INDEX_BLOCK = 1000   # iterations of batch indices drawn and copied to the device at once


# ----------------------------------------------------------------------------- the maths
def two_layer_scores(x, W1, b1, W2, b2):
    """Class scores of the two-layer net.

    Parameters
    ----------
    x : array (N, D);  W1 : (D, H);  b1 : (H,);  W2 : (H, C);  b2 : (C,)

    Returns
    -------
    scores : (N, C), and the hidden activations h : (N, H) that the backward pass needs
    """
    h = F.relu(x @ W1 + b1)
    return h @ W2 + b2, h


def two_layer_loss(x, y, params, reg):
    """Mean softmax cross-entropy plus ``reg * (sum(W1**2) + sum(W2**2))``, and its gradients.

    Parameters
    ----------
    x : array (N, D);  y : int array (N,) of labels in 0..C-1
    params : dict with W1 (D, H), b1 (H,), W2 (H, C), b2 (C,), all on x's device
    reg : float

    Returns
    -------
    loss : 0-d array on the device (not read back: training keeps it there)
    grads : dict of arrays shaped like ``params``
    """
    xp = namespace(x)
    W1, W2 = params["W1"], params["W2"]
    scores, h = two_layer_scores(x, W1, params["b1"], W2, params["b2"])
    N = x.shape[0]
    t = F.one_hot(y, scores.shape[1], scores.dtype)
    # The log-softmax form is exact: no 1e-7 inside the log, so the loss is the course's to 1e-10.
    data_loss = -xp.sum(t * F.log_softmax(scores)) / N
    loss = data_loss + reg * (xp.sum(W1 * W1) + xp.sum(W2 * W2))
    dscores = (F.softmax(scores) - t) / N
    dh = (dscores @ xp.matrix_transpose(W2)) * xp.astype(h > 0, h.dtype)
    grads = {"W1": xp.matrix_transpose(x) @ dh + (2 * reg) * W1, "b1": xp.sum(dh, axis=0),
             "W2": xp.matrix_transpose(h) @ dscores + (2 * reg) * W2, "b2": xp.sum(dscores, axis=0)}
    return loss, grads


def _predict(x, params):
    """Labels (N,) on the device: the arg-max of the scores."""
    scores, _ = two_layer_scores(x, params["W1"], params["b1"], params["W2"], params["b2"])
    return namespace(scores).argmax(scores, axis=1)


# ----------------------------------------------------------------------------- host view
class _HostParams(MutableMapping):
    """``net.params``: float64 host arrays under the course's keys (a dict-like view).

    A host array handed out may be changed in place by the caller, so the net copies it to the
    device before it next computes (see the module docstring).  Assigning ``params[k] = a``
    replaces the parameter with a float64 copy of ``a`` of the same shape.
    """

    def __init__(self, net):
        self._net = net

    def __getitem__(self, key):
        arr = self._net._mirror[self._key(key)]
        self._net._handed.add(key)
        return arr

    def __setitem__(self, key, value):
        old = self._net._mirror[self._key(key)]
        new = np.array(value, dtype=np.float64)
        if new.shape != old.shape:
            raise ShapeError(f"params[{key!r}] has shape {old.shape} but the value has shape "
                             f"{new.shape}; assign an array of shape {old.shape}")
        self._net._mirror[key] = new
        self._net._handed.add(key)

    def __delitem__(self, key):
        raise ConfigError(f"params[{key!r}] cannot be deleted: the net needs all of "
                          f"{', '.join(self._net._mirror)}; assign a new array instead")

    def _key(self, key):
        if key not in self._net._mirror:
            raise ParamKeyError(f"TwoLayerNet has no parameter {key!r}; its parameters are "
                           f"{', '.join(self._net._mirror)}")
        return key

    def __iter__(self):
        return iter(self._net._mirror)

    def __len__(self):
        return len(self._net._mirror)

    def copy(self):
        """A plain dict of copies (a snapshot, e.g. of the best weights so far)."""
        return {k: self[k].copy() for k in self}

    def __repr__(self):
        return "{" + ", ".join(f"{k!r}: array{v.shape}" for k, v in self._net._mirror.items()) + "}"


# ----------------------------------------------------------------------------- the net
class TwoLayerNet:
    """CS231n's two-layer net: input_size - hidden_size (ReLU) - output_size, softmax loss.

    Parameters
    ----------
    input_size, hidden_size, output_size : int  (D, H, C)
    std : float
        Initial weights are ``std * np.random.randn(...)``, drawn from NumPy's global generator
        in the course's order (W1, then W2), so ``np.random.seed`` gives the course's net; the
        biases start at zero.

    ``params``: host float64 arrays ``W1`` (D, H), ``b1`` (H,), ``W2`` (H, C), ``b2`` (C,).
    """

    def __init__(self, input_size, hidden_size, output_size, std=1e-4):
        D, H, C = (int(v) for v in (input_size, hidden_size, output_size))
        if min(D, H, C) < 1:
            raise ConfigError(f"TwoLayerNet({input_size}, {hidden_size}, {output_size}) needs three "
                              f"positive sizes, e.g. TwoLayerNet(3072, 50, 10)")
        self._device = env_device()     # DUALNET_DEVICE; an unknown one is refused here
        self._dtype = env_dtype()
        self._mirror = {"W1": std * np.random.randn(D, H), "b1": np.zeros(H),
                      "W2": std * np.random.randn(H, C), "b2": np.zeros(C)}
        # On the host in float64 the device arrays are these very arrays (asarray copies nothing).
        self._shared = self._device.is_host and self._dtype == "float64"
        self._weights = {k: self._device.asarray(v, self._dtype) for k, v in self._mirror.items()}
        self._handed = set()
        self.params = _HostParams(self)

    @property
    def device(self):
        """The :class:`~dualnet.backend.Device` the net computes on."""
        return self._device

    # -- host <-> device ------------------------------------------------------------------
    def _push(self):
        """Copy the host arrays the caller may have changed to the device."""
        if self._shared:
            self._weights = self._mirror   # assignments through params replace host arrays
            return
        for k in self._handed:
            self._weights[k] = self._device.asarray(self._mirror[k], self._dtype)

    def _pull(self):
        """Write the device parameters into the host arrays, in place (held references see it)."""
        if self._shared:
            return
        for k, v in self._weights.items():
            self._mirror[k][...] = self._device.to_numpy(v)

    def _in(self, X, what):
        if getattr(X, "ndim", 2) != 2 or X.shape[1] != self._mirror["W1"].shape[0]:
            raise ShapeError(f"{what} has shape {tuple(np.shape(X))} but the net takes rows of "
                             f"{self._mirror['W1'].shape[0]} features, (N, "
                             f"{self._mirror['W1'].shape[0]}); reshape it, e.g. X.reshape(N, -1)")
        return self._device.asarray(X, self._dtype)

    def _labels(self, y):
        return self._device.xp.astype(self._device.asarray(np.asarray(y)), self._device.xp.int64)

    def _out(self, a):
        return np.asarray(self._device.to_numpy(a), dtype=np.float64)

    # -- the course's API -------------------------------------------------------------------
    def loss(self, X, y=None, reg=0.0):
        """Scores (N, C) when ``y`` is None; else ``(loss, grads)``: a float and a dict of float64
        host arrays under the keys of ``params``.  ``X`` (N, D), ``y`` (N,) labels."""
        with self._device.bind():
            self._push()
            x = self._in(X, "X")
            if y is None:
                scores, _ = two_layer_scores(x, *(self._weights[k] for k in ("W1", "b1", "W2", "b2")))
                return self._out(scores)
            loss, grads = two_layer_loss(x, self._labels(y), self._weights, float(reg))
            return float(self._device.to_numpy(loss)), {k: self._out(g) for k, g in grads.items()}

    def predict(self, X):
        """Predicted labels (N,) as a host int64 array."""
        with self._device.bind():
            self._push()
            return np.asarray(self._device.to_numpy(_predict(self._in(X, "X"), self._weights)),
                              dtype=np.int64)

    def train(self, X, y, X_val, y_val, learning_rate=1e-3, learning_rate_decay=0.95, reg=5e-6,
              num_iters=100, batch_size=200, verbose=False):
        """Minibatch SGD on the device; returns ``loss_history`` (per iteration),
        ``train_acc_history`` and ``val_acc_history`` (per epoch) as lists of floats.

        Batches of ``batch_size`` are drawn with replacement; once per epoch the accuracies
        (on the current batch and on the validation set) are recorded and the learning rate is
        multiplied by ``learning_rate_decay``.
        """
        num_iters, batch_size = int(num_iters), int(batch_size)
        if num_iters < 1 or batch_size < 1:
            raise ConfigError(f"train(num_iters={num_iters}, batch_size={batch_size}) needs both "
                              f"positive, e.g. num_iters=1000, batch_size=200")
        n = int(np.shape(X)[0])
        per_epoch = max(n / batch_size, 1)
        dev, xp, lr = self._device, self._device.xp, float(learning_rate)
        with dev.bind():
            self._push()
            x, t = self._in(X, "X"), self._labels(y)
            xv, tv = self._in(X_val, "X_val"), self._labels(y_val)
            losses, train_acc, val_acc = [], [], []
            for it in range(num_iters):
                if it % _INDEX_BLOCK == 0:   # one copy of indices per block of iterations
                    block = np.random.choice(n, (min(_INDEX_BLOCK, num_iters - it), batch_size))
                    idx = dev.asarray(block)
                batch = idx[it % _INDEX_BLOCK, :]
                xb, tb = xp.take(x, batch, axis=0), xp.take(t, batch, axis=0)
                loss, grads = two_layer_loss(xb, tb, self._weights, float(reg))
                for k, g in grads.items():
                    self._weights[k] -= lr * g          # in place: on cpu the host arrays too
                losses.append(loss)
                if verbose and it % 100 == 0:
                    print(f"iteration {it} / {num_iters}: loss {float(dev.to_numpy(loss)):f}")
                if it % per_epoch == 0:
                    train_acc.append(xp.mean(xp.astype(_predict(xb, self._weights) == tb, x.dtype)))
                    val_acc.append(xp.mean(xp.astype(_predict(xv, self._weights) == tv, x.dtype)))
                    lr *= float(learning_rate_decay)
            self._pull()
            history = {name: [float(v) for v in dev.to_numpy(xp.stack(vals))] if vals else []
                       for name, vals in (("loss_history", losses), ("train_acc_history", train_acc),
                                          ("val_acc_history", val_acc))}
        return history
