"""The simulated GPUs: array_api_strict's devices 1 and 2, a stand-in for CUDA without one."""
from __future__ import annotations

import numpy as np

from .arrays import _SIM_MODULE, _SimBind, _sim_namespace
from .device import Device, _NumPyRNG


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
