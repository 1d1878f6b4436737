"""The :class:`Device` interface every backend implements, and what host-side backends share."""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .arrays import array_device, namespace, _dtype_name
from .host import host_memory
from ..errors import DeviceError


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
        return host_memory("SC_PHYS_PAGES")

    def free_memory(self):
        """Bytes the device can still allocate now."""
        return host_memory("SC_AVPHYS_PAGES")

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


class _HostTimer:
    def start(self):
        self._t = time.perf_counter()

    def stop(self):
        return (time.perf_counter() - self._t) * 1e3


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
