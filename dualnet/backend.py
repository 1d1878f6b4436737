"""Devices: the one place that knows NumPy, CuPy and array_api_strict by name.

Everything else in dualnet is written against the Python array API standard and
takes its namespace ``xp`` from its arrays (:func:`namespace`) or from a
:class:`Device`.  A device is chosen once, at the entry point, with
:func:`get_device`:

``"cpu"``
    NumPy.
``"cuda"`` / ``"cuda:N"``
    CuPy on GPU N (install ``dualnet[cuda12]`` or ``dualnet[cuda13]``).
``"auto"``
    CUDA when CuPy is installed and a GPU answers, else CPU; ``Device.reason``
    says in one line why.
``"sim"``
    ``array_api_strict`` on its simulated ``Device("device1")``: a stand-in for
    a GPU on machines without one.  Host arrays that leak into device math and
    NumPy-only calls fail there exactly as they would on a GPU.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np
import array_api_compat

__all__ = ["Device", "DeviceError", "DeviceRNG", "HostRNG", "get_device", "namespace", "cuda_status", "DTYPES"]

DTYPES = ("float32", "float64")


class DeviceError(RuntimeError):
    """A device was asked for that cannot be used; the message says why and how to fix it."""


def namespace(*arrays):
    """The array API namespace of ``arrays`` (they must share one)."""
    return array_api_compat.array_namespace(*arrays)


def array_device(x):
    """The device object of array ``x``, to pass as ``device=`` when creating arrays beside it."""
    return array_api_compat.device(x)


# --------------------------------------------------------------------------- CUDA probing
def cuda_status():
    """Probe CuPy and the GPUs without raising.

    Returns
    -------
    dict
        ``available`` (bool), ``reason`` (one line when not available),
        ``cupy_version``, ``cuda_runtime``, ``driver``, ``devices`` (list of
        ``{"index", "name", "memory_bytes", "compute_capability"}``).
    """
    status = {"available": False, "reason": "", "cupy_version": None,
              "cuda_runtime": None, "driver": None, "devices": []}
    try:
        import cupy
    except ImportError:
        status["reason"] = ("CuPy is not installed (pip install 'dualnet[cuda12]' or "
                            "'dualnet[cuda13]' to match your CUDA driver)")
        return status
    except Exception as e:  # a broken CuPy install raises other errors on import
        status["reason"] = f"CuPy failed to import: {type(e).__name__}: {e}"
        return status
    status["cupy_version"] = cupy.__version__
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


# --------------------------------------------------------------------------- the Device
class Device:
    """An array namespace bound to one device.

    Attributes
    ----------
    kind : {"cpu", "cuda", "sim"}
    index : int or None
        GPU ordinal for ``"cuda"``.
    xp : module
        The array API namespace (array_api_compat's NumPy or CuPy, or array_api_strict).
    name : str
        Human-readable device name (CPU model, GPU name, or the simulated device).
    reason : str
        For ``auto``: one line saying why this device was chosen.
    """

    def __init__(self, kind, index=None, reason=""):
        self.kind = kind
        self.index = index
        self.reason = reason
        if kind == "cpu":
            import array_api_compat.numpy as xp
            self.xp = xp
            _keep_large_blocks()
            self._dev = "cpu"
            self.name = _cpu_name()
        elif kind == "cuda":
            import cupy
            import array_api_compat.cupy as xp
            self.xp = xp
            self._cupy = cupy
            self._cuda_device = cupy.cuda.Device(index or 0)
            self._cuda_device.use()
            self._dev = self._cuda_device
            props = cupy.cuda.runtime.getDeviceProperties(index or 0)
            n = props["name"]
            self.name = n.decode() if isinstance(n, bytes) else str(n)
        elif kind == "sim":
            import array_api_strict as xp
            self.xp = xp
            self._dev = xp.Device("device1")
            self.name = "array_api_strict simulated device1"
        else:  # pragma: no cover - guarded by get_device
            raise DeviceError(f"unknown device kind {kind!r}")

    # -- identity ------------------------------------------------------------------
    @property
    def spec(self):
        """The string that selects this device again (``"cpu"``, ``"cuda:0"``, ``"sim"``)."""
        return f"cuda:{self.index or 0}" if self.kind == "cuda" else self.kind

    def __repr__(self):
        return f"Device({self.spec!r}, name={self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Device) and self.spec == other.spec

    def __hash__(self):
        return hash(self.spec)

    @property
    def array_device(self):
        """The namespace's own device object, for ``device=`` arguments."""
        return self._dev

    # -- dtypes and moves ----------------------------------------------------------
    def dtype(self, name):
        """The namespace's dtype for ``"float32"``, ``"float64"``, ``"int64"``..."""
        return getattr(self.xp, str(name))

    def asarray(self, a, dtype=None):
        """Host data (or an array of this device) as an array on this device.

        On the CPU no copy is made when ``a`` already has the dtype (so a dataset is
        not duplicated): in-place updates of the result then change ``a`` too.
        """
        if dtype is not None and isinstance(dtype, str):
            dtype = self.dtype(dtype)
        if self.kind == "sim" and not isinstance(a, np.ndarray) and hasattr(a, "to_device"):
            a = a.to_device(self._dev)
            return a if dtype is None else self.xp.astype(a, dtype)
        if self.kind == "cuda":
            with self._cuda_device:
                return self.xp.asarray(a, dtype=dtype)
        if self.kind == "cpu":
            return self.xp.asarray(a, dtype=dtype)
        return self.xp.asarray(np.asarray(a), dtype=dtype, device=self._dev)

    def to_numpy(self, a):
        """Copy a device array (or a Python scalar) to a NumPy array on the host."""
        if isinstance(a, np.ndarray):
            return a
        if self.kind == "cuda" and hasattr(a, "get"):
            return a.get()
        if self.kind == "sim" and hasattr(a, "to_device"):
            import array_api_strict as xs
            return np.asarray(a.to_device(xs.Device("CPU_DEVICE")))
        return np.asarray(a)

    def check(self, x, what="array"):
        """Raise a clear error when ``x`` does not live on this device."""
        try:
            xp = namespace(x)
        except TypeError:
            raise DeviceError(f"{what} is a {type(x).__name__}, not an array on {self.spec}; "
                              f"move it with device.asarray(...)") from None
        dev = array_device(x)
        same = (xp is self.xp and (self.kind != "sim" or dev == self._dev)
                and (self.kind != "cuda" or getattr(dev, "id", 0) == (self.index or 0)))
        if not same:
            raise DeviceError(f"{what} lives on {dev!r} ({xp.__name__}) but the model is on "
                              f"{self.spec} ({self.xp.__name__}); move it with device.asarray(...)")

    # -- timing and memory ----------------------------------------------------------
    def synchronize(self):
        """Wait until all queued work on the device is done (a no-op on the host)."""
        if self.kind == "cuda":
            self._cupy.cuda.get_current_stream().synchronize()

    def timer(self):
        """A stopwatch that measures device time: CUDA events on GPU, ``perf_counter`` elsewhere.

        Use as ``t = device.timer(); t.start(); ...; ms = t.stop()``; ``stop``
        synchronizes before reading the clock.
        """
        return _CudaTimer(self._cupy) if self.kind == "cuda" else _HostTimer()

    def total_memory(self):
        """Bytes of memory of the device (GPU memory, or host RAM)."""
        if self.kind == "cuda":
            return int(self._cupy.cuda.runtime.getDeviceProperties(self.index or 0)["totalGlobalMem"])
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            return 8 << 30

    # -- randomness -----------------------------------------------------------------
    def rng(self, seed):
        """A random generator that draws directly on this device (see :class:`DeviceRNG`)."""
        return DeviceRNG(self, seed)

    def info(self):
        """A JSON-ready description of the device and its libraries."""
        d = {"spec": self.spec, "kind": self.kind, "name": self.name,
             "numpy": np.__version__}
        if self.kind == "cuda":
            st = cuda_status()
            d.update(cupy=st["cupy_version"], driver=st["driver"], cuda_runtime=st["cuda_runtime"])
        if self.kind == "sim":
            import array_api_strict
            d["array_api_strict"] = array_api_strict.__version__
        return d


class _HostTimer:
    def start(self):
        self._t = time.perf_counter()

    def stop(self):
        return (time.perf_counter() - self._t) * 1e3


class _CudaTimer:
    def __init__(self, cupy):
        self._cupy = cupy
        self._a = cupy.cuda.Event()
        self._b = cupy.cuda.Event()

    def start(self):
        self._a.record()

    def stop(self):
        self._b.record()
        self._b.synchronize()
        return self._cupy.cuda.get_elapsed_time(self._a, self._b)


class DeviceRNG:
    """Random numbers drawn on the device: dropout masks and shuffles cost no host transfer.

    NumPy and CuPy draw with their own ``Generator``; the simulated device has
    no generator of its own, so it draws on the host and moves the result,
    which is what a real accelerator would avoid but a stand-in may do.
    Streams are reproducible per seed and device, not across devices.
    """

    def __init__(self, device, seed):
        self.device = device
        if device.kind == "cuda":
            # CuPy's Generator has no permutation(); its RandomState draws both on the GPU.
            with device._cuda_device:
                self._g = device._cupy.random.RandomState(seed)
        else:
            self._g = np.random.default_rng(seed)

    def uniform(self, shape, dtype):
        """Uniform [0, 1) array of ``shape`` and float ``dtype`` on the device."""
        name = _dtype_name(dtype)
        if self.device.kind == "cuda":
            return self._g.random_sample(shape, dtype=name)
        r = self._g.random(shape, dtype=name)
        return r if self.device.kind != "sim" else self.device.asarray(r)

    def permutation(self, n):
        """A random permutation of ``range(n)`` (int64) on the device."""
        p = self._g.permutation(n)
        return p if self.device.kind != "sim" else self.device.asarray(p)


def _dtype_name(dtype):
    s = str(dtype)
    for name in ("float64", "float32", "float16", "int64", "int32"):
        if name in s:
            return name
    raise TypeError(f"unsupported dtype {dtype!r}")


class HostRNG:
    """The seeded host generator that draws initial weights, so one seed gives the same
    initial network on every device (the arrays are moved to the device afterwards)."""

    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def normal(self, shape, std=1.0):
        return std * self._g.standard_normal(shape)

    def uniform(self, low, high, size=None):
        return self._g.uniform(low, high, size)

    def zeros(self, shape):
        return np.zeros(shape)

    def ones(self, shape):
        return np.ones(shape)


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


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


# --------------------------------------------------------------------------- resolution
def get_device(spec="auto"):
    """Resolve a device string to a :class:`Device`.

    Parameters
    ----------
    spec : str or Device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or ``"sim"``.

    Raises
    ------
    DeviceError
        When an explicit ``cuda`` cannot be used; the message names the reason
        (CuPy not installed, no GPU, driver too old) and how to fix it.
    """
    if isinstance(spec, Device):
        return spec
    s = str(spec).strip().lower()
    if s == "cpu":
        return Device("cpu")
    if s in ("sim", "simulated", "array_api_strict"):
        return Device("sim")
    if s == "auto":
        st = cuda_status()
        if st["available"]:
            return Device("cuda", 0, reason=f"auto: CUDA GPU found ({st['devices'][0]['name']})")
        return Device("cpu", reason=f"auto: using the CPU because {st['reason']}")
    if s == "cuda" or s.startswith("cuda:"):
        idx = 0
        if ":" in s:
            try:
                idx = int(s.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"bad device {spec!r}: write cuda:N with N a GPU number, e.g. cuda:0") from None
        st = cuda_status()
        if not st["available"]:
            raise DeviceError(f"device {spec!r} is not usable: {st['reason']}. Use --device cpu or auto.")
        if idx >= len(st["devices"]):
            raise DeviceError(f"device {spec!r} does not exist: {len(st['devices'])} GPU(s) found "
                              f"(cuda:0..cuda:{len(st['devices']) - 1})")
        return Device("cuda", idx)
    raise DeviceError(f"unknown device {spec!r}: choose cpu, cuda, cuda:N, auto or sim")
