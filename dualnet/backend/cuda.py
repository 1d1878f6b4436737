"""The CUDA backend: CuPy on one GPU, its timers, generator, memory hook and NCCL.

The one module of dualnet that calls CuPy (the probe in :mod:`.probe` only asks it questions).
"""
from __future__ import annotations

import numpy as np

from .arrays import _dtype_name
from .device import Device
from .probe import cuda_status
from ..errors import DeviceError


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


# NCCL
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
