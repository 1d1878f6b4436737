"""Optimizers with the update rules of *Deep Learning from Scratch* (common/optimizer.py).

Each optimizer updates ``params`` in place from ``grads`` (dicts of device arrays
with the same keys).  Its state (velocities, squared-gradient sums, Adam's
moments) is created with ``zeros_like`` of each parameter, so it lives on the
parameters' device.

One update for all parameters at once: a model's ``params`` and ``grads``
(:class:`dualnet.params.FlatDict`) are views of one flat parameter buffer and one flat
gradient buffer, which the model builds (:class:`dualnet.models.Sequential`); given them, a
step updates the flat parameter buffer from the flat gradient buffer with the rule's handful
of operations, instead of that handful per parameter.  On a GPU each array operation is a
kernel launch, and launches are what a small step costs (SimpleConvNet's Adam: 72 operations
per step per parameter array, 13 flat).  The state is one flat buffer per slot too, with a
per-parameter view of it under each parameter's name, so checkpoints keep their keys; it
follows the model to a new flat buffer (a model moved with ``to``, or another model with the
same parameters) at the next update.  Plain dicts of arrays are updated parameter by
parameter.  Weight decay belongs to the model (:class:`dualnet.models.Sequential`),
so the loss and its gradient stay consistent; learning-rate decay is a schedule
applied once per epoch (:class:`LRSchedule`).
"""
from __future__ import annotations

import math

from .backend import array_device, namespace, on_device_of
from .errors import CheckpointError, ConfigError, DeviceError
from .params import concat, split

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "OPTIMIZERS",
           "make_optimizer", "LRSchedule"]


# The valid range of every hyper-parameter, as (low, high, is low allowed); high is never allowed.
# A beta or momentum of 1 keeps the first value for ever, above 1 (or below 0) it diverges:
# an optimizer that accepted one would train silently wrong.
HYPER_RANGES = {"lr": (0.0, math.inf, False), "momentum": (0.0, 1.0, True), "decay_rate": (0.0, 1.0, True),
                "beta1": (0.0, 1.0, True), "beta2": (0.0, 1.0, True)}


def hyper_problem(name, value):
    """None when ``value`` is a usable ``name`` (see :data:`HYPER_RANGES`), else what is wrong,
    with the valid range: the one check of constructors and of checkpoints."""
    lo, hi, closed = HYPER_RANGES[name]
    valid = f"{'[' if closed else '('}{lo:g}, {hi:g})"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"{name} must be a number in {valid}, got {value!r}"
    if isinstance(value, bool) or not ((lo <= v if closed else lo < v) and v < hi):
        return f"{name} must be in {valid}, got {value!r}"
    return None


class Optimizer:
    """Base class: ``update(params, grads)``, plus ``state_dict``/``load_state_dict`` for checkpoints."""

    slots = ()        # names of per-parameter state arrays
    hyper = ("lr",)   # names of scalar hyperparameters saved with the state
    nonneg = ()       # slots that hold running sums of squares: never negative

    def __init__(self, lr, **hyper):
        for name, value in dict(lr=lr, **hyper).items():
            why = hyper_problem(name, value)
            if why:
                raise ConfigError(f"{type(self).__name__}: {why}", param=name)
            setattr(self, name, float(value))
        self.state = {s: {} for s in self.slots}
        self.t = 0
        self._flat_of = None   # the flat parameter buffer the state is laid out for

    def _slot(self, name, key, p):
        d = self.state[name]
        if key not in d:
            d[key] = namespace(p).zeros_like(p)
        return d[key]

    def update(self, params, grads, reduce=None):
        """Update ``params`` in place from ``grads`` (dicts with the same keys).

        A model's own ``params`` (a :class:`dualnet.params.FlatDict` whose ``flat`` is set) are
        updated through their flat buffer in one go, from the flat buffer of a model's ``grads``
        (or one concatenation of other gradients); plain dicts parameter by parameter.

        ``reduce``, when given, maps the concatenated gradients (one flat array, the parameters'
        order) to the gradients to apply: data-parallel training passes an all-reduce that
        averages them over the processes, so the update sees one buffer, in one call.
        """
        if not params:
            return
        first = next(iter(params.values()))
        where, xp = array_device(first), namespace(first)
        for k, p in params.items():
            if k not in grads:
                raise ConfigError(f"no gradient for parameter {k!r}: call model.backward() after model.loss()")
            g = grads[k]
            try:
                same = namespace(p, g) is xp and array_device(p) == where and array_device(g) == where
            except TypeError:  # arrays of two libraries
                same = False
            if not same:
                raise DeviceError(f"parameter {k!r} lives on {array_device(p)!r} and its gradient on "
                                  f"{array_device(g)!r}, but every parameter and gradient must share the "
                                  f"device of the first parameter ({where!r}); move them with device.asarray(...)")
        with on_device_of(first):
            self._step(params, grads, reduce)

    def _step(self, params, grads, reduce):
        self.t += 1
        self._begin_step()
        P = getattr(params, "flat", None)
        if P is None:
            if reduce is not None:
                grads = dict(zip(params, split(reduce(concat([grads[k] for k in params])),
                                               [tuple(p.shape) for p in params.values()])))
            for k, p in params.items():
                self._update(k, p, grads[k])
            return
        G = getattr(grads, "flat", None)
        if G is None or list(grads) != list(params) or tuple(G.shape) != tuple(P.shape):
            G = concat([grads[k] for k in params])  # gradients of another layout: one operation
        if reduce is not None:
            G = reduce(G)
        self._follow(params)
        self._update(_FLAT, P, G)

    def _begin_step(self):
        """Per-step scalars (Adam's bias-corrected rate)."""

    def _update(self, key, p, g):
        raise NotImplementedError

    def _follow(self, params):
        """Lay the state out like the flat buffer of ``params`` (once per buffer): one flat array
        per slot, viewed per parameter; the existing per-parameter state (the previous buffer's
        views, or a loaded checkpoint's arrays) is copied in, zeros where there is none."""
        P = params.flat
        if self._flat_of is P:
            return
        xp = namespace(P)
        where = array_device(P)
        shapes = [tuple(p.shape) for p in params.values()]
        for s in self.slots:
            per = self.state[s]
            for k, v in per.items():
                if k != _FLAT and array_device(v) != where:
                    raise DeviceError(f"optimizer state {s}/{k} lives on {array_device(v)!r} but the "
                                      f"parameters on {where!r}; save a checkpoint and load it with this "
                                      f"optimizer on the parameters' device")
            parts = [per[k] if k in per else xp.zeros_like(p) for k, p in params.items()]
            flat = concat(parts) if per else xp.zeros_like(P)
            self.state[s] = {_FLAT: flat, **dict(zip(params, split(flat, shapes)))}
        self._flat_of = P

    def state_dict(self):
        """Scalars and per-parameter state: ``({"t":.., "lr":..}, {"slot/param": array})``."""
        scalars = {"type": type(self).__name__, "t": self.t, **{h: getattr(self, h) for h in self.hyper}}
        arrays = {f"{s}/{k}": v for s in self.slots for k, v in self.state[s].items() if k != _FLAT}
        return scalars, arrays

    def load_state_dict(self, scalars, arrays, device):
        if scalars.get("type") != type(self).__name__:
            raise CheckpointError(f"checkpoint optimizer is {scalars.get('type')} but this run uses "
                                  f"{type(self).__name__}; resume with optimizer="
                                  f"'{str(scalars.get('type', '')).lower()}'", param="optimizer")
        for h in self.hyper:
            why = hyper_problem(h, scalars.get(h))
            if why:
                raise CheckpointError(f"the checkpoint's {type(self).__name__} state is unusable: {why}")
        self.t = int(scalars["t"])
        for h in self.hyper:
            setattr(self, h, float(scalars[h]))
        self.state = {s: {} for s in self.slots}
        self._flat_of = None
        with device.bind():
            for key, v in arrays.items():
                s, k = key.split("/", 1)
                self.state[s][k] = device.xp.asarray(device.asarray(v), copy=True)  # never alias the source

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{h}={getattr(self, h):g}' for h in self.hyper)})"


class SGD(Optimizer):
    """p -= lr * g"""

    def _update(self, key, p, g):
        p -= self.lr * g


class Momentum(Optimizer):
    """v = m*v - lr*g;  p += v"""

    slots = ("v",)
    hyper = ("lr", "momentum")

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr, momentum=momentum)

    def _update(self, key, p, g):
        v = self._slot("v", key, p)
        v *= self.momentum
        v -= self.lr * g
        p += v


class Nesterov(Momentum):
    """v = m*v - lr*g;  p += m*m*v - (1 + m)*lr*g  (the book's form)."""

    def _update(self, key, p, g):
        m = self.momentum
        v = self._slot("v", key, p)
        v *= m
        v -= self.lr * g
        p += (m * m) * v - ((1 + m) * self.lr) * g


class AdaGrad(Optimizer):
    """h += g*g;  p -= lr * g / (sqrt(h) + 1e-7)"""

    slots = ("h",)
    nonneg = ("h",)

    def _update(self, key, p, g):
        xp = namespace(p)
        h = self._slot("h", key, p)
        h += g * g
        p -= self.lr * g / (xp.sqrt(h) + 1e-7)


class RMSprop(Optimizer):
    """h = rho*h + (1 - rho)*g*g;  p -= lr * g / (sqrt(h) + 1e-7)"""

    slots = ("h",)
    hyper = ("lr", "decay_rate")
    nonneg = ("h",)

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr, decay_rate=decay_rate)

    def _update(self, key, p, g):
        xp = namespace(p)
        h = self._slot("h", key, p)
        h *= self.decay_rate
        h += (1 - self.decay_rate) * g * g
        p -= self.lr * g / (xp.sqrt(h) + 1e-7)


class Adam(Optimizer):
    """lr_t = lr*sqrt(1 - b2^t)/(1 - b1^t);  m += (1 - b1)(g - m);  v += (1 - b2)(g*g - v);
    p -= lr_t * m / (sqrt(v) + 1e-7)"""

    slots = ("m", "v")
    hyper = ("lr", "beta1", "beta2")
    nonneg = ("v",)

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr, beta1=beta1, beta2=beta2)

    def _begin_step(self):
        self._lr_t = self.lr * math.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)

    def _update(self, key, p, g):
        xp = namespace(p)
        m = self._slot("m", key, p)
        v = self._slot("v", key, p)
        m += (1 - self.beta1) * (g - m)
        v += (1 - self.beta2) * (g * g - v)
        p -= (self._lr_t * m) / (xp.sqrt(v) + 1e-7)


_FLAT = "*"  # the key of the flat state buffer (never a parameter name: those are "layer.name")


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam}

DEFAULT_LR = {"sgd": 0.1, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.01,
              "rmsprop": 0.001, "adam": 0.001}


def make_optimizer(name, lr=None):
    """Optimizer ``name`` (see :data:`OPTIMIZERS`) with ``lr`` or its usual default."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}",
                          param="optimizer")
    return OPTIMIZERS[key](lr=DEFAULT_LR[key] if lr is None else lr)


class LRSchedule:
    """Learning-rate decay per epoch, as in CS231n.

    ``kind="exponential"``: lr = base * decay**epoch (``lr *= decay`` after every epoch).
    ``kind="step"``: lr = base * decay**(epoch // step_size).
    """

    def __init__(self, base_lr, decay=1.0, kind="exponential", step_size=1):
        if kind not in ("exponential", "step"):
            raise ConfigError(f"lr schedule kind must be 'exponential' or 'step', got {kind!r}", param="kind")
        if not 0 < decay <= 1:
            raise ConfigError(f"lr decay must be in (0, 1], got {decay}", param="lr_decay")
        self.base_lr, self.decay, self.kind, self.step_size = float(base_lr), float(decay), kind, int(step_size)

    def __call__(self, epoch):
        """Learning rate for 0-based ``epoch``."""
        k = epoch if self.kind == "exponential" else epoch // self.step_size
        return self.base_lr * self.decay ** k
