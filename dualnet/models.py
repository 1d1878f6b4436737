"""Networks: a Sequential container, and the book's models built on it.

>>> net = Sequential([Affine(4, 3), ReLU(), Affine(3, 2)], input_shape=(4,), device="cpu", seed=0)
>>> loss = net.loss(x, t, train=True); net.backward(); opt.update(net.params, net.grads)
"""
from __future__ import annotations

import math

from . import conv, microbatch
from .backend import HostRNG, get_device, namespace, on_device_of
from .checks import check_batch, check_labels
from .errors import ConfigError, DTypeError, SettingError, ShapeError
from .seeds import layer_seed
from .layers import (Affine, BatchNormalization, Convolution, Dropout, Flatten, MaxPooling, ReLU,
                     Resize, Sigmoid, SoftmaxWithLoss, Tanh, _check_dtype, build_layers, check_seed,
                     check_size, layer_from_spec, move_layers, specs_only)
from .params import FlatDict, concat, place, split

__all__ = ["Sequential", "TwoLayerNet", "MultiLayerNet", "SimpleConvNet", "DeepConvNet",
           "AlexNet", "MODELS", "build_model", "model_from_config", "count_correct"]

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}

# The run settings (dualnet.runconfig) a named model may take: the constructor argument each one
# sets, and what a model built without that argument has.  Each model lists those it takes in
# ``run_options``; :meth:`Sequential.run_kwargs` turns a run's settings into its constructor's.
RUN_OPTIONS = {"dropout": ("dropout", 0.0), "batchnorm": ("use_batchnorm", False),
               "conv": ("conv_method", None), "image_size": ("resize", None)}


def count_correct(scores, t):
    """Number of rows of ``scores`` (N, K) whose arg-max is the label, as a 0-d integer array.

    t : (N,) integer labels or (N, K) one-hot.  No host sync: the count stays on the device.
    """
    xp = namespace(scores)
    with on_device_of(scores):
        if t.ndim == 2:
            t = xp.argmax(t, axis=1)
        return xp.count_nonzero(xp.argmax(scores, axis=1) == t)


class Sequential:
    """Layers applied in order, followed by a loss.

    Sequential composes and builds: it resolves its device once, draws every layer's declared
    parameters once from one seeded host generator (so one seed gives the same network on every
    device) into ONE flat parameter buffer on the device whose views are the layers' ``params``,
    and after each :meth:`backward` gathers the layers' gradients into ONE flat gradient buffer
    whose views become the layers' ``grads``.  :attr:`params` and :attr:`grads` name them
    ``"{layer index}.{name}"`` (e.g. ``"0.W"``) and carry the flat buffers, which the optimizers
    update in one go (:class:`dualnet.params.FlatDict`).

    Parameters
    ----------
    layers : list of Layer
    input_shape : tuple
        Shape of one sample, e.g. (1, 28, 28) or (784,); checked through every layer
        at construction so a misfit names the layer and shapes at once.
    loss : Loss, default SoftmaxWithLoss()
    device : str or Device
    dtype : {"float32", "float64"}
    seed : int
        Seeds the host generator for initial weights and the device generator for dropout masks.
    weight_init : float or {"he", "xavier"}, optional
        Overrides every layer's own rule.
    weight_decay : float
        lambda of the penalty added to the loss and to the gradients of parameters whose role
        is ``"weight"`` (not biases or batch-norm scale/shift): L2 ``0.5 * lambda * sum(W**2)``,
        or L1 ``lambda * sum(|W|)``.
    regularization : {"l2", "l1"}
    """

    name = None  # the model's name in MODELS, recorded in checkpoints
    run_options = ()  # the run settings of RUN_OPTIONS this model takes
    # (sample shape, constructor keywords) of a small version for `dualnet gradcheck`
    gradcheck_build = ((1, 10, 10), {})

    def __init__(self, layers, input_shape, loss=None, device="cpu", dtype="float32", seed=0,
                 weight_init=None, weight_decay=0.0, regularization="l2"):
        self.layers = list(layers)
        self.loss_layer = loss if loss is not None else SoftmaxWithLoss()
        self.device = get_device(device)
        self.dtype = _check_dtype(dtype)
        self.seed = check_seed(seed)
        self.input_shape = tuple(check_size(s, "an input_shape entry") for s in input_shape)
        self.weight_init = weight_init
        self.weight_decay = float(weight_decay)
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}",
                              param="weight_decay")
        if regularization not in ("l2", "l1"):
            raise ConfigError(f"regularization must be 'l2' or 'l1', got {regularization!r}",
                              param="regularization")
        self.regularization = regularization
        if not hasattr(self, "model_kwargs"):
            self.model_kwargs = {}

        shape, self.sample_values = self.input_shape, 0
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as e:
                raise ShapeError(f"layer {i} ({layer!r}) does not fit its input: {e}") from None
            self.sample_values += math.prod(shape)
        self.output_shape = shape   # sample_values: the layers' outputs of one sample, in values

        self._flat, self._buffer_flat = build_layers(self.layers, self.device, self.dtype,
                                                     HostRNG(self.seed), weight_init)
        self._index()
        self.set_seed(self.seed)
        # Backward stops at the first layer with parameters: its input gradient feeds nothing.
        self._first = next((i for i, l in enumerate(self.layers) if l.params), 0)
        for i, layer in enumerate(self.layers):
            layer.need_dx = i != self._first

    # -- parameters ----------------------------------------------------------------
    def _index(self):
        """Where each parameter sits: (name, layer, key) in the flat buffer's order, and the views
        the layers were given (to tell whether one was replaced since)."""
        self._slots = [(f"{i}.{k}", l, k) for i, l in enumerate(self.layers) for k in l.params]
        self._views = [l.params[k] for _, l, k in self._slots]
        self._grad_flat, self._grad_views, self._decay = None, [], None

    def _whole(self, arrays, views):
        return len(arrays) == len(views) and all(a is v for a, v in zip(arrays, views))

    @property
    def params(self):
        """The layers' parameters by name: views of the model's one flat parameter buffer
        (``.flat``), so in-place updates of either train the network."""
        items = [(name, l.params[k]) for name, l, k in self._slots]
        whole = self._whole([a for _, a in items], self._views)
        return FlatDict(items, self._flat if whole else None)

    @property
    def grads(self):
        """The gradients of the last :meth:`backward`, by the names of :attr:`params`: views of
        one flat gradient buffer (``.flat``)."""
        items = [(name, l.grads[k]) for name, l, k in self._slots if k in l.grads]
        whole = self._grad_flat is not None and self._whole([a for _, a in items], self._grad_views)
        return FlatDict(items, self._grad_flat if whole else None)

    @property
    def buffers(self):
        return {f"{i}.{k}": v for i, l in enumerate(self.layers) for k, v in l.buffers.items()}

    def roles(self):
        """Role of each parameter (``weight``, ``bias``, ``scale``, ``shift``) by name."""
        return {f"{i}.{k}": l.roles[k] for i, l in enumerate(self.layers) for k in l.params}

    def num_params(self):
        return sum(math.prod(p.shape) for p in self.params.values())

    def summary(self, short=False):
        """The layers with their output shapes and parameter counts, then the totals, as text
        (Keras' ``model.summary()``, torchinfo's table).  Buffers (batch norm's running
        statistics) are the non-trainable parameters, as Keras counts them.

        ``short=True`` gives one line: layers, input -> output, parameters and their bytes.
        """
        size = 8 if self.dtype == "float64" else 4   # bytes per parameter
        trainable = self.num_params()
        fixed = sum(math.prod(b.shape) for b in self.buffers.values())
        total = trainable + fixed
        mib = f"{_bytes_text(total * size)} in {self.dtype}"
        if short:
            return (f"{self.name or type(self).__name__}: {len(self.layers)} layers, input "
                    f"{_shape_text(self.input_shape)} -> {_shape_text(self.output_shape)}, {trainable:,} "
                    f"trainable + {fixed:,} non-trainable parameters ({mib})")
        rows, shape = [], self.input_shape
        for i, layer in enumerate(self.layers):
            shape = layer.output_shape(shape)
            n = sum(math.prod(p.shape) for p in layer.params.values()) + \
                sum(math.prod(b.shape) for b in layer.buffers.values())
            rows.append((f"{i}: {type(layer).__name__}", _shape_text(shape), f"{n:,}"))
        w = [max(len(r[k]) for r in rows + [("Layer", "Output shape", "Param #")]) for k in range(3)]
        line = lambda r: f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}"  # noqa: E731
        rule = "=" * len(line(("", "", "")))
        return "\n".join([f"Model: {self.name or type(self).__name__} (input {_shape_text(self.input_shape)})",
                          rule, line(("Layer", "Output shape", "Param #")), rule, *map(line, rows), rule,
                          f"Total params: {total:,} ({mib})", f"Trainable params: {trainable:,}",
                          f"Non-trainable params: {fixed:,}", rule])

    def _weights(self):
        """(layer, name, array) of every parameter with the role ``weight``."""
        return [(l, k, p) for l in self.layers for k, p in l.params.items() if l.roles[k] == "weight"]

    # -- configuration -------------------------------------------------------------
    @classmethod
    def check_options(cls, options):
        """Refuse a run setting of ``options`` (setting -> value; None, or False for a switch,
        leaves it unset) that this model does not take, naming the models that do."""
        for setting, value in options.items():
            if setting not in RUN_OPTIONS:
                raise ConfigError(f"unknown model option {setting!r}; known: {', '.join(RUN_OPTIONS)}",
                                  param=setting)
            if value is not None and value is not False and setting not in cls.run_options:
                takers = [n for n, m in MODELS.items() if setting in m.run_options]
                listed = ", ".join(takers[:-1]) + " and " + takers[-1] if len(takers) > 1 else takers[0]
                raise SettingError(lambda name, s=setting: f"{name(s)} applies to {listed}, not {cls.name}",
                                   param=setting)

    @classmethod
    def run_kwargs(cls, options, sample_shape):
        """The constructor keywords of a run with model ``options`` (see :meth:`check_options`)
        on samples of ``sample_shape``; a model whose defaults depend on the samples adds them."""
        cls.check_options(options)
        return {RUN_OPTIONS[s][0]: v for s, v in options.items() if v is not None and v is not False}

    @staticmethod
    def recorded_options(model_kwargs):
        """The run settings a named model built with ``model_kwargs`` has (for each one it was not
        given, the value of a model without it): what a resumed run must agree with."""
        return {s: model_kwargs.get(kwarg, off) for s, (kwarg, off) in RUN_OPTIONS.items()}

    @property
    def config(self):
        """JSON-ready description from which :func:`model_from_config` rebuilds the network."""
        return {"name": self.name, "model_kwargs": self.model_kwargs,
                "layers": [l.spec() for l in self.layers], "loss": self.loss_layer.spec(),
                "input_shape": list(self.input_shape), "dtype": self.dtype,
                "weight_init": self.weight_init, "weight_decay": self.weight_decay,
                "regularization": self.regularization, "seed": self.seed}

    def set_seed(self, seed):
        """Re-seed the device generators of the dropout layers (each its own stream)."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.set_seed(layer_seed(seed, i))

    def set_conv_method(self, method):
        """Use convolution algorithm ``method`` in every convolution layer."""
        for layer in self.layers:
            if isinstance(layer, Convolution):
                if method not in conv.method_names():
                    raise ConfigError(f"unknown convolution method {method!r}; choose one of "
                                      f"{', '.join(conv.method_names())}", param="conv_method")
                layer.method = method

    def __repr__(self):
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"{type(self).__name__}(\n  {inner}\n) on {self.device.spec}, {self.dtype}"

    # -- compute -------------------------------------------------------------------
    def _check_input(self, x):
        self.device.check(x, "input")
        check_batch(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"input has shape {tuple(x.shape)} but the model expects (N, "
                             f"{', '.join(map(str, self.input_shape))}); reshape the data "
                             f"(e.g. flatten=False for conv nets) or build the model for this shape")
        want = self.device.dtype(self.dtype)
        if x.dtype != want:
            raise DTypeError(f"input dtype is {x.dtype} but the model is {self.dtype}; "
                             f"convert with device.asarray(x, '{self.dtype}')")

    def predict(self, x, train=False, micro_batch="auto"):
        """Scores before softmax. x : (N, *input_shape) -> (N, K).

        An evaluation forward (``train=False``) runs in micro-batches where
        :func:`dualnet.microbatch.size` says so (``micro_batch``: "auto", a size, or None for
        the whole batch); the scores are the same to rounding.  It keeps nothing for a
        backward (each layer's state is released as the next runs: one layer's at a time), so
        :meth:`backward` needs a :meth:`loss` after it.  A training forward is one batch and
        keeps its state (:meth:`gradient` splits)."""
        self._check_input(x)
        microbatch.check(micro_batch)
        m = x.shape[0] if train else microbatch.size(self, x.shape[0], False, micro_batch)
        self._backward_ready = False   # backward starts from the loss layer, which this did not run
        with self.device.bind():
            return self._forward(x, train) if m >= x.shape[0] else microbatch.predict(self, x, m)

    def _forward(self, x, train, keep=None):
        """The layers' forward; ``keep`` (default: ``train``) whether they keep their state for
        backward, else each releases it once it has run (:meth:`dualnet.layers.Layer.release`)."""
        keep = train if keep is None else keep
        for layer in self.layers:
            x = layer.forward(x, train)
            if not keep:
                layer.release()
        return x

    def penalty(self):
        """The weight-decay term of the loss (0.0 when weight_decay is 0)."""
        if not self.weight_decay:
            return 0.0
        xp = self.device.xp
        total = 0.0
        with self.device.bind():
            for _, _, p in self._weights():
                total = total + (0.5 * xp.sum(p * p) if self.regularization == "l2" else xp.sum(xp.abs(p)))
            return self.weight_decay * total

    def loss(self, x, t, train=False):
        """Mean loss (0-d device array) of a batch, plus the weight-decay penalty.

        Keeps what :meth:`backward` needs; ``self.scores`` holds the (N, K) scores.

        ``t`` must be on the model's device: (N,) integer labels or (N, K) one-hot floats.
        Their dtype and shape are always checked; their range only where that costs no host
        sync (on the CPU).  On an accelerator the range is checked once, where the data is
        placed (:class:`dualnet.training.BatchSource`).
        """
        with self.device.bind():
            return self._loss(x, t, train)

    def _check_batch(self, x, t):
        """Labels (their range on the host) and input of a batch, before any forward."""
        self.device.check(t, "labels")
        if getattr(self.loss_layer, "classifies", True):   # a regression loss checks its own targets
            N = x.shape[0] if hasattr(x, "shape") and len(x.shape) else None
            check_labels(t, self.output_shape[-1], N, check_range=self.device.is_host)
        self._check_input(x)

    def _loss(self, x, t, train):
        self._check_batch(x, t)
        self.scores = self._forward(x, train, keep=True)   # one batch, kept: backward may follow
        self._backward_ready = True
        loss = self.loss_layer.forward(self.scores, t)
        return loss + self.penalty() if self.weight_decay else loss

    def backward(self):
        """Backpropagate from the last :meth:`loss`; returns :attr:`grads`."""
        if not hasattr(self, "scores"):
            raise ConfigError("backward() needs a forward pass first: call model.loss(x, t, train=True)")
        if not getattr(self, "_backward_ready", True):
            raise ConfigError("backward() follows loss(), but predict() or a micro-batched gradient() ran "
                              "since, so the layers do not hold that loss's forward: call model.loss(x, t) "
                              "again before backward() (gradient() already returns the gradients)")
        with self.device.bind():
            self._backward()
        return self.grads

    def _backward(self):
        dout = self.loss_layer.backward(1.0)
        for layer in reversed(self.layers[self._first:]):
            dout = layer.backward(dout)
        self._gather_grads()

    def _gather_grads(self):
        """Concatenate the layers' fresh gradients into ONE new flat buffer (one operation; a
        copy into views of a kept buffer would be one per parameter), add weight decay to it
        at once, and point the layers' ``grads`` at its views."""
        if not self._slots:
            return
        G = concat([l.grads[k] for _, l, k in self._slots])
        if self.weight_decay:
            G = G + self._decay_term()
        self._set_grads(G)

    def _set_grads(self, G):
        """Make the flat gradient buffer G the model's: the layers' ``grads`` become its views."""
        views = split(G, [tuple(v.shape) for v in self._views])
        for (_, l, k), v in zip(self._slots, views):
            l.grads[k] = v
        self._grad_flat, self._grad_views = G, views

    def _decay_term(self):
        """Weight decay's gradient for the whole flat buffer: ``reg * decay`` where ``decay``
        is lambda on the weights and 0 elsewhere (biases, batch-norm scale and shift)."""
        xp = self.device.xp
        P = self._flat
        if not self._whole([l.params[k] for _, l, k in self._slots], self._views):
            P = concat([l.params[k] for _, l, k in self._slots])  # a layer's array was replaced
        if self._decay is None or self._decay[0] != self.weight_decay:
            host = [{name: self.weight_decay * HostRNG.ones(v.shape) if l.roles[k] == "weight"
                     else HostRNG.zeros(v.shape)} for (name, l, k), v in zip(self._slots, self._views)]
            self._decay = (self.weight_decay, place(self.device, self.dtype, host)[0])
        # sign(p) as the difference of two comparisons: array-api-compat's CuPy sign() patches
        # NaNs with a boolean-mask assignment, a host sync per step
        reg = P if self.regularization == "l2" else xp.astype(P > 0, P.dtype) - xp.astype(P < 0, P.dtype)
        return reg * self._decay[1]

    def gradient(self, x, t, train=True, micro_batch="auto"):
        """Loss and gradients of one batch: returns ``(loss, grads)``; ``self.scores`` holds the
        batch's scores.

        ``micro_batch`` ("auto", a size, or None for one batch) may run the batch as
        micro-batches (:mod:`dualnet.microbatch`: on the host where they fit the cache), with
        the whole batch's loss, gradients and scores to rounding."""
        microbatch.check(micro_batch)
        n = x.shape[0] if len(getattr(x, "shape", ())) else None
        m = n if n is None else microbatch.size(self, n, train, micro_batch)
        # split only labels of one row per sample, checked whole first, so that a bad batch is
        # refused as the whole batch and before any part changed the model's state
        if m is None or m >= n or tuple(getattr(t, "shape", ())[:1]) != (n,):
            loss = self.loss(x, t, train)
            return loss, self.backward()
        self._check_batch(x, t)
        if not getattr(self.loss_layer, "classifies", True) and tuple(t.shape) != (n, *self.output_shape):
            loss = self.loss(x, t, train)   # targets the loss reshapes: one batch
            return loss, self.backward()
        with self.device.bind():
            return microbatch.gradient(self, x, t, train, m)

    def accuracy(self, x, t, batch_size=1000):
        """Fraction of correct predictions, evaluated in batches so memory stays bounded.

        x : (N, ...) device array;  t : (N,) integer or (N, K) one-hot labels.  Returns a float.
        """
        if x.shape[0] == 0:
            raise ShapeError("accuracy of zero samples is undefined: x has shape "
                             f"{tuple(x.shape)}; pass at least one sample")
        return float(self.device.to_numpy(self.count_correct(x, t, batch_size))) / x.shape[0]

    def count_correct(self, x, t, batch_size=1000):
        """Number of correct predictions as a 0-d device array (no host sync)."""
        if not getattr(self.loss_layer, "classifies", True):
            raise ConfigError(f"accuracy is refused: this model's loss {type(self.loss_layer).__name__} "
                              f"is a regression loss, so its outputs are no class scores and a share of "
                              f"'correct' ones would mean nothing; measure it by its loss "
                              f"(model.loss(x, t)) instead")
        with self.device.bind():
            return self._count_correct(x, t, batch_size)

    def _count_correct(self, x, t, batch_size):
        self.device.check(t, "labels")
        correct, N = None, x.shape[0]
        check_labels(t, self.output_shape[-1], N, check_range=self.device.is_host)
        for s in range(0, N, batch_size):
            e = min(s + batch_size, N)  # the array API leaves out-of-range slice ends unspecified
            c = count_correct(self.predict(x[s:e, ...]), t[s:e, ...])
            correct = c if correct is None else correct + c
        return correct

    # -- state -------------------------------------------------------------------
    def to(self, device=None, dtype=None):
        """Move every layer to ``device`` and/or ``dtype``, into new flat buffers there (copies);
        returns self.  An optimizer's state follows at its next update."""
        self.device = get_device(device if device is not None else self.device)
        self.dtype = _check_dtype(dtype or self.dtype)
        self._flat, self._buffer_flat = move_layers(self.layers, self.device, self.dtype)
        self._index()
        self.set_seed(self.seed)
        return self

    def state(self):
        """Parameters and buffers by name (device arrays)."""
        return {**{f"param/{k}": v for k, v in self.params.items()},
                **{f"buffer/{k}": v for k, v in self.buffers.items()}}

    def load_state(self, state):
        """Copy host arrays into the parameters and buffers, checking names and shapes first."""
        mine = self.state()
        missing = sorted(set(mine) - set(state))
        extra = sorted(set(state) - set(mine))
        if missing or extra:
            raise ShapeError(f"checkpoint does not match the model: missing {missing or 'nothing'}, "
                             f"unexpected {extra or 'nothing'}")
        for k, cur in mine.items():
            new = state[k]
            if tuple(new.shape) != tuple(cur.shape):
                raise ShapeError(f"parameter {k.split('/', 1)[1]!r} has shape {tuple(new.shape)} in the "
                                 f"checkpoint but {tuple(cur.shape)} in the model; build the model with "
                                 f"the checkpoint's configuration")
        with self.device.bind():
            for k, cur in mine.items():
                cur[...] = self.device.asarray(state[k], cur.dtype)


def _bytes_text(n):
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _shape_text(shape):
    """An output shape with its batch axis, as Keras and torchinfo print it: (N, 48, 55, 55)."""
    return "(" + ", ".join(["N", *map(str, shape)]) + ")"


# --------------------------------------------------------------------------- the book's models
class TwoLayerNet(Sequential):
    """Affine - ReLU - Affine - softmax (CS231n's two-layer net; the book's ch. 5 version)."""

    name = "two_layer_net"
    gradcheck_build = ((1, 10, 10), dict(hidden_size=10, weight_init=0.3))

    def __init__(self, input_size=784, hidden_size=50, output_size=10, weight_init=0.01,
                 input_shape=None, **common):
        input_shape = tuple(input_shape or (input_size,))
        self.model_kwargs = dict(input_size=input_size, hidden_size=hidden_size, output_size=output_size)
        super().__init__([Affine(math.prod(input_shape), hidden_size), ReLU(),
                          Affine(hidden_size, output_size)], input_shape, weight_init=weight_init, **common)


class MultiLayerNet(Sequential):
    """(Affine - [BatchNorm] - activation - [Dropout]) x len(hidden_sizes) - Affine - softmax.

    ``weight_init`` defaults to He for ReLU and Xavier for sigmoid/tanh.
    """

    name = "mlp"
    run_options = ("dropout", "batchnorm")
    gradcheck_build = ((1, 10, 10), dict(hidden_sizes=[12, 12], use_batchnorm=True))

    def __init__(self, input_size=784, hidden_sizes=(100, 100, 100, 100), output_size=10,
                 activation="relu", weight_init=None, use_batchnorm=False, dropout=0.0,
                 input_shape=None, **common):
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}",
                              param="activation")
        if weight_init is None:
            weight_init = "he" if activation == "relu" else "xavier"
        self.model_kwargs = dict(input_size=input_size, hidden_sizes=list(hidden_sizes),
                                 output_size=output_size, activation=activation,
                                 use_batchnorm=bool(use_batchnorm), dropout=float(dropout))
        input_shape = tuple(input_shape or (input_size,))
        layers, n = [], math.prod(input_shape)
        for h in hidden_sizes:
            layers.append(Affine(n, h))
            if use_batchnorm:
                layers.append(BatchNormalization(h))
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(Dropout(dropout))
            n = h
        layers.append(Affine(n, output_size))
        super().__init__(layers, input_shape, weight_init=weight_init, **common)


class SimpleConvNet(Sequential):
    """conv(FN x FS x FS) - ReLU - maxpool 2x2/2 - Affine(hidden) - ReLU - Affine - softmax
    (run as conv - maxpool - ReLU, which computes the same; with batch norm, conv - BN - ReLU - pool).

    The book initializes with std 0.01 (``weight_init=0.01``); He is the default here because
    it learns faster in the first epoch (Fashion-MNIST, 1 epoch: 0.83 with 0.01).
    """

    name = "simple_convnet"
    run_options = ("batchnorm", "conv")
    gradcheck_build = ((1, 10, 10), dict(filter_num=4, hidden_size=10, weight_init=0.3))

    @classmethod
    def run_kwargs(cls, options, sample_shape):
        kw = super().run_kwargs(options, sample_shape)
        if sample_shape[-1] < 16:  # 8x8 digits: 3x3 filters with pad 1 keep the size before pooling
            kw.update(filter_size=3, pad=1)
        return kw

    def __init__(self, input_dim=(1, 28, 28), filter_num=30, filter_size=5, pad=0, stride=1,
                 hidden_size=100, output_size=10, weight_init="he", use_batchnorm=False,
                 conv_method=None, **common):
        self.model_kwargs = dict(input_dim=list(input_dim), filter_num=filter_num, filter_size=filter_size,
                                 pad=pad, stride=stride, hidden_size=hidden_size, output_size=output_size,
                                 use_batchnorm=bool(use_batchnorm))
        conv = Convolution(input_dim[0], filter_num, filter_size, stride, pad, method=conv_method)
        pool = MaxPooling(2, 2, 2)
        pooled = pool.output_shape(conv.output_shape(tuple(input_dim)))
        # Max-pooling commutes with ReLU (both are monotone), so pooling first gives the same
        # network on a quarter of the ReLU's work.  Batch norm does not commute with a max (its
        # scale may be negative): with it, the book's order stays.
        block = [BatchNormalization(filter_num), ReLU(), pool] if use_batchnorm else [pool, ReLU()]
        layers = [conv, *block, Affine(math.prod(pooled), hidden_size), ReLU(), Affine(hidden_size, output_size)]
        super().__init__(layers, tuple(input_dim), weight_init=weight_init, **common)


class DeepConvNet(Sequential):
    """The book's deep net: conv3x3 16-16, pool, 32-32 (pad 2 on the 4th), pool, 64-64, pool,
    Affine(50) - ReLU - Dropout - Affine - Dropout - softmax; He init.  Each conv is followed by
    ReLU; where a pool follows, the pool runs first (the same values, a quarter of the ReLU)."""

    name = "deep_convnet"
    run_options = ("dropout", "conv")
    gradcheck_build = ((1, 28, 28), dict(dropout=0.3))

    def __init__(self, input_dim=(1, 28, 28), output_size=10, hidden_size=50, dropout=0.5,
                 weight_init="he", conv_method=None, **common):
        self.model_kwargs = dict(input_dim=list(input_dim), output_size=output_size,
                                 hidden_size=hidden_size, dropout=float(dropout))
        layers, shape, c = [], tuple(input_dim), input_dim[0]
        for fn, pad, pool in ((16, 1, False), (16, 1, True), (32, 1, False), (32, 2, True),
                              (64, 1, False), (64, 1, True)):
            conv = Convolution(c, fn, 3, 1, pad, method=conv_method)
            shape = conv.output_shape(shape)
            layers.append(conv)
            if pool:  # pool before ReLU: the same values (see SimpleConvNet), a quarter of the ReLU
                p = MaxPooling(2, 2, 2)
                shape = p.output_shape(shape)
                layers.append(p)
            layers.append(ReLU())
            c = fn
        layers += [Affine(math.prod(shape), hidden_size), ReLU(), Dropout(dropout),
                   Affine(hidden_size, output_size), Dropout(dropout)]
        super().__init__(layers, tuple(input_dim), weight_init=weight_init, **common)


class AlexNet(Sequential):
    """AlexNet as the course notes write it in Keras ('valid' convolutions, each with ReLU;
    'same' 2x2/2 max pooling; batch norm after each pool, or after the conv where none follows):

        conv 48 11x11/4 - pool - BN - conv 128 5x5 - pool - BN - conv 192 3x3 - BN -
        conv 192 3x3 - BN - conv 128 3x3 - pool - BN - flatten -
        (affine 2048 - ReLU - BN - dropout 0.01) x 2 - affine 1000 - softmax

    At 224x224x3 the maps are 54, 27, 23, 12, 10, 8, 6, 3 pixels wide (227: 55, 28, 24, then the same).  Where a pool follows a conv, it runs before the ReLU: the
    same values (see SimpleConvNet) on a quarter of the ReLU's work.  He initialization and
    dualnet's batch norm (momentum 0.9, eps 1e-5), not Keras' Glorot and 0.99 / 1e-3.

    ``input_dim`` defaults to the course's 224x224x3 (54x54 after the first convolution, its
    output size floored); 227 gives the original paper's 55x55 and the same parameter count.

    Parameters
    ----------
    widths : 5 ints
        Filters of the five convolutions (48, 128, 192, 192, 128).
    hidden_size : int
        Units of the two hidden affine layers (2048).
    resize : int, optional
        Resize inputs (bilinear, first layer) to ``resize`` x ``resize``: AlexNet on small
        images, e.g. CIFAR-10 at 227 (the maps of 32x32 are too small for its windows).
    """

    name = "alexnet"
    run_options = ("dropout", "conv", "image_size")
    gradcheck_build = ((1, 10, 10), dict(widths=[3, 4, 4, 4, 3], hidden_size=6, dropout=0.3, resize=139))
    WIDTHS = (48, 128, 192, 192, 128)

    @classmethod
    def run_kwargs(cls, options, sample_shape):
        """``resize`` is the run's image size, else none where the samples fit AlexNet, else the
        course's 224."""
        kw = super().run_kwargs(options, sample_shape)
        if "resize" not in kw:
            try:
                with specs_only():  # only the sizes are checked: nothing is allocated
                    cls(input_dim=tuple(sample_shape), output_size=2, widths=(1,) * 5, hidden_size=1)
            except ShapeError:
                kw["resize"] = 224
        return kw

    def __init__(self, input_dim=(3, 224, 224), output_size=1000, widths=WIDTHS, hidden_size=2048,
                 dropout=0.01, resize=None, weight_init="he", conv_method=None, **common):
        widths = [int(w) for w in widths]
        if len(widths) != 5:
            raise ConfigError(f"AlexNet has 5 convolutions but widths has {len(widths)} entries",
                              param="widths")
        self.model_kwargs = dict(input_dim=list(input_dim), output_size=output_size, widths=widths,
                                 hidden_size=hidden_size, dropout=float(dropout),
                                 resize=None if resize is None else int(resize))
        layers = [Resize(int(resize))] if resize else []
        c = input_dim[0]
        for w, (k, stride, pool) in zip(widths, ((11, 4, True), (5, 1, True), (3, 1, False),
                                                  (3, 1, False), (3, 1, True))):
            layers.append(Convolution(c, w, k, stride, 0, method=conv_method))
            layers += [MaxPooling(2, 2, 2, pad="same"), ReLU()] if pool else [ReLU()]
            layers.append(BatchNormalization(w))
            c = w
        shape = tuple(input_dim)
        for i, layer in enumerate(layers):
            try:
                shape = layer.output_shape(shape)
            except ShapeError as e:
                raise ShapeError(f"AlexNet does not fit input {tuple(input_dim)} (layer {i}, "
                                 f"{layer!r}: {e}); give it larger images, e.g. resize=224") from None
        layers.append(Flatten())
        n = math.prod(shape)
        for _ in range(2):
            layers += [Affine(n, hidden_size), ReLU(), BatchNormalization(hidden_size), Dropout(dropout)]
            n = hidden_size
        layers.append(Affine(n, output_size))
        super().__init__(layers, tuple(input_dim), weight_init=weight_init, **common)


MODELS = {cls.name: cls for cls in (TwoLayerNet, MultiLayerNet, SimpleConvNet, DeepConvNet, AlexNet)}


def build_model(name, input_shape, num_classes, **kwargs):
    """Build model ``name`` for samples of ``input_shape`` and ``num_classes`` classes.

    Extra ``kwargs`` go to the model (e.g. ``hidden_sizes``) or to :class:`Sequential`
    (``device``, ``dtype``, ``seed``, ``weight_decay``, ...).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}", param="model")
    input_shape = tuple(input_shape)
    cls = MODELS[name]
    if issubclass(cls, (SimpleConvNet, DeepConvNet, AlexNet)):
        if len(input_shape) != 3:
            raise ShapeError(f"{name} needs image input (C, H, W) but the data has sample shape {input_shape}")
        return cls(input_dim=input_shape, output_size=num_classes, **kwargs)
    return cls(input_size=math.prod(input_shape), output_size=num_classes, input_shape=input_shape, **kwargs)


def model_from_config(config, device="cpu", dtype=None, conv_method=None):
    """Rebuild a network (with fresh weights) from :attr:`Sequential.config`."""
    c = dict(config)
    net = Sequential([layer_from_spec(s) for s in c["layers"]], tuple(c["input_shape"]),
                     loss=layer_from_spec(c["loss"]), device=device, dtype=dtype or c["dtype"],
                     seed=c["seed"], weight_init=c["weight_init"], weight_decay=c["weight_decay"],
                     regularization=c["regularization"])
    net.name, net.model_kwargs = c.get("name"), c.get("model_kwargs") or {}
    if conv_method:
        net.set_conv_method(conv_method)
    return net
