"""Devices: the one place that knows NumPy, CuPy and array_api_strict by name.

Everything else in dualnet is written against the Python array API standard and
takes its namespace ``xp`` from its arrays (:func:`namespace`) or from a
:class:`Device`.  A device is chosen once, at the entry point, with
:func:`get_device`; each backend is one class:

``"cpu"`` → :class:`CPUDevice`
    NumPy.
``"cuda"`` / ``"cuda:N"`` → :class:`CUDADevice`
    CuPy on GPU N (install ``dualnet[cuda12]`` or ``dualnet[cuda13]``).
``"sim"`` / ``"sim:N"`` → :class:`SimDevice`
    ``array_api_strict`` on its simulated ``Device("deviceN")`` (N = 1 or 2; ``sim`` is
    ``sim:1``): a stand-in for a GPU on machines without one.  Host arrays that leak
    into device math, arrays left on the other simulated device and NumPy-only calls
    fail there exactly as they would on a GPU.
``"auto"``
    CUDA when CuPy is installed and a GPU answers, else CPU; ``Device.reason`` says in
    one line why.

A device never switches the process's current GPU as a side effect: work that must
run on it is bracketed by ``with device.bind():``.
"""
from __future__ import annotations

import contextlib
import os
import platform
import threading
import time

import numpy as np
import array_api_compat

from .errors import DeviceError

__all__ = ["Device", "CPUDevice", "CUDADevice", "SimDevice", "CountingDevice", "DeviceError", "HostRNG",
           "get_device", "rank_device", "namespace", "array_device", "on_device_of", "cuda_status", "versions", "cpu_name"]


def namespace(*arrays):
    """The array API namespace of ``arrays`` (they must share one)."""
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


# --------------------------------------------------------------------------- the Device
class Device:
    """An array namespace bound to one device; one subclass per backend.

    Attributes
    ----------
    kind : {"cpu", "cuda", "sim"}
        The backend, for display and for :attr:`spec`; code outside this module never
        branches on it (ask the device instead).
    index : int
        GPU ordinal (cuda) or simulated device number (sim); 0 on the CPU.
    xp : module
        The array API namespace (array_api_compat's NumPy or CuPy, or array_api_strict).
    name : str
        Human-readable device name (CPU model, GPU name, or the simulated device).
    reason : str
        For ``auto``: one line saying why this device was chosen.
    is_host : bool
        True when the arrays live in host memory and compute runs on the host's cores
        (worker processes then parallelise independent runs).
    """

    kind = ""
    is_host = False

    def __init__(self, index=0, reason=""):
        self.index = int(index)
        self.reason = reason

    # -- identity ------------------------------------------------------------------
    @property
    def spec(self):
        """The string that selects this device again (``"cpu"``, ``"cuda:0"``, ``"sim:1"``)."""
        return f"{self.kind}:{self.index}"

    def __repr__(self):
        return f"{type(self).__name__}({self.spec!r}, name={self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Device) and self.spec == other.spec

    def __hash__(self):
        return hash(self.spec)

    @property
    def array_device(self):
        """The namespace's own device object, for ``device=`` arguments."""
        return self._dev

    def describe(self, width=100):
        """One line of at most ``width`` characters for a log: spec, name and, for ``auto``, why
        in short (``reason`` and ``dualnet info`` have the whole story)."""
        line = f"{self.spec} ({self.name})"
        if self.reason:
            short = self.reason.split(" (")[0].split(";")[0]
            line += f" - {short}"
        if len(line) > width:
            line = line[:width - 3].rstrip() + "..."
        return line

    @property
    def torch_device(self):
        """PyTorch's name for the same hardware (for the bench's yardstick), or None."""
        return None

    # -- dtypes and moves ----------------------------------------------------------
    def dtype(self, name):
        """The namespace's dtype for ``"float32"``, ``"float64"``, ``"int64"``..."""
        return getattr(self.xp, str(name))

    def asarray(self, a, dtype=None):
        """Host data, or an array of any device of this backend, as an array on this device."""
        raise NotImplementedError

    def to_numpy(self, a):
        """Copy a device array (or a Python scalar) to a NumPy array on the host."""
        raise NotImplementedError

    def owns(self, x):
        """True when ``x`` is an array of this device."""
        try:
            return namespace(x) is self.xp and self._same(array_device(x))
        except TypeError:
            return False

    def _same(self, dev):
        return True

    def check(self, x, what="array"):
        """Raise :class:`DeviceError` naming both devices when ``x`` is not an array of this one."""
        if self.owns(x):
            return
        try:
            other = f"{array_device(x)!r} ({namespace(x).__name__})"
        except TypeError:
            raise DeviceError(f"{what} is a {type(x).__name__}, not an array on {self.spec}; "
                              f"move it with device.asarray(...)") from None
        raise DeviceError(f"{what} lives on {other} but the model is on {self.spec} "
                          f"({self.xp.__name__}); move it with device.asarray(...)")

    # -- placement, timing and memory ---------------------------------------------------
    def bind(self):
        """A context in which new arrays and kernels go to this device (no global switch)."""
        return contextlib.nullcontext()

    def synchronize(self):
        """Wait until all queued work on the device is done (a no-op on the host)."""

    def timer(self):
        """A stopwatch of device time: ``t = device.timer(); t.start(); ...; ms = t.stop()``;
        ``stop`` synchronizes before reading the clock."""
        return _HostTimer()

    def total_memory(self):
        """Bytes of memory of the device (GPU memory, or host RAM)."""
        return _host_memory("SC_PHYS_PAGES")

    def free_memory(self):
        """Bytes the device can still allocate now."""
        return _host_memory("SC_AVPHYS_PAGES")

    def peak_memory(self, fn):
        """Peak bytes allocated while running ``fn()`` once, beyond what was allocated before
        it (a training step's activations, gradients and temporaries, not the parameters and
        data already there), or None where it cannot be measured."""
        return None

    # -- randomness -----------------------------------------------------------------
    def rng(self, seed):
        """A random generator drawing directly on this device (``uniform``, ``permutation``).

        Streams are reproducible per seed and backend, not across backends."""
        raise NotImplementedError

    def info(self):
        """A JSON-ready description of the device and its libraries."""
        return {"spec": self.spec, "kind": self.kind, "name": self.name, "numpy": np.__version__}

    # -- collectives (data-parallel training, :mod:`dualnet.distributed`) -----------------
    def collectives(self, rank, size, bcast_bytes):
        """Collectives among ``size`` processes that run on the device itself, or None.

        ``bcast_bytes(data)`` sends rank 0's ``bytes`` to every rank (others pass None) and
        returns them: the out-of-band channel (MPI) that hands over what the device library
        needs to connect.  The result has ``allreduce_sum_(a)`` and ``bcast_(a, root)``, in place
        on device arrays of this device, queued on its stream (no host wait), and ``close()``.
        None (every host device, and the simulated one) means: reduce from host memory
        through MPI.  CUDA answers with NCCL.
        """
        return None


class CPUDevice(Device):
    """NumPy on the host's cores."""

    kind = "cpu"
    is_host = True

    def __init__(self, reason=""):
        super().__init__(0, reason)
        import array_api_compat.numpy as xp
        self.xp = xp
        self._dev = "cpu"
        self.name = cpu_name()
        _keep_large_blocks()

    @property
    def spec(self):
        return "cpu"

    @property
    def torch_device(self):
        return "cpu"

    def asarray(self, a, dtype=None):
        """No copy is made when ``a`` already has the dtype (so a dataset is not duplicated):
        in-place updates of the result then change ``a`` too."""
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def peak_memory(self, fn):
        # NumPy reports its buffers to tracemalloc, which counts from zero at start().
        import tracemalloc
        tracemalloc.start()
        try:
            fn()
            return int(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()

    def rng(self, seed):
        return _NumPyRNG(seed)


class CUDADevice(Device):
    """CuPy on one GPU; every allocation of dualnet's code on it runs inside :meth:`bind`."""

    kind = "cuda"

    def __init__(self, index=0, reason=""):
        super().__init__(index, reason)
        import cupy
        import array_api_compat.cupy as xp
        self.xp = xp
        self._cupy = cupy
        self._dev = cupy.cuda.Device(self.index)   # not .use(): no process-wide switch
        n = cupy.cuda.runtime.getDeviceProperties(self.index)["name"]
        self.name = n.decode() if isinstance(n, bytes) else str(n)

    @property
    def torch_device(self):
        return f"cuda:{self.index}"

    def _same(self, dev):
        return getattr(dev, "id", None) == self.index

    def bind(self):
        return self._dev

    def asarray(self, a, dtype=None):
        """Host data is copied to this GPU; an array of another GPU is copied across."""
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        with self._dev:
            if isinstance(a, self._cupy.ndarray) and a.device.id != self.index:
                a = a.copy()  # CuPy copies into the current device
            return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return a.get() if isinstance(a, self._cupy.ndarray) else np.asarray(a)

    def synchronize(self):
        with self._dev:
            self._cupy.cuda.get_current_stream().synchronize()

    def timer(self):
        return _CudaTimer(self._cupy, self._dev)

    def total_memory(self):
        with self._dev:
            return int(self._cupy.cuda.runtime.memGetInfo()[1])

    def free_memory(self):
        # Free memory of the driver plus what CuPy's pool holds but does not use.
        with self._dev:
            pool = self._cupy.get_default_memory_pool()
            return int(self._cupy.cuda.runtime.memGetInfo()[0]) + int(pool.free_bytes())

    def peak_memory(self, fn):
        # A memory hook sees every allocation from CuPy's pool and every return to it: the high
        # water of their running sum is the peak, comparable with PyTorch's max_memory_allocated
        # minus what was allocated before (the pool's total_bytes would count cached blocks too).
        hook = _peak_hook(self._cupy, self.index)
        with self._dev:
            self.synchronize()
            with hook:
                fn()
                self.synchronize()
        return int(hook.peak)

    def rng(self, seed):
        return _CuPyRNG(self, seed)

    def info(self):
        st = cuda_status(index=self.index)
        return {**super().info(), "cupy": st["cupy_version"], "driver": st["driver"],
                "cuda_runtime": st["cuda_runtime"]}

    def collectives(self, rank, size, bcast_bytes):
        """NCCL among ``size`` processes, one GPU each: rank 0 draws NCCL's unique id,
        ``bcast_bytes`` (MPI) hands it to the others, and each rank joins on this GPU."""
        try:
            from cupy.cuda import nccl
            ok, why = nccl.available, "CuPy found no NCCL library"
        except Exception as e:  # ImportError, or a broken NCCL
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok:
            raise DeviceError(f"multi-GPU training on {self.spec} needs NCCL, which is not usable ({why}); "
                              f"pip install nvidia-nccl-cu12 (or -cu13, matching CuPy's CUDA), or train "
                              f"with --device cpu", param="device")
        uid = _nccl_id_to_bytes(nccl.get_unique_id()) if rank == 0 else None
        uid = _nccl_id_from_bytes(bcast_bytes(uid))
        with self._dev:
            comm = nccl.NcclCommunicator(int(size), uid, int(rank))
        return _NcclCollectives(self, nccl, comm)


# --------------------------------------------------------------------------- the simulated GPUs
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


def _peak_hook(cupy, index):
    """A CuPy memory hook that tracks the high water of bytes taken from GPU ``index``'s pool."""
    class PeakHook(cupy.cuda.MemoryHook):
        name = "DualnetPeakHook"

        def __init__(self):
            self.now = self.peak = 0

        def malloc_postprocess(self, **kw):   # CuPy passes device_id, size, mem_size, mem_ptr, pmem_id
            if kw["device_id"] == index:
                self.now += kw["mem_size"]
                self.peak = max(self.peak, self.now)

        def free_postprocess(self, **kw):
            if kw["device_id"] == index:
                self.now -= kw["mem_size"]

    return PeakHook()


class SimDevice(Device):
    """array_api_strict's simulated device N (1 or 2): arrays of any other device are refused,
    and compute outside :meth:`bind` runs on the "current" device1 (see :class:`_SimNamespace`)."""

    kind = "sim"

    def __init__(self, index=1, reason=""):
        super().__init__(index, reason)
        import array_api_strict
        _SIM_MODULE[0] = array_api_strict
        self.xp = _sim_namespace()
        self._dev = array_api_strict.Device(f"device{self.index}")
        self._host = array_api_strict.Device("CPU_DEVICE")
        self.name = f"array_api_strict simulated device{self.index}"

    def _same(self, dev):
        return dev == self._dev

    def bind(self):
        return _SimBind(self._dev)

    def asarray(self, a, dtype=None):
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        if hasattr(a, "to_device") and not isinstance(a, np.ndarray):
            a = a.to_device(self._dev)
            return a if dtype is None else _SIM_MODULE[0].astype(a, dtype)  # a transfer: any current device
        return self.xp.asarray(np.asarray(a), dtype=dtype, device=self._dev)

    def to_numpy(self, a):
        if hasattr(a, "to_device") and not isinstance(a, np.ndarray):
            return np.asarray(a.to_device(self._host))
        return np.asarray(a)

    def rng(self, seed):
        return _SimRNG(self, seed)

    def info(self):
        import array_api_strict
        return {**super().info(), "array_api_strict": array_api_strict.__version__}


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


def _host_memory(which):
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf(which)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


# --------------------------------------------------------------------------- NCCL
def _nccl_id_to_bytes(uid):
    """NCCL's unique id as 129 bytes: a type tag (CuPy >= 14 gives bytes, older a tuple of
    signed chars) and the 128 bytes."""
    if isinstance(uid, (bytes, bytearray)):
        return b"\x01" + bytes(uid)
    return b"\x00" + bytes(int(c) & 0xFF for c in uid)


def _nccl_id_from_bytes(raw):
    raw = bytes(raw)
    if raw[:1] == b"\x01":
        return raw[1:]
    return tuple(c - 256 if c > 127 else c for c in raw[1:])


class _NcclCollectives:
    """In-place NCCL collectives on one GPU, queued on its current stream."""

    def __init__(self, device, nccl, comm):
        self._device, self._nccl, self._comm = device, nccl, comm
        self._types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
                       "int64": nccl.NCCL_INT64, "int32": nccl.NCCL_INT32}
        self.name = "NCCL"

    def _args(self, a):
        return a.data.ptr, int(a.size), self._types[_dtype_name(a.dtype)]

    def allreduce_sum_(self, a):
        ptr, n, t = self._args(a)
        with self._device.bind():
            self._comm.allReduce(ptr, ptr, n, t, self._nccl.NCCL_SUM,
                                 self._device._cupy.cuda.get_current_stream().ptr)
        return a

    def bcast_(self, a, root=0):
        ptr, n, t = self._args(a)
        with self._device.bind():
            self._comm.bcast(ptr, n, t, int(root), self._device._cupy.cuda.get_current_stream().ptr)
        return a

    def close(self):
        comm, self._comm = self._comm, None
        if comm is not None:
            try:
                comm.destroy()
            except Exception:  # already torn down with the process's CUDA context
                pass


# --------------------------------------------------------------------------- timers
class _HostTimer:
    def start(self):
        self._t = time.perf_counter()

    def stop(self):
        return (time.perf_counter() - self._t) * 1e3


class _CudaTimer:
    def __init__(self, cupy, dev):
        self._cupy, self._dev = cupy, dev
        with dev:
            self._a = cupy.cuda.Event()
            self._b = cupy.cuda.Event()

    def start(self):
        with self._dev:
            self._a.record()

    def stop(self):
        with self._dev:
            self._b.record()
            self._b.synchronize()
            return self._cupy.cuda.get_elapsed_time(self._a, self._b)


# --------------------------------------------------------------------------- random generators
class _NumPyRNG:
    """NumPy's Generator: draws straight into host arrays."""

    def __init__(self, seed):
        self.reseed(seed)

    def reseed(self, seed):
        """Restart the stream at ``seed``: what follows is what a new generator of ``seed`` draws."""
        self._g = np.random.default_rng(seed)

    def uniform(self, shape, dtype):
        """Uniform [0, 1) array of ``shape`` and float ``dtype`` on the device."""
        return self._g.random(shape, dtype=_dtype_name(dtype))

    def permutation(self, n):
        """A random permutation of ``range(n)`` (int64) on the device."""
        return self._g.permutation(n)


class _CuPyRNG:
    """CuPy's RandomState (its Generator has no permutation), drawing on the device's GPU.

    Philox, a counter-based generator: seeding it sets a key and launches nothing, where the
    default XORWOW initialises a state per thread with a kernel.  Training re-seeds the dropout
    generators every step (so a resumed run draws the same masks), so seeding must be cheap:
    :meth:`reseed` keeps the one cuRAND generator (``RandomState.seed`` sets the key and puts the
    offset back to 0, the state of a new generator), where a new ``RandomState`` per step would
    create a cuRAND generator each time and leave its destruction to the garbage collector.
    """

    def __init__(self, device, seed):
        self._dev = device.bind()
        cp = device._cupy
        with self._dev:
            self._g = cp.random.RandomState(seed, method=cp.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)

    def reseed(self, seed):
        with self._dev:
            self._g.seed(seed)

    def uniform(self, shape, dtype):
        with self._dev:
            return self._g.random_sample(shape, dtype=_dtype_name(dtype))

    def permutation(self, n):
        with self._dev:
            return self._g.permutation(n)


class _SimRNG(_NumPyRNG):
    """The simulated device has no generator of its own: it draws on the host and moves the
    result, which a real accelerator avoids but a stand-in may do."""

    def __init__(self, device, seed):
        super().__init__(seed)
        self._device = device

    def uniform(self, shape, dtype):
        return self._device.asarray(super().uniform(shape, dtype))

    def permutation(self, n):
        return self._device.asarray(super().permutation(n))


class HostRNG:
    """The seeded host generator that draws initial weights, so one seed gives the same
    initial network on every device (the arrays are moved to the device afterwards)."""

    def __init__(self, seed=0):
        self._g = np.random.default_rng(seed)

    def normal(self, shape, std=1.0):
        return std * self._g.standard_normal(shape)

    @staticmethod
    def zeros(shape):
        return np.zeros(shape)

    @staticmethod
    def ones(shape):
        return np.ones(shape)


# --------------------------------------------------------------------------- CUDA probing
INSTALL_HINT = ("install the CUDA libraries from the package index with pip install 'dualnet[cuda12]' "
                "(CUDA 12 driver, >= 525) or 'dualnet[cuda13]' (CUDA 13 driver, >= 580), which pull "
                "cupy-cudaXXx[ctk]; or install the CUDA Toolkit of your driver's version")

# What the first real step needs besides the driver, in the order a step needs it: each probe
# runs on the GPU and names the library that a failure means is missing.
_LIBRARY_PROBES = (
    ("an elementwise kernel", "NVRTC (CUDA's runtime compiler, libnvrtc)",
     lambda cp: (cp.arange(4, dtype=cp.float32) * 2 + 1).sum()),
    ("a matrix product", "cuBLAS (libcublas)",
     lambda cp: cp.ones((4, 4), dtype=cp.float32) @ cp.ones((4, 4), dtype=cp.float32)),
    ("a random draw", "cuRAND (libcurand)",
     lambda cp: cp.random.RandomState(0).random_sample(4, dtype="float32")),
)

_STATUS = {}   # GPU index -> the probe's result for that GPU


def _probe_libraries(cupy, index):
    """Run a tiny kernel, a matmul and a random draw on GPU ``index``; None when all work, else
    one line naming what failed and the library that is missing."""
    for what, library, probe in _LIBRARY_PROBES:
        try:
            with cupy.cuda.Device(index):
                probe(cupy)
                cupy.cuda.Stream.null.synchronize()
        except Exception as e:  # ImportError, CUDARuntimeError, CompileException, ... all mean: unusable
            return (f"GPU {index} answers but {what} failed, so {library} is missing or does not match "
                    f"the driver ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {INSTALL_HINT}")
    return None


def cuda_status(refresh=False, index=0):
    """Probe CuPy and GPU ``index`` without raising (once per process and GPU; ``refresh``
    probes again).

    Beyond the driver's device count, the probe runs an elementwise kernel, a matrix product
    and a random draw on GPU ``index`` -- the GPU the process is going to use, and no other:
    a probe creates a CUDA context on the GPU it runs on, which costs memory on every rank
    and fails on a GPU in exclusive-process mode that another process holds.  So a machine
    whose CuPy lacks NVRTC, cuBLAS or cuRAND falls back to the CPU with a reason instead of
    failing at the first training step.

    Returns
    -------
    dict
        ``available`` (bool: GPU ``index`` exists and runs all three), ``reason`` (one line when
        not available), ``index``, ``cupy_version``, ``cuda_runtime``, ``driver``, ``devices``
        (every GPU, as ``{"index", "name", "memory_bytes", "compute_capability"}``).
    """
    index = int(index)
    if refresh:
        _STATUS.clear()
    if index not in _STATUS:
        _STATUS[index] = _cuda_status(index)
    st = _STATUS[index]
    return dict(st, devices=list(st["devices"]))


def _cuda_status(index):
    status = {"available": False, "reason": "", "index": index, "cupy_version": None,
              "cuda_runtime": None, "driver": None, "devices": []}
    try:
        import cupy
    except ImportError:
        status["reason"] = ("CuPy is not installed (pip install 'dualnet[cuda12]' for a CUDA 12 driver "
                            "or 'dualnet[cuda13]' for CUDA 13)")
        return status
    except Exception as e:  # a broken CuPy install raises other errors on import
        status["reason"] = f"CuPy failed to import: {type(e).__name__}: {e}"
        return status
    status["cupy_version"] = getattr(cupy, "__version__", None)
    rt = cupy.cuda.runtime
    try:
        n = rt.getDeviceCount()
    except Exception as e:
        status["reason"] = _explain_cuda_error(e)
        return status
    try:
        status["driver"] = _fmt_cuda_version(rt.driverGetVersion())
        status["cuda_runtime"] = _fmt_cuda_version(rt.runtimeGetVersion())
    except Exception:
        pass
    if n == 0:
        status["reason"] = "CuPy is installed but no CUDA GPU was found"
        return status
    for i in range(n):
        try:
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            status["devices"].append({"index": i, "name": name,
                                      "memory_bytes": int(p["totalGlobalMem"]),
                                      "compute_capability": f"{p['major']}.{p['minor']}"})
        except Exception as e:
            status["reason"] = f"GPU {i} did not answer: {_explain_cuda_error(e)}"
            return status
    if index >= n:
        status["reason"] = f"GPU {index} does not exist: {n} GPU(s) found (cuda:0..cuda:{n - 1})"
        return status
    missing = _probe_libraries(cupy, index)
    if missing:
        status["reason"] = missing
        return status
    status["available"] = True
    return status


def _fmt_cuda_version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"


def _has_driver():
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def _explain_cuda_error(e):
    msg = str(e)
    low = msg.lower()
    if ("insufficient" in low or "driver" in low) and not _has_driver():
        return f"no NVIDIA driver was found on this machine (libcuda.so.1 is missing; CuPy says: {msg})"
    if "insufficient" in low or "driver version" in low:
        return f"the NVIDIA driver is too old for this CuPy build ({msg}); update the driver or install the CuPy extra for an older CUDA"
    if "no cuda-capable device" in low or "nodevice" in low or "no device" in low:
        return f"no CUDA GPU was found ({msg})"
    if "libcuda" in low or "cannot open shared object" in low or "not found" in low:
        return f"no NVIDIA driver was found on this machine ({msg})"
    return f"CUDA is not usable: {type(e).__name__}: {msg}"


# --------------------------------------------------------------------------- host facts
_TUNED = False


def _keep_large_blocks():
    """Stop glibc from returning large freed blocks to the OS after every use.

    A training step allocates and frees many multi-megabyte temporaries.  By default
    glibc serves each from a fresh mmap and unmaps it on free, so every step pays
    page faults on all of them.  Serving them from the heap and keeping freed heap
    lets the next step reuse the pages (measured on 2 cores: SimpleConvNet step at
    batch 100, median 25-27 ms with this against 28-29 ms without; noisy).  Done
    once, when a CPU device is created; a no-op where libc has no ``mallopt`` or
    ``DUALNET_NO_MALLOPT`` is set.
    """
    global _TUNED
    if _TUNED or os.environ.get("DUALNET_NO_MALLOPT") or not platform.system() == "Linux":
        return
    _TUNED = True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        libc.mallopt(M_MMAP_MAX, 0)            # serve large blocks from the heap too...
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # ...and keep up to 1 GiB of freed heap for reuse
    except (OSError, AttributeError):
        pass


def cpu_name():
    """The CPU's model name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def blas_info():
    """BLAS library and thread count of NumPy, via threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            return {"blas": libs[0].get("internal_api"), "blas_threads": libs[0].get("num_threads"),
                    "blas_version": libs[0].get("version")}
    except Exception:  # threadpoolctl missing or unable to inspect this BLAS
        pass
    return {"blas": None, "blas_threads": None, "blas_version": None}


def versions():
    """Versions of Python, NumPy (and its BLAS), CuPy, array-api packages and PyTorch (None if absent)."""
    v = {"python": platform.python_version(), "numpy": np.__version__, **blas_info(),
         "cpu_count": os.cpu_count()}
    for mod in ("cupy", "array_api_strict", "array_api_compat", "torch"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # not installed, or a broken install: report it as absent
            v[mod] = None
    return v


# --------------------------------------------------------------------------- resolution
def get_device(spec="auto"):
    """Resolve a device string to a :class:`Device`.

    Parameters
    ----------
    spec : str or Device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``, ``"sim"`` or ``"sim:N"``.

    Raises
    ------
    DeviceError
        When the device cannot be used; the message names the reason (CuPy not
        installed, no GPU, driver too old) and how to fix it.
    """
    if isinstance(spec, Device):
        return spec
    s = str(spec).strip().lower()
    kind, _, num = s.partition(":")
    if num:
        try:
            idx = int(num)
        except ValueError:
            raise DeviceError(f"bad device {spec!r}: write {kind}:N with N a device number, e.g. {kind}:0",
                              param="device") from None
    if s == "cpu":
        return CPUDevice()
    if kind == "sim":
        idx = idx if num else 1
        if idx not in (1, 2):
            raise DeviceError(f"device {spec!r} does not exist: the simulated devices are sim:1 and sim:2",
                              param="device")
        return SimDevice(idx)
    if s == "auto":
        st = cuda_status()
        if st["available"]:
            return CUDADevice(0, reason=f"auto: CUDA GPU found ({st['devices'][0]['name']})")
        return CPUDevice(reason=f"auto: using the CPU because {st['reason']}")
    if kind == "cuda":
        return _cuda_device(spec, idx if num else 0)
    raise DeviceError(f"unknown device {spec!r}: choose cpu, cuda, cuda:N, auto or sim",
                      param="device")


def _cuda_device(spec, index, reason=""):
    """CUDADevice ``index`` after probing that GPU (and no other), or a DeviceError saying why not."""
    st = cuda_status(index=index)
    if st["devices"] and index >= len(st["devices"]):
        raise DeviceError(f"device {spec!r} does not exist: {len(st['devices'])} GPU(s) found "
                          f"(cuda:0..cuda:{len(st['devices']) - 1})", param="device")
    if not st["available"]:
        raise DeviceError(f"device {spec!r} is not usable: {st['reason']}. Use device='cpu' or 'auto'.",
                          param="device")
    return CUDADevice(index, reason=reason)


def rank_device(spec, local_rank, local_size):
    """The device of one process of a data-parallel job: ``local_rank`` of the ``local_size``
    processes on this host.

    ``"cuda"`` gives each process its own GPU, ``cuda:<local_rank>`` (a DeviceError when the
    host has fewer GPUs than processes); ``"auto"`` does the same when CUDA is usable and
    there are enough GPUs, else the CPU (``reason`` says why); ``"cuda:N"`` is refused when
    several processes share the host (they would share GPU N, which NCCL forbids); the CPU
    and the simulated devices are the same for every process.
    """
    if isinstance(spec, Device):
        return spec
    s = str(spec).strip().lower()
    kind, _, num = s.partition(":")
    local_rank, local_size = int(local_rank), int(local_size)
    if kind not in ("cuda", "auto") or local_size < 1:
        return get_device(spec)
    if num:
        if local_size > 1:
            raise DeviceError(f"device {spec!r} would put all {local_size} processes of this host on one GPU; "
                              f"pass --device cuda to give each process its own (cuda:<local rank>)",
                              param="device")
        return get_device(spec)
    # Each rank probes only the GPU it will use: its local rank's.
    st = cuda_status(index=local_rank)
    n = len(st["devices"])
    if kind == "auto":
        if local_size > n and n:
            return CPUDevice(reason=f"auto: using the CPU because {local_size} processes run on this host "
                                    f"but it has {n} GPU(s); launch at most {n} per host to use them")
        if not st["available"]:
            return CPUDevice(reason=f"auto: using the CPU because {st['reason']}")
        return CUDADevice(local_rank, reason=f"auto: GPU {local_rank} of this host for local rank {local_rank}")
    if n and local_size > n:
        raise DeviceError(f"{local_size} processes run on this host but it has {n} GPU(s) "
                          f"(cuda:0..cuda:{n - 1}); launch at most {n} per host (mpiexec -ppn {n}) or "
                          f"use --device cpu", param="device")
    return _cuda_device(spec, local_rank)
