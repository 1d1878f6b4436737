"""From a device string to a :class:`Device`: the only place that maps names to backends."""
from __future__ import annotations

from .cpu import CPUDevice
from .cuda import CUDADevice
from .device import Device
from .probe import cuda_status
from .sim import SimDevice
from ..errors import DeviceError


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
        return cuda_device(spec, idx if num else 0)
    raise DeviceError(f"unknown device {spec!r}: choose cpu, cuda, cuda:N, auto or sim",
                      param="device")


def cuda_device(spec, index, reason=""):
    """CUDADevice ``index`` after probing that GPU (and no other), or a DeviceError saying why not."""
    st = cuda_status(index=index)
    if st["devices"] and index >= len(st["devices"]):
        raise DeviceError(f"device {spec!r} does not exist: {len(st['devices'])} GPU(s) found "
                          f"(cuda:0..cuda:{len(st['devices']) - 1})", param="device")
    if not st["available"]:
        raise DeviceError(f"device {spec!r} is not usable: {st['reason']}. Use device='cpu' or 'auto'.",
                          param="device")
    return CUDADevice(index, reason=reason)
