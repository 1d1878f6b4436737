"""Operation counting: any device with every array operation counted (a GPU's kernel launches)."""
from __future__ import annotations

from .arrays import array_device
from .device import Device


class CountingDevice(Device):
    """Another device, with every array operation counted: the number of kernels a GPU launches.

    At batch sizes up to a few hundred a CuPy step is bound by launches (5-12 us of host time
    per array operation), not arithmetic, so the count is the GPU cost that can be measured on
    any machine.  Arrays of this device wrap the inner device's; each namespace function,
    operator, gather and ``__setitem__`` adds one to :attr:`ops`; views (slicing, transposes,
    reshapes), metadata and transfers add nothing.

    >>> dev = CountingDevice(get_device("cpu")); net = SimpleConvNet(device=dev); ...; dev.ops
    """

    def __init__(self, inner, extra=None):
        from .resolve import get_device
        self.inner = get_device(inner)
        super().__init__(self.inner.index, self.inner.reason)
        self.kind, self.is_host, self.name = self.inner.kind, self.inner.is_host, self.inner.name
        self._dev = self.inner.array_device
        self.xp = _CountingNamespace(self.inner.xp, self)
        self.ops = 0
        # extra(name, inner args) -> kernels a library adds on its own (e.g. CuPy's matmul copying
        # a non-contiguous operand), counted apart in ``hidden``
        self.extra, self.hidden = extra, 0

    @property
    def spec(self):
        return self.inner.spec

    def __eq__(self, other):
        return other is self

    def __hash__(self):
        return id(self)

    def dtype(self, name):
        return self.inner.dtype(name)

    def asarray(self, a, dtype=None):
        return _Counted.wrap(self.inner.asarray(_Counted.unwrap(a), dtype), self)

    def to_numpy(self, a):
        return self.inner.to_numpy(_Counted.unwrap(a))

    def owns(self, x):
        return isinstance(x, _Counted) and x._dev is self and self.inner.owns(x._a)

    def bind(self):
        return self.inner.bind()

    def synchronize(self):
        self.inner.synchronize()

    def timer(self):
        return self.inner.timer()

    def total_memory(self):
        return self.inner.total_memory()

    def free_memory(self):
        return self.inner.free_memory()

    def rng(self, seed):
        return _CountingRNG(self.inner.rng(seed), self)


class _CountingRNG:
    def __init__(self, rng, device):
        self._rng, self._device = rng, device

    def reseed(self, seed):
        self._rng.reseed(seed)  # sets a key: no kernel

    def uniform(self, shape, dtype):
        self._device.ops += 1
        return _Counted.wrap(self._rng.uniform(shape, dtype), self._device)

    def permutation(self, n):
        self._device.ops += 1
        return _Counted.wrap(self._rng.permutation(n), self._device)


# Namespace functions that launch no kernel: views, metadata, allocation without a fill.
_FREE = {"permute_dims", "matrix_transpose", "reshape", "expand_dims", "squeeze", "broadcast_to",
         "isdtype", "result_type", "finfo", "iinfo", "empty", "empty_like", "can_cast"}


class _CountingNamespace:
    def __init__(self, xp, device):
        self._xp, self._device = xp, device
        self.__name__ = f"counting {getattr(xp, '__name__', xp)}"

    def __getattr__(self, name):
        f = getattr(self._xp, name)
        if not callable(f) or isinstance(f, type) or name.startswith("__"):
            return f
        device = self._device

        def call(*args, **kw):
            if name not in _FREE and not (name == "asarray" and not kw.get("copy")):
                device.ops += 1
            args, kw = _Counted.unwrap(args), _Counted.unwrap(kw)
            if device.extra is not None:
                device.hidden += device.extra(name, args)
            return _Counted.wrap(f(*args, **kw), device)
        return call


class _Counted:
    """An array of a :class:`CountingDevice`: the inner array, and the device that counts."""

    __slots__ = ("_a", "_dev")

    def __init__(self, a, dev):
        self._a, self._dev = a, dev

    @staticmethod
    def wrap(r, dev):
        if isinstance(r, (list, tuple)):
            return type(r)(_Counted.wrap(v, dev) for v in r)
        if hasattr(r, "shape") and hasattr(r, "dtype") and not isinstance(r, _Counted):
            return _Counted(r, dev)
        return r

    @staticmethod
    def unwrap(a):
        if isinstance(a, _Counted):
            return a._a
        if isinstance(a, (list, tuple)):
            return type(a)(_Counted.unwrap(v) for v in a)
        if isinstance(a, dict):
            return {k: _Counted.unwrap(v) for k, v in a.items()}
        return a

    def __array_namespace__(self, api_version=None):
        return self._dev.xp

    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    device = property(lambda self: array_device(self._a))
    mT = property(lambda self: _Counted(self._a.mT, self._dev))

    def __getitem__(self, key):
        k = _Counted.unwrap(key)
        if any(hasattr(v, "shape") for v in (k if isinstance(k, tuple) else (k,))):
            self._dev.ops += 1  # an integer or boolean index gathers
        return _Counted(self._a[k], self._dev)

    def __setitem__(self, key, value):
        self._dev.ops += 1
        self._a[_Counted.unwrap(key)] = _Counted.unwrap(value)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"counted({self._a!r})"


def _counted_op(name):
    inplace = name.startswith("__i") and name not in ("__invert__",)

    def op(self, *other):
        self._dev.ops += 1
        r = getattr(self._a, name)(*_Counted.unwrap(other))
        if inplace:
            self._a = r  # NumPy and CuPy return self; keep whatever the backend returned
            return self
        return _Counted.wrap(r, self._dev)
    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
           "eq", "ne", "lt", "le", "gt", "ge", "lshift", "rshift"):
    for _form in ("__{}__", "__r{}__", "__i{}__"):
        if _form == "__r{}__" and _n in ("eq", "ne", "lt", "le", "gt", "ge"):
            continue
        if _form == "__i{}__" and _n in ("eq", "ne", "lt", "le", "gt", "ge"):
            continue
        setattr(_Counted, _form.format(_n), _counted_op(_form.format(_n)))
for _n in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(_Counted, _n, _counted_op(_n))
