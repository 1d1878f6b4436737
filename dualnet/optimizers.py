"""Optimizers with the update rules of *Deep Learning from Scratch* (common/optimizer.py).

Each optimizer updates ``params`` in place from ``grads`` (dicts of device arrays
with the same keys).  Its state (velocities, squared-gradient sums, Adam's
moments) is created with ``zeros_like`` of each parameter, so it lives on the
parameters' device.

One update for all parameters at once: given a network's ``params`` (a
:class:`dualnet.models.ParamDict`, whose keys can be re-bound), the first update copies
every parameter into one flat buffer and re-binds the layers' parameters to views of it;
from then on a step concatenates the gradients (one operation) and updates the flat
buffer and its flat state with the rule's handful of operations, instead of that
handful per parameter.  On a GPU each array operation is a kernel launch, and launches
are what a small step costs (SimpleConvNet's Adam: 72 operations per step per
parameter array, 13 flat).  The per-parameter view of the state is kept, so
checkpoints do not change.  Plain dicts of arrays are updated parameter by parameter.  Weight decay belongs to the model (:class:`dualnet.models.Sequential`),
so the loss and its gradient stay consistent; learning-rate decay is a schedule
applied once per epoch (:class:`LRSchedule`).
"""
from __future__ import annotations

import math

from .backend import array_device, namespace, on_device_of
from .errors import CheckpointError, ConfigError, DeviceError

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
        self._flat = None   # (keys, flat parameter buffer, its views) once parameters are flattened

    def _slot(self, name, key, p):
        d = self.state[name]
        if key not in d:
            d[key] = namespace(p).zeros_like(p)
        return d[key]

    def update(self, params, grads, reduce=None):
        """Update ``params`` in place from ``grads`` (dicts with the same keys).

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
        flat = self._flatten(params)
        if flat is None:
            if reduce is not None:
                grads = _split(reduce(_concat(grads, list(params))), params)
            for k, p in params.items():
                self._update(k, p, grads[k])
            return
        keys, P, _ = flat
        G = _concat(grads, keys)
        if reduce is not None:
            G = reduce(G)
        self._update(_FLAT, P, G)

    def _begin_step(self):
        """Per-step scalars (Adam's bias-corrected rate)."""

    def _update(self, key, p, g):
        raise NotImplementedError

    # -- one flat buffer for all parameters ------------------------------------------
    def _flatten(self, params):
        """(keys, flat buffer, views) when ``params`` can be served from one flat buffer, else None.

        Built on the first update, and again whenever a parameter was re-bound since (a layer
        moved to another device, a checkpoint rebuilt a model): the views are checked by identity.
        """
        if not getattr(params, "rebinds", False) or len(params) < 2:
            return None
        if self._flat is not None:
            keys, P, views = self._flat
            if list(params) == keys and all(params[k] is views[k] for k in keys):
                return self._flat
            self._unflatten()
        values = list(params.values())
        if len({str(v.dtype) for v in values}) != 1:
            return None
        xp = namespace(*values)
        keys = list(params)
        P = _concat(params, keys)
        views = _split(P, params)
        if not _aliases(P, views[keys[0]]):
            return None  # this backend copies on reshape: stay with per-parameter updates
        for k in keys:
            params[k] = views[k]   # re-binds the layer's own parameter to the view
        # The state follows: existing per-parameter state (a loaded checkpoint) is concatenated.
        for s in self.slots:
            per = self.state[s]
            if per:
                flat_s = xp.concat([xp.reshape(per[k] if k in per else xp.zeros_like(params[k]), (-1,))
                                    for k in keys])
            else:
                flat_s = xp.zeros_like(P)
            self.state[s] = {_FLAT: flat_s, **_split(flat_s, params)}
        self._flat = (keys, P, views)
        return self._flat

    def _unflatten(self):
        for s in self.slots:
            self.state[s].pop(_FLAT, None)
        self._flat = None

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
        self._flat = None
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


def _concat(arrays, keys):
    """``arrays[k]`` for ``k`` in ``keys``, flattened into one 1-D array (one operation)."""
    xp = namespace(arrays[keys[0]])
    return xp.concat([xp.reshape(arrays[k], (-1,)) for k in keys])


def _split(flat, like):
    """The inverse of :func:`_concat`: views of ``flat`` shaped like the arrays of ``like``."""
    xp = namespace(flat)
    out, offset = {}, 0
    for k, v in like.items():
        n = math.prod(v.shape)
        out[k] = xp.reshape(flat[offset:offset + n], v.shape)
        offset += n
    return out


def _aliases(flat, view):
    """True when writing ``flat`` shows through ``view`` (the backend made a view, not a copy)."""
    xp = namespace(flat)
    old = float(flat[0])
    flat[0] = old + 1.0
    new = float(flat[0])       # old + 1 rounded to the buffer's dtype
    seen = float(xp.reshape(view, (-1,))[0])
    flat[0] = old
    return seen == new != old


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
