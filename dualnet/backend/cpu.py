"""The CPU backend: NumPy on the host's cores."""
from __future__ import annotations

import numpy as np

from .device import Device, _NumPyRNG
from .host import cpu_name


class CPUDevice(Device):
    """NumPy on the host's cores."""

    kind = "cpu"
    is_host = True

    def __init__(self, reason=""):
        super().__init__(0, reason)
        from .arrays import HOST_XP
        if HOST_XP is None:
            import array_api_compat.numpy as HOST_XP
        self.xp = HOST_XP
        self._dev = "cpu"
        self.name = cpu_name()

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
