"""Facts about the host (CPU model, BLAS, versions, memory) and its allocator tuning."""
from __future__ import annotations

import os
import platform

import numpy as np


_TUNED = False


def tune_allocator():
    """Stop glibc from returning large freed blocks to the OS after every use.

    A training step allocates and frees many multi-megabyte temporaries.  By default
    glibc serves each from a fresh mmap and unmaps it on free, so every step pays
    page faults on all of them.  Serving them from the heap and keeping freed heap
    lets the next step reuse the pages (a faster training step on the CPU: the measurement
    and its command are in docs/convolution.md, "Smaller choices").  It changes
    the whole process's allocator, so a library does not do it behind its user's back:
    the entry points (``dualnet`` commands, the book's scripts, the bench) call it once.
    A no-op after the first call, where libc has no ``mallopt``, or when
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


def host_memory(which):
    """Bytes of host RAM: ``"SC_PHYS_PAGES"`` in all, ``"SC_AVPHYS_PAGES"`` free now."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf(which)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30
