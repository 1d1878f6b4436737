import ast
import pathlib

import numpy as np
import pytest

from dualnet.backend import DeviceError, cuda_status, get_device

PKG = pathlib.Path(__file__).resolve().parents[1] / "dualnet"
# The library core, which no application module may be imported by.
CORE = {"backend", "errors", "functions", "conv", "init", "params", "layers", "models", "optimizers", "training", "io",
        "checkpoint", "gradcheck", "distributed", "seeds", "runstate", "timing", "checks",
        "microbatch"}
APPS = {"data", "plots", "bench", "torch_twin", "studies", "runconfig", "cli", "cliparse", "book", "cs231n"}
# Host-side modules (files, plots, command line, benchmarks) may use NumPy for host arrays;
# compute modules take their namespace from arrays or the device.
HOST_MODULES = {"backend", "data", "checkpoint", "cli", "bench", "plots", "studies", "book", "cs231n"}


def modules():
    """{dotted name below dualnet: parsed module} for every module of the package."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
        out[".".join(parts)] = (f, ast.parse(f.read_text()))
    return out


def imports_of(name, tree):
    """The dualnet modules ``name`` imports (resolved relative imports), and its absolute imports."""
    pkg = name.split(".")[:-1] if not (PKG / name.replace(".", "/") / "__init__.py").exists() else name.split(".")
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            external |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] if node.module else [".".join(base + [a.name]) for a in node.names]
                internal |= {t for t in targets if t}
            elif node.module:
                external.add(node.module)
    return internal, external


def test_only_backend_names_numpy_or_cupy():
    offenders = []
    for name, (f, tree) in modules().items():
        if name.split(".")[0] in HOST_MODULES or name == "__main__":
            continue
        _, ext = imports_of(name, tree)
        offenders += [f"{name}: {n}" for n in ext if n.split(".")[0] in ("numpy", "cupy", "array_api_strict")]
    assert offenders == []
    # and the compute modules exist, so the check is not vacuous
    assert {"functions", "layers", "optimizers", "models", "training"} <= set(modules())


def test_no_import_circles_and_core_imports_no_application():
    mods = modules()
    graph = {}
    for name, (f, tree) in mods.items():
        internal, _ = imports_of(name, tree)
        # "from . import x" names a module x when one exists; "from .m import y" names m
        graph[name] = {t for t in internal if t in mods and t != name}
    for name, deps in graph.items():
        top = name.split(".")[0]
        if top in CORE:
            assert not {d.split(".")[0] for d in deps} & APPS, f"core module {name} imports {deps & APPS}"
    # a depth-first search finds any circle (the package's __init__ only re-exports, so it is left out)
    state = {}

    def visit(n, path):
        state[n] = "open"
        for d in graph.get(n, ()):
            if d == "__init__" or (n.startswith(d + ".") and (PKG / d).is_dir()):
                continue  # a subpackage's modules may use their package's shared __init__ pieces
            assert state.get(d) != "open", "import circle: " + " -> ".join(path + [n, d])
            if d not in state:
                visit(d, path + [n])
        state[n] = "done"

    for n in graph:
        if n not in state and n != "__init__":
            visit(n, [])
    # every module is either core or application: a new one must be placed in one of the two
    assert CORE | APPS == {n.split(".")[0] for n in graph} - {"__init__", "__main__"}


def test_nothing_outside_the_backend_reads_device_internals_or_kind():
    """A third backend must need no edit outside the backend package: no private attribute of a device
    is read, and no code compares a device's kind, anywhere else."""
    kinds = {"cpu", "cuda", "sim"}
    offenders = []
    for name, (f, tree) in modules().items():
        if name.split(".")[0] == "backend":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("_cupy", "_dev", "_cuda_device", "_host"):
                offenders.append(f"{name}:{node.lineno} reads .{node.attr}")
            if isinstance(node, ast.Compare):
                parts = [node.left, *node.comparators]
                consts = {c.value for p in parts for c in ast.walk(p) if isinstance(c, ast.Constant)}
                attrs = {a.attr for p in parts for a in ast.walk(p) if isinstance(a, ast.Attribute)}
                if consts & kinds and attrs & {"kind", "spec"}:
                    offenders.append(f"{name}:{node.lineno} compares a device's kind")
    assert offenders == []


def test_cpu_and_sim_devices():
    cpu, sim = get_device("cpu"), get_device("sim")
    assert cpu.kind == "cpu" and cpu.spec == "cpu" and cpu.is_host
    assert sim.kind == "sim" and sim.spec == "sim:1" and "device1" in repr(sim.array_device)
    assert get_device("sim:2").spec == "sim:2" and get_device("sim:2") != sim
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
    with pytest.raises(DeviceError, match="sim:1 and sim:2"):
        get_device("sim:3")


def test_arrays_of_the_other_simulated_device_are_refused():
    """The two simulated devices stand in for two GPUs: an array left on one is refused by
    the other, with both named, and asarray moves it across."""
    one, two = get_device("sim:1"), get_device("sim:2")
    a = one.asarray(np.arange(3.0))
    with pytest.raises(DeviceError, match=r"device1.*sim:2"):
        two.check(a, "input")
    b = two.asarray(a)
    assert two.owns(b) and not one.owns(b)
    np.testing.assert_array_equal(two.to_numpy(b), [0.0, 1.0, 2.0])
    assert two.owns(two.rng(0).uniform((2,), two.dtype("float32")))
    assert two.owns(two.rng(0).permutation(4))


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
    assert st["reason"] in str(e.value) and "device='cpu'" in str(e.value) and e.value.param == "device"


def test_cupy_installed_without_gpu_reports_reason():
    """Real fallback: CuPy imports (the cuda12 extra installs without a GPU) but no GPU answers."""
    cupy = pytest.importorskip("cupy")
    st = cuda_status()
    if st["available"]:
        pytest.skip("a GPU is usable here")
    assert st["cupy_version"] == cupy.__version__
    try:
        assert not cupy.is_available()
    except Exception:  # CuPy 13 re-raises the driver error that CuPy 14 turns into False
        pass
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


def fake_cupy(fail=None):
    """A stand-in for CuPy on a machine with one GPU whose CUDA libraries are partly missing:
    ``fail`` names the operation that raises the error a missing library raises."""
    import contextlib
    import types

    errors = {"kernel": ImportError("libnvrtc.so.12: cannot open shared object file: No such file or directory"),
              "matmul": ImportError("libcublas.so.12: cannot open shared object file: No such file or directory"),
              "random": ImportError("libcurand.so.10: cannot open shared object file: No such file or directory")}

    def maybe(op, value):
        if fail == op:
            raise errors[op]
        return value

    class Arr:
        def __init__(self, a):
            self.a = a

        def __mul__(self, o):
            return Arr(maybe("kernel", self.a * o))

        def __add__(self, o):
            return Arr(self.a + o)

        def __matmul__(self, o):
            return Arr(maybe("matmul", self.a @ o.a))

        def sum(self):
            return Arr(self.a.sum())

    class RandomState:
        def __init__(self, seed):
            maybe("random", None)

        def random_sample(self, n, dtype=None):
            return Arr(np.zeros(n))

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, driverGetVersion=lambda: 12040, runtimeGetVersion=lambda: 12040,
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 1 << 34, "major": 9, "minor": 0})
    cuda = types.SimpleNamespace(runtime=runtime, Device=lambda i: contextlib.nullcontext(),
                                 Stream=types.SimpleNamespace(null=types.SimpleNamespace(synchronize=lambda: None)))
    return types.SimpleNamespace(__version__="14.0.0", cuda=cuda, float32=np.float32,
                                 arange=lambda n, dtype=None: Arr(np.arange(n, dtype=dtype)),
                                 ones=lambda s, dtype=None: Arr(np.ones(s, dtype=dtype)),
                                 random=types.SimpleNamespace(RandomState=RandomState))


@pytest.mark.parametrize("fail,library", [("kernel", "NVRTC"), ("matmul", "cuBLAS"), ("random", "cuRAND")])
def test_probe_names_the_missing_cuda_library(monkeypatch, fail, library):
    """A driver and a GPU but no CUDA libraries: the probe runs a kernel, a matmul and a random
    draw, names what is missing and how to install it, and auto falls back to the CPU."""
    import sys
    import dualnet.backend as B
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(fail))
    try:
        st = B.cuda_status(refresh=True)
        assert not st["available"] and library in st["reason"] and "dualnet[cuda12]" in st["reason"]
        assert st["devices"][0]["name"] == "Fake GPU"
        dev = get_device("auto")
        assert dev.kind == "cpu" and library in dev.reason
        with pytest.raises(DeviceError, match=library):
            get_device("cuda")
    finally:
        monkeypatch.undo()
        B.cuda_status(refresh=True)


def test_probe_passes_when_every_library_answers(monkeypatch):
    import sys
    import dualnet.backend as B
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(None))
    try:
        st = B.cuda_status(refresh=True)
        assert st["available"] and st["reason"] == "" and st["driver"] == "12.4"
    finally:
        monkeypatch.undo()
        B.cuda_status(refresh=True)


def test_device_line_is_short_and_says_why():
    dev = get_device("auto")
    line = dev.describe()
    assert len(line) <= 100 and line.startswith(dev.spec)
    if dev.reason:
        assert dev.reason.split(" (")[0].split(";")[0][:40] in line or line.endswith("...")
