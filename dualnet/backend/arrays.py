"""Array helpers every module uses, and the simulated devices' placement rules.

:func:`namespace` and :func:`array_device` ask an array for its namespace and device;
:func:`on_device_of` gives the context in which new arrays go beside it.  The simulated devices
(:mod:`.sim`) get CuPy's "current GPU" rule here (:class:`_SimNamespace`), because namespace
resolution must know of them before any device object exists.
"""
from __future__ import annotations

import contextlib
import threading

import array_api_compat
import numpy as _np

_HOST_TYPES = (_np.ndarray, _np.generic)   # NumPy's reductions return scalars, not 0-d arrays
HOST_XP = _np if getattr(_np, "__array_api_version__", "") >= "2023.12" else None
"""The host's namespace: NumPy's own where it implements the array API standard of 2023.12 (NumPy
2.1 on), without array-api-compat's wrapper around every call (each costs about a microsecond;
a small training step makes thousands of calls, docs/convolution.md, "Smaller choices");
None on an older NumPy, where array-api-compat's wraps it."""


def namespace(*arrays):
    """The array API namespace of ``arrays`` (they must share one): NumPy itself for NumPy
    arrays (:data:`HOST_XP`), array-api-compat's for CuPy's, the simulated devices' own."""
    if HOST_XP is not None and all(isinstance(a, _HOST_TYPES) for a in arrays):
        return HOST_XP
    xp = array_api_compat.array_namespace(*arrays)
    return _sim_namespace() if xp is _SIM_MODULE[0] else xp


def array_device(x):
    """The device object of array ``x``, to pass as ``device=`` when creating arrays beside it."""
    return array_api_compat.device(x)


def on_device_of(x):
    """A context in which new arrays and kernels go to ``x``'s device: CuPy's device object is
    one (it allocates on the current GPU whatever ``device=`` says); the simulated devices get
    the same rule (:class:`_SimNamespace`); on the host nothing to do."""
    d = array_device(x)
    if hasattr(d, "__enter__"):
        return d
    if _SIM_MODULE[0] is not None and isinstance(d, _SIM_MODULE[0].Device):
        return _SimBind(d)
    return contextlib.nullcontext()


def _dtype_name(dtype):
    s = str(dtype)
    for name in ("float64", "float32", "float16", "int64", "int32"):
        if name in s:
            return name
    raise TypeError(f"unsupported dtype {dtype!r}")


_SIM_MODULE = [None]   # array_api_strict, once a simulated device has imported it


class _SimCurrent(threading.local):
    """The simulated "current GPU" of a thread, as CUDA has one: device1 unless bound."""
    device = None


_SIM_CURRENT = _SimCurrent()


class _SimNamespace:
    """array_api_strict with the placement CuPy has through array-api-compat.

    CuPy allocates on the *current* GPU; array-api-compat ignores ``device=`` for CuPy in every
    creation function but ``asarray`` (array-api-compat PR #293: multi-device CuPy needs the
    current device or a context), and CuPy refuses to compute on arrays of another GPU.  So code
    that works on GPU 0 may fail, or allocate on the wrong GPU, on GPU 1 unless it runs inside
    ``device.bind()``.  The same rules here make that fail on a CPU-only machine: creation
    functions allocate on the current simulated device (device1 unless a :meth:`SimDevice.bind`
    is active), and any other function refuses arrays of another device, naming both.  Only
    namespace functions are covered, not operators on arrays.
    """

    _CREATE = frozenset({"empty", "zeros", "ones", "full", "arange", "eye", "linspace",
                         "empty_like", "zeros_like", "ones_like", "full_like"})

    def __init__(self, xp):
        self._xp = xp
        self.__name__ = xp.__name__

    def __getattr__(self, name):
        f = getattr(self._xp, name)
        if not callable(f) or isinstance(f, type) or name.startswith("__") or name in ("asarray", "Device"):
            return f
        xp = self._xp
        if name in self._CREATE:
            def call(*args, **kw):
                kw["device"] = _SIM_CURRENT.device or xp.Device("device1")
                return f(*args, **kw)
        else:
            def call(*args, **kw):
                _sim_check_current(args, kw)
                return f(*args, **kw)
        setattr(self, name, call)  # wrapped once per name
        return call


def _sim_check_current(args, kw):
    cur = _SIM_CURRENT.device
    for a in (*args, *kw.values()):
        for v in (a if isinstance(a, (list, tuple)) else (a,)):
            dev = getattr(v, "device", None)
            if dev is None or not hasattr(v, "shape"):
                continue
            if cur is None:
                cur = type(dev)("device1")
            if dev != cur and str(dev) != "CPU_DEVICE":
                raise ValueError(f"Array device must be same as the current device: array device = {dev} "
                                 f"while current = {cur} (compute on a simulated device runs inside "
                                 f"its device.bind(), as on CUDA)")


def _sim_namespace():
    xp = _SIM_MODULE[0]
    ns = getattr(xp, "_dualnet_namespace", None)
    if ns is None:
        ns = _SimNamespace(xp)
        xp._dualnet_namespace = ns
    return ns


class _SimBind:
    def __init__(self, dev):
        self._dev, self._old = dev, []

    def __enter__(self):
        self._old.append(_SIM_CURRENT.device)
        _SIM_CURRENT.device = self._dev
        return self

    def __exit__(self, *exc):
        _SIM_CURRENT.device = self._old.pop()
