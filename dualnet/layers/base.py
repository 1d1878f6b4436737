"""The layer contract and the build phase: :class:`Layer` (parameters declared by
:meth:`Layer.param_specs`, ``forward`` run next to its ``backward`` on the layer's device),
:func:`build_layers` and :func:`move_layers` (many layers in one flat buffer on one device),
:func:`specs_only`, and the size, seed and dtype checks every layer and network uses."""
from __future__ import annotations

import contextlib
import contextvars
import numbers

from ..backend import HostRNG, get_device, on_device_of
from ..errors import ConfigError
from ..params import ParamSpec, place


class Layer:
    """Base class: ``forward(x, train=False)`` and ``backward(dout)``.

    Parameters (keyword-only, for every layer)
    ----------
    device : str or Device, default "cpu"
        Where a layer used alone lives (resolved on first use); a model puts its layers on
        its own device.
    dtype : {"float32", "float64"}
    seed : int or HostRNG
        Draws the initial parameters on the host when the layer builds itself (a model draws
        from its own generator instead).
    weight_init : float or {"he", "xavier"}
        Standard deviation rule for weights (see :mod:`dualnet.init`).

    Attributes
    ----------
    params, grads : dict[str, array]
    buffers : dict[str, array]
    roles : dict[str, str]
        Role of each parameter: ``"weight"``, ``"bias"``, ``"scale"`` or ``"shift"``.
    need_dx : bool
        When False, ``backward`` skips the input gradient and returns None
        (a network sets it on its first layer, whose dx nobody uses).
    """

    roles = {}
    per_sample = False
    """True when a training forward's output for a sample depends on that sample alone, so that
    a batch may run as micro-batches (:mod:`dualnet.microbatch`).  False by default: a layer of
    your own that does not declare it keeps its network's batches whole; batch normalization,
    whose training forward normalizes by the batch's statistics, is False."""
    keeps_layout = False
    """True when ``forward`` and ``backward`` return arrays in the memory order of their input
    (the contract of :mod:`dualnet.conv.layout`, which ``"rows"`` convolutions rely on for speed)."""
    backward_state = ()
    """The attributes a forward sets for ``backward`` alone (:meth:`release` drops them)."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "_init_params" in cls.__dict__:  # the hook before the build phase: drawn, never called
            raise TypeError(f"{cls.__name__} defines _init_params(); a layer declares its parameters "
                            f"with param_specs() (dualnet.params.ParamSpec) instead")
        _bind_compute(cls)

    def __init__(self, *, device="cpu", dtype="float32", seed=0, weight_init="he"):
        self._device_spec, self._device = device, None   # resolved on first use
        self.dtype = _check_dtype(dtype)
        self._seed, self.weight_init = check_seed(seed), weight_init
        self._params, self._buffers, self.grads = None, None, {}
        self.need_dx = True

    def release(self):
        """Drop what only :meth:`backward` needs (the attributes named in
        :attr:`backward_state`), after an inference forward: a model's ``predict(train=False)``
        calls it layer by layer, so that an inference holds no more than one layer's state."""
        for name in self.backward_state:
            setattr(self, name, None)
        self._forwarded = False   # a backward now has nothing to go back through

    # -- parameters ----------------------------------------------------------------
    @property
    def device(self):
        """The layer's device: its own ``device=`` used alone, its model's inside one."""
        if self._device is None:
            self._device = get_device(self._device_spec)
        return self._device

    @property
    def params(self):
        """Parameters by name (device arrays); a layer used alone builds itself on first use."""
        if self._params is None:
            self.build()
        return self._params

    @property
    def buffers(self):
        if self._buffers is None:
            self.build()
        return self._buffers

    def param_specs(self):
        """The parameters this layer declares, by name in drawing order: :class:`ParamSpec`."""
        return {}

    def _spec(self, name, shape, init, fan_in=0):
        return ParamSpec(tuple(int(s) for s in shape), init, self.roles[name], int(fan_in))

    def build(self, rng=None):
        """Draw fresh parameters and buffers from ``rng`` (a seed or a :class:`HostRNG`; default:
        the layer's own ``seed``) into one flat buffer on the layer's device; returns self."""
        build_layers([self], self.device, self.dtype, self._seed if rng is None else rng)
        return self

    def to(self, device=None, dtype=None):
        """Move parameters and buffers to ``device`` and/or ``dtype`` (copies); returns self."""
        new = get_device(device if device is not None else self.device)
        dtype = _check_dtype(dtype or self.dtype)
        if self._params is None:  # not built yet: it builds there
            self._device, self.dtype = new, dtype
        else:
            move_layers([self], new, dtype)
        return self

    def _init_buffers(self):
        """Initial buffers as host arrays."""
        return {}

    # -- description -------------------------------------------------------------------
    def spec(self):
        """JSON-ready description that :func:`layer_from_spec` rebuilds the layer from."""
        return {"type": type(self).__name__, **self._kwargs()}

    def _kwargs(self):
        return {}

    def output_shape(self, shape):
        """Shape of one sample's output for one sample's input ``shape`` (no batch axis)."""
        return shape

    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __repr__(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self._kwargs().items())
        return f"{type(self).__name__}({kw})"


_SPECS_ONLY = contextvars.ContextVar("dualnet_specs_only", default=False)


@contextlib.contextmanager
def specs_only():
    """Layers (and networks) built in this context allocate no parameters or buffers: only their
    sizes and :meth:`Layer.spec` are real.  A checkpoint's configuration is checked this way
    before anything is built, whatever sizes it claims."""
    token = _SPECS_ONLY.set(True)
    try:
        yield
    finally:
        _SPECS_ONLY.reset(token)


def _bind_compute(cls):
    """Wrap the ``forward`` and ``backward`` a class defines in :func:`_bound`."""
    for name in ("forward", "backward"):
        if name in cls.__dict__:
            setattr(cls, name, _bound(cls.__dict__[name]))


def _bound(method):
    """``method`` run under its layer's ``device.bind()``: a layer called alone computes on its
    own GPU (CuPy allocates on the current one, whatever ``device=`` says) -- the device of the
    layer for a :class:`Layer`, of the input for a :class:`Loss`."""
    backward = method.__name__ == "backward"

    def run(self, x=None, *args, **kw):
        # Call order: a flag in the instance, set after a forward that returned (no array is
        # touched, so no host sync on a device).
        if backward and not self.__dict__.get("_forwarded"):
            raise ConfigError(f"{type(self).__name__}.backward() was called before its forward() (or after "
                              f"an inference released what it kept): call forward(x, ...) on the batch "
                              f"first, then backward(dout)")
        dev = getattr(self, "device", None)
        if dev is not None:
            ctx = dev.bind()
        elif x is not None and hasattr(x, "shape"):
            self._bind = on_device_of(x)  # a loss: its input's device, kept for backward
            ctx = self._bind
        else:
            ctx = getattr(self, "_bind", None) or contextlib.nullcontext()
        with ctx:
            out = method(self, *args, **kw) if x is None else method(self, x, *args, **kw)
        if not backward:
            self._forwarded = True
        return out
    run.__name__, run.__qualname__, run.__doc__ = method.__name__, method.__qualname__, method.__doc__
    run.__wrapped__ = method
    return run


def build_layers(layers, device, dtype, rng=0, weight_init=None):
    """Build ``layers`` together on ``device``: every parameter drawn once, in order, from one
    host generator ``rng`` (a seed or a :class:`HostRNG`), all of them in ONE flat buffer (one
    transfer) whose views become the layers' ``params``; the buffers likewise.

    ``weight_init``, when given, replaces every layer's own rule.  Returns the two flat buffers
    (parameters, buffers), each None when there is nothing in it.
    """
    if _SPECS_ONLY.get():  # see specs_only(): sizes and specs only, nothing drawn or allocated
        for layer in layers:
            layer._device, layer.dtype = device, dtype
            layer._params, layer._buffers, layer.grads = {}, {}, {}
        return None, None
    host = rng if isinstance(rng, HostRNG) else HostRNG(check_seed(rng))
    params, buffers = [], []
    for layer in layers:
        if weight_init is not None:
            layer.weight_init = weight_init
        params.append({k: s.draw(host, layer.weight_init) for k, s in layer.param_specs().items()})
        buffers.append(layer._init_buffers())
    return _place_layers(layers, device, dtype, params, buffers)


def move_layers(layers, device, dtype):
    """Copy the layers' current parameters and buffers into new flat buffers on ``device``
    (as :func:`build_layers` places them); returns the two flat buffers."""
    params = [{k: l.device.to_numpy(v) for k, v in l.params.items()} for l in layers]
    buffers = [{k: l.device.to_numpy(v) for k, v in l.buffers.items()} for l in layers]
    return _place_layers(layers, device, dtype, params, buffers)


def _place_layers(layers, device, dtype, params, buffers):
    P, pviews = place(device, dtype, params)
    B, bviews = place(device, dtype, buffers)
    for layer, pv, bv in zip(layers, pviews, bviews):
        layer._device, layer.dtype = device, dtype
        layer._params, layer._buffers, layer.grads = pv, bv, {}
    return P, B


def _check_dtype(dtype):
    d = str(dtype)
    if d not in ("float32", "float64"):
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}", param="dtype")
    return d


def check_size(value, what, lo=1):
    """``value`` as an int >= ``lo``: every size a layer or network is built with passes here, so
    a hidden size of 0 or -3 is one ConfigError naming it (not NumPy's error, or a division by 0)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok = True
    if not ok or int(value) < lo:
        raise ConfigError(f"{what} must be an integer >= {lo}, got {value!r}", param=None)
    return int(value)


def check_seed(seed, param="seed"):
    """A seed of the host generator: an integer >= 0."""
    if isinstance(seed, HostRNG):
        return seed
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)) or int(seed) < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}", param=param)
    return int(seed)
