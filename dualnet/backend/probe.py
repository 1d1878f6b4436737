"""Probing CUDA without raising: is CuPy installed, does a GPU answer, are its libraries there."""
from __future__ import annotations


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
