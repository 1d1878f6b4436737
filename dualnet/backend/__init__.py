"""Devices: the one package that knows NumPy, CuPy and array_api_strict by name.

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

One module per job: :mod:`.arrays` (namespace of an array, the simulated devices' placement
rule), :mod:`.device` (the interface), :mod:`.cpu`, :mod:`.cuda`, :mod:`.sim` (one class per
backend), :mod:`.resolve` (:func:`get_device`), :mod:`.probe` (:func:`cuda_status`),
:mod:`.host` (host facts and the allocator tuning the entry points call) and
:mod:`.profiling` (:class:`CountingDevice`).  Import from the package, not its modules.
"""
from .arrays import array_device, namespace, on_device_of
from .cpu import CPUDevice
from .cuda import CUDADevice
from .device import Device, HostRNG
from .host import blas_info, cpu_name, tune_allocator, versions
from .probe import INSTALL_HINT, cuda_status
from .profiling import CountingDevice
from .resolve import cuda_device, get_device
from .sim import SimDevice
from ..errors import DeviceError

__all__ = ["Device", "CPUDevice", "CUDADevice", "SimDevice", "CountingDevice", "DeviceError", "HostRNG",
           "get_device", "cuda_device", "namespace", "array_device", "on_device_of", "cuda_status", "versions",
           "cpu_name", "blas_info", "tune_allocator", "INSTALL_HINT"]
