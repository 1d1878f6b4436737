"""Networks: a Sequential container, and the book's models built from it.

>>> dev = get_device("cpu")
>>> net = Sequential([Affine(4, 3), ReLU(), Affine(3, 2)], input_shape=(4,), device=dev, seed=0)
>>> loss = net.loss(x, t, train=True); net.backward(); opt.update(net.params, net.grads)
"""
from __future__ import annotations

from .backend import get_device, HostRNG
from .layers import (Affine, BatchNormalization, Convolution, Dropout, MaxPooling, ReLU, Sigmoid, SoftmaxWithLoss, Tanh, layer_from_spec)

__all__ = ["Sequential", "TwoLayerNet", "MultiLayerNet", "SimpleConvNet", "DeepConvNet",
           "MODELS", "build_model", "model_from_config"]

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


class Sequential:
    """Layers applied in order, followed by a loss layer.

    Parameters
    ----------
    layers : list of Layer
    input_shape : tuple
        Shape of one sample, e.g. (1, 28, 28) or (784,); checked through every layer
        at construction so a misfit names the layer and shapes at once.
    loss : Layer, default SoftmaxWithLoss()
    device : str or Device
    dtype : {"float32", "float64"}
    seed : int
        Seeds the host generator for initial weights (same net on every device) and the
        device generator for dropout masks.
    weight_init : float or {"he", "xavier"}
    weight_decay : float
        lambda of the penalty added to the loss and the gradients of weights (``W``, not biases
        or batchnorm parameters): L2 ``0.5 * lambda * sum(W**2)``, or L1 ``lambda * sum(|W|)``.
    regularization : {"l2", "l1"}
    name : str, optional
        A model name from :data:`MODELS`, recorded in checkpoints.
    model_kwargs : dict, optional
        The arguments that rebuilt the named model.

    Attributes
    ----------
    params, grads : dict[str, array]
        Keyed ``"{layer index}.{name}"``, e.g. ``"0.W"``; the arrays are the layers' own, so an
        optimizer that updates ``params`` in place updates the network.
    """

    def __init__(self, layers, input_shape, loss=None, device="cpu", dtype="float32", seed=0,
                 weight_init="he", weight_decay=0.0, regularization="l2", name=None, model_kwargs=None):
        self.layers = list(layers)
        self.loss_layer = loss if loss is not None else SoftmaxWithLoss()
        self.device = get_device(device)
        self.dtype = str(dtype)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.seed = int(seed)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.weight_init = weight_init
        self.weight_decay = float(weight_decay)
        if regularization not in ("l2", "l1"):
            raise ValueError(f"regularization must be 'l2' or 'l1', got {regularization!r}")
        self.regularization = regularization
        self.name = name
        self.model_kwargs = model_kwargs or {}

        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as e:
                raise ValueError(f"layer {i} ({layer!r}) does not fit its input: {e}") from None
        self.output_shape = shape

        host = HostRNG(self.seed)
        dt = self.device.dtype(self.dtype)
        self.params, self.grads, self.buffers = {}, {}, {}
        for i, layer in enumerate(self.layers):
            layer.params = {k: self.device.asarray(v, dt) for k, v in layer.init_params(host, weight_init).items()}
            layer.buffers = {k: self.device.asarray(v, dt) for k, v in layer.init_buffers(host).items()}
            layer.grads = {}
            self.params.update({f"{i}.{k}": v for k, v in layer.params.items()})
            self.buffers.update({f"{i}.{k}": v for k, v in layer.buffers.items()})
        self.set_seed(self.seed)
        # Backward stops at the first layer with parameters: its input gradient feeds nothing.
        self._first = next((i for i, l in enumerate(self.layers) if l.params), 0)
        if self.layers:
            self.layers[self._first].need_dx = False

    # -- configuration -------------------------------------------------------------
    @property
    def config(self):
        """JSON-ready description from which :func:`model_from_config` rebuilds the network."""
        return {"name": self.name, "model_kwargs": self.model_kwargs,
                "layers": [l.spec() for l in self.layers], "loss": self.loss_layer.spec(),
                "input_shape": list(self.input_shape), "dtype": self.dtype,
                "weight_init": self.weight_init, "weight_decay": self.weight_decay,
                "regularization": self.regularization, "seed": self.seed}

    def set_seed(self, seed):
        """Re-seed the device generator that draws dropout masks."""
        rng = self.device.rng(seed)
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.rng = rng

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential(\n  {inner}\n) on {self.device.spec}, {self.dtype}"

    def num_params(self):
        n = 0
        for p in self.params.values():
            k = 1
            for s in p.shape:
                k *= s
            n += k
        return n

    # -- compute -------------------------------------------------------------------
    def _check_input(self, x):
        self.device.check(x, "input")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input has shape {tuple(x.shape)} but the model expects (N, "
                             f"{', '.join(map(str, self.input_shape))}); reshape the data "
                             f"(e.g. flatten=False for conv nets) or build the model for this shape")
        want = self.device.dtype(self.dtype)
        if x.dtype != want:
            raise TypeError(f"input dtype is {x.dtype} but the model is {self.dtype}; "
                            f"convert with device.asarray(x, '{self.dtype}')")

    def predict(self, x, train=False):
        """Scores before softmax. x : (N, *input_shape) -> (N, K)."""
        self._check_input(x)
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def penalty(self):
        """The weight-decay term of the loss (0.0 when weight_decay is 0)."""
        if not self.weight_decay:
            return 0.0
        xp = self.device.xp
        total = 0.0
        for k, p in self._decayed():
            total = total + (0.5 * xp.sum(p * p) if self.regularization == "l2" else xp.sum(xp.abs(p)))
        return self.weight_decay * total

    def _decayed(self):
        return [(k, p) for k, p in self.params.items() if k.split(".", 1)[1] == "W"]

    def loss(self, x, t, train=False):
        """Mean loss (0-d device array) of a batch, plus the weight-decay penalty.

        Keeps what :meth:`backward` needs; ``self.scores`` holds the (N, K) scores.
        """
        self.scores = self.predict(x, train)
        return self.loss_layer.forward(self.scores, t) + self.penalty()

    def backward(self):
        """Backpropagate from the last :meth:`loss`; fills ``self.grads``."""
        dout = self.loss_layer.backward(1.0)
        for layer in reversed(self.layers[self._first:]):
            dout = layer.backward(dout)
        self.grads.clear()
        for i, layer in enumerate(self.layers):
            for k, g in layer.grads.items():
                self.grads[f"{i}.{k}"] = g
        if self.weight_decay:
            xp = self.device.xp
            for k, p in self._decayed():
                reg = p if self.regularization == "l2" else xp.sign(p)
                self.grads[k] = self.grads[k] + self.weight_decay * reg
        return self.grads

    def gradient(self, x, t, train=True):
        """Loss and gradients of one batch: returns ``(loss, grads)``."""
        loss = self.loss(x, t, train)
        return loss, self.backward()

    def accuracy(self, x, t, batch_size=1000):
        """Fraction of correct predictions, evaluated in batches so memory stays bounded.

        x : (N, ...) device array;  t : (N,) integer or (N, K) one-hot labels.  Returns a float.
        """
        return float(self.device.to_numpy(self.count_correct(x, t, batch_size))) / x.shape[0]

    def count_correct(self, x, t, batch_size=1000):
        """Number of correct predictions as a 0-d device array (no host sync)."""
        xp = self.device.xp
        correct = xp.zeros((), dtype=xp.int64, device=self.device.array_device)
        N = x.shape[0]
        for s in range(0, N, batch_size):
            e = min(s + batch_size, N)
            pred = xp.argmax(self.predict(x[s:e, ...]), axis=1)
            tb = t[s:e, ...]
            if tb.ndim == 2:
                tb = xp.argmax(tb, axis=1)
            correct = correct + xp.sum(xp.astype(pred == tb, xp.int64))
        return correct

    # -- state -------------------------------------------------------------------
    def state(self):
        """Parameters and buffers by name (device arrays)."""
        return {**{f"param/{k}": v for k, v in self.params.items()},
                **{f"buffer/{k}": v for k, v in self.buffers.items()}}

    def load_state(self, state):
        """Copy host arrays into the parameters and buffers, checking names and shapes."""
        mine = self.state()
        missing = sorted(set(mine) - set(state))
        extra = sorted(set(state) - set(mine))
        if missing or extra:
            raise ValueError(f"checkpoint does not match the model: missing {missing or 'nothing'}, "
                             f"unexpected {extra or 'nothing'}")
        for k, cur in mine.items():
            new = state[k]
            if tuple(new.shape) != tuple(cur.shape):
                raise ValueError(f"parameter {k.split('/', 1)[1]!r} has shape {tuple(new.shape)} in the "
                                 f"checkpoint but {tuple(cur.shape)} in the model; build the model with "
                                 f"the checkpoint's configuration")
        for k, cur in mine.items():
            cur[...] = self.device.asarray(state[k], cur.dtype)


# --------------------------------------------------------------------------- the book's models
def _net(name, layers, input_shape, kwargs, **common):
    return Sequential(layers, input_shape, name=name, model_kwargs=kwargs, **common)


def _flat(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def TwoLayerNet(input_size=784, hidden_size=50, output_size=10, weight_init=0.01, **common):
    """Affine - ReLU - Affine - softmax (CS231n's two-layer net; the book's ch. 5 version)."""
    kw = dict(input_size=input_size, hidden_size=hidden_size, output_size=output_size)
    input_shape = common.pop("input_shape", (input_size,))
    return _net("two_layer_net", [Affine(_flat(input_shape), hidden_size), ReLU(),
                                  Affine(hidden_size, output_size)],
                input_shape, kw, weight_init=weight_init, **common)


def MultiLayerNet(input_size=784, hidden_sizes=(100, 100, 100, 100), output_size=10,
                  activation="relu", weight_init=None, use_batchnorm=False, dropout=0.0, **common):
    """(Affine - [BatchNorm] - activation - [Dropout]) x len(hidden_sizes) - Affine - softmax.

    ``weight_init`` defaults to He for ReLU and Xavier for sigmoid/tanh.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if weight_init is None:
        weight_init = "he" if activation == "relu" else "xavier"
    kw = dict(input_size=input_size, hidden_sizes=list(hidden_sizes), output_size=output_size,
              activation=activation, use_batchnorm=bool(use_batchnorm), dropout=float(dropout))
    input_shape = common.pop("input_shape", (input_size,))
    layers, n = [], _flat(input_shape)
    for h in hidden_sizes:
        layers.append(Affine(n, h))
        if use_batchnorm:
            layers.append(BatchNormalization(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(Dropout(dropout))
        n = h
    layers.append(Affine(n, output_size))
    return _net("mlp", layers, input_shape, kw, weight_init=weight_init, **common)


def SimpleConvNet(input_dim=(1, 28, 28), filter_num=30, filter_size=5, pad=0, stride=1,
                  hidden_size=100, output_size=10, weight_init="he", use_batchnorm=False, **common):
    """conv(FN x FS x FS) - ReLU - maxpool 2x2/2 - Affine(hidden) - ReLU - Affine - softmax.

    The book initializes with std 0.01 (``weight_init=0.01``); He is the default here because
    it learns faster in the first epoch (Fashion-MNIST, 1 epoch: 0.83 with 0.01).
    """
    kw = dict(input_dim=list(input_dim), filter_num=filter_num, filter_size=filter_size, pad=pad,
              stride=stride, hidden_size=hidden_size, output_size=output_size,
              use_batchnorm=bool(use_batchnorm))
    C, H, W = input_dim
    conv = Convolution(C, filter_num, filter_size, stride, pad)
    pooled = MaxPooling(2, 2, 2).output_shape(conv.output_shape(tuple(input_dim)))
    layers = [conv] + ([BatchNormalization(filter_num)] if use_batchnorm else []) + [
        ReLU(), MaxPooling(2, 2, 2), Affine(_flat(pooled), hidden_size), ReLU(),
        Affine(hidden_size, output_size)]
    return _net("simple_convnet", layers, tuple(input_dim), kw, weight_init=weight_init, **common)


def DeepConvNet(input_dim=(1, 28, 28), output_size=10, hidden_size=50, dropout=0.5,
                weight_init="he", **common):
    """The book's deep net: conv3x3 16-16, pool, 32-32 (pad 2 on the 4th), pool, 64-64, pool,
    Affine(50) - ReLU - Dropout - Affine - Dropout - softmax; He init."""
    kw = dict(input_dim=list(input_dim), output_size=output_size, hidden_size=hidden_size,
              dropout=float(dropout))
    layers, shape, c = [], tuple(input_dim), input_dim[0]
    for fn, pad, pool in ((16, 1, False), (16, 1, True), (32, 1, False), (32, 2, True),
                          (64, 1, False), (64, 1, True)):
        conv = Convolution(c, fn, 3, 1, pad)
        shape = conv.output_shape(shape)
        layers += [conv, ReLU()]
        if pool:
            p = MaxPooling(2, 2, 2)
            shape = p.output_shape(shape)
            layers.append(p)
        c = fn
    layers += [Affine(_flat(shape), hidden_size), ReLU(), Dropout(dropout),
               Affine(hidden_size, output_size), Dropout(dropout)]
    return _net("deep_convnet", layers, tuple(input_dim), kw, weight_init=weight_init, **common)


MODELS = {"two_layer_net": TwoLayerNet, "mlp": MultiLayerNet, "simple_convnet": SimpleConvNet,
          "deep_convnet": DeepConvNet}

CONV_MODELS = ("simple_convnet", "deep_convnet")


def build_model(name, input_shape, num_classes, **kwargs):
    """Build model ``name`` for samples of ``input_shape`` and ``num_classes`` classes.

    Extra ``kwargs`` go to the model (e.g. ``hidden_sizes``) or to :class:`Sequential`
    (``device``, ``dtype``, ``seed``, ``weight_decay``, ...).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    input_shape = tuple(input_shape)
    if name in CONV_MODELS:
        if len(input_shape) != 3:
            raise ValueError(f"{name} needs image input (C, H, W) but the data has sample shape {input_shape}")
        return MODELS[name](input_dim=input_shape, output_size=num_classes, **kwargs)
    return MODELS[name](input_size=_flat(input_shape), output_size=num_classes,
                        input_shape=input_shape, **kwargs)


def model_from_config(config, device="cpu", dtype=None):
    """Rebuild a network (with fresh weights) from :attr:`Sequential.config`."""
    c = dict(config)
    return Sequential([layer_from_spec(s) for s in c["layers"]], tuple(c["input_shape"]),
                      loss=layer_from_spec(c["loss"]), device=device, dtype=dtype or c["dtype"],
                      seed=c["seed"], weight_init=c["weight_init"], weight_decay=c["weight_decay"],
                      regularization=c["regularization"], name=c.get("name"),
                      model_kwargs=c.get("model_kwargs"))
