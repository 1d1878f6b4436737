"""One suite, parametrized over devices: cpu, the simulated device (array_api_strict), and cuda
when a GPU answers (marked ``gpu``; skipped cleanly otherwise)."""
import numpy as np
import pytest

from dualnet.backend import cuda_status, get_device

_CUDA = cuda_status()

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("sim", id="sim", marks=[pytest.mark.sim]),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not _CUDA["available"], reason=f"no usable GPU: {_CUDA['reason']}")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return get_device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def away_from_zero(rng, shape, lo=0.1):
    """Random values with |v| >= lo, so ReLU/max kinks are not straddled by finite differences."""
    v = rng.uniform(lo, 1.0, shape)
    return v * rng.choice([-1.0, 1.0], shape)
