import ast
import pathlib

import numpy as np
import pytest

from dualnet.backend import Device, DeviceError, cuda_status, get_device

PKG = pathlib.Path(__file__).resolve().parents[1] / "dualnet"
# Host-side modules (files, plots, command line, benchmarks) may use NumPy for host arrays;
# compute modules take their namespace from arrays or the device.
HOST_MODULES = {"backend.py", "data.py", "checkpoint.py", "cli.py", "bench.py", "plots.py",
                "studies.py", "__init__.py", "__main__.py"}


def test_only_backend_names_numpy_or_cupy():
    offenders = []
    for f in sorted(PKG.glob("*.py")):
        if f.name in HOST_MODULES:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{f.name}: {n}" for n in names if n.split(".")[0] in ("numpy", "cupy")]
    assert offenders == []
    # and the compute modules exist, so the check is not vacuous
    assert {"functions.py", "layers.py", "optimizers.py", "models.py", "trainer.py"} <= {f.name for f in PKG.glob("*.py")}


def test_cpu_and_sim_devices():
    cpu, sim = get_device("cpu"), get_device("sim")
    assert cpu.kind == "cpu" and cpu.spec == "cpu"
    assert sim.kind == "sim" and "device1" in repr(sim.array_device)
    a = sim.asarray(np.arange(6.0).reshape(2, 3), "float32")
    assert str(a.dtype).endswith("float32")
    np.testing.assert_array_equal(sim.to_numpy(a), np.arange(6.0).reshape(2, 3))


def test_simulated_device_rejects_host_arrays():
    sim = get_device("sim")
    a = sim.asarray(np.ones(3))
    with pytest.raises(ValueError, match="different devices"):
        _ = a + sim.xp.asarray(np.ones(3))  # an array on the strict namespace's CPU device
    with pytest.raises(DeviceError, match="move it with device.asarray"):
        sim.check(np.ones(3), "input")


def test_model_rejects_input_from_another_device():
    from dualnet import TwoLayerNet
    net = TwoLayerNet(4, 3, 2, device="sim")
    with pytest.raises(DeviceError, match="sim"):
        net.predict(get_device("cpu").asarray(np.ones((1, 4), np.float32)))


def test_unknown_and_malformed_specs():
    with pytest.raises(DeviceError, match="choose cpu, cuda, cuda:N, auto or sim"):
        get_device("tpu")
    with pytest.raises(DeviceError, match="cuda:N"):
        get_device("cuda:x")


def test_auto_says_why():
    dev = get_device("auto")
    assert dev.reason.startswith("auto:")
    st = cuda_status()
    if st["available"]:
        assert dev.kind == "cuda"
    else:
        assert dev.kind == "cpu" and st["reason"] in dev.reason


@pytest.mark.skipif(cuda_status()["available"], reason="a GPU is usable here")
def test_explicit_cuda_without_gpu_is_a_clear_error():
    st = cuda_status()
    with pytest.raises(DeviceError) as e:
        get_device("cuda")
    assert st["reason"] in str(e.value) and "--device cpu" in str(e.value)


def test_cupy_installed_without_gpu_reports_reason():
    """Real fallback: CuPy imports (the cuda12 extra installs without a GPU) but no GPU answers."""
    cupy = pytest.importorskip("cupy")
    st = cuda_status()
    if st["available"]:
        pytest.skip("a GPU is usable here")
    assert st["cupy_version"] == cupy.__version__
    assert not cupy.is_available()
    assert st["reason"] and "not installed" not in st["reason"]
    assert get_device("auto").kind == "cpu"


def test_device_rng_reproducible(device):
    a = device.to_numpy(device.rng(3).uniform((4, 5), device.dtype("float32")))
    b = device.to_numpy(device.rng(3).uniform((4, 5), device.dtype("float32")))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and 0 <= a.min() and a.max() < 1
    p = device.to_numpy(device.rng(1).permutation(10))
    assert sorted(p.tolist()) == list(range(10))


def test_timer_measures_elapsed_time(device):
    import time
    t = device.timer()
    t.start()
    time.sleep(0.02)
    assert t.stop() >= 15.0  # milliseconds, after synchronizing
