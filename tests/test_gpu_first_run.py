"""What the first GPU run needs, checked where there is no GPU: the acceptance script as a GPU
machine without network runs it, one generator per stream, compute bound to its device on the
second simulated device, the probe on the GPU a process uses, memory measured as a peak."""
import importlib.metadata as md
import os
import pathlib
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

import dualnet as dn
from dualnet import layers as L
from dualnet.backend import get_device

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_acceptance.sh"
# What a GPU image lacks: these come as wheels (scripts/gpu_wheels.sh downloads them).
LACKING = ("array_api_compat", "array_api_strict", "pytest", "pluggy", "iniconfig", "packaging", "pygments")


# --------------------------------------------------------------------------- the acceptance script
def _wheel(dist_name, folder):
    """A wheel of an installed distribution, made from its installed files (no network)."""
    dist = md.distribution(dist_name)
    name = dist.metadata["Name"].replace("-", "_")
    path = folder / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f in dist.files:
            if "__pycache__" in f.parts or str(f).startswith(".."):
                continue
            z.write(f.locate(), str(f))
    return path


@pytest.fixture(scope="module")
def gpu_image(tmp_path_factory):
    """A Python like the GPU image's: NumPy, CuPy, tqdm, matplotlib, pip... but none of LACKING
    and no dualnet installed; plus a folder of wheels of LACKING."""
    tmp = tmp_path_factory.mktemp("gpu-image")
    venv = tmp / "py"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    here = pathlib.Path(np.__file__).resolve().parents[1]   # this environment's site-packages
    drop = {n.lower() for n in LACKING}
    for entry in here.iterdir():
        key = entry.name.split("-")[0].lower()
        if key in drop or key.startswith(("dualnet", "__editable__", "_pytest", "py.")) or entry.suffix == ".pth":
            continue
        (site / entry.name).symlink_to(entry)
    wheels = tmp / "whl"
    wheels.mkdir()
    for dist in LACKING:
        _wheel(dist.replace("_", "-"), wheels)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import array_api_compat"], capture_output=True)
    assert r.returncode != 0, "the stand-in image must lack array-api-compat"
    return py, wheels


def _run(gpu_image, tmp_path, *args, fake_smi=False):
    py, _ = gpu_image
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON"] = str(py)
    if fake_smi:   # a driver that answers while CUDA cannot start
        fake = tmp_path / "bin"
        fake.mkdir()
        smi = fake / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-00000000-stand-in)'\n")
        smi.chmod(0o755)
        env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_acceptance_fails_when_the_driver_answers_but_cuda_cannot_start(gpu_image, tmp_path):
    out = tmp_path / "results"
    r = _run(gpu_image, tmp_path, "--quick", "--wheels", str(gpu_image[1]), "--out", str(out), fake_smi=True)
    assert r.returncode == 1, r.stdout + r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("gpu_acceptance: FAIL:") and "nvidia-smi answers" in line and "CUDA is unusable" in line
    assert (out / "result.txt").read_text().startswith("gpu_acceptance: FAIL:")
    assert "command: bash scripts/gpu_acceptance.sh --quick" in (out / "environment.txt").read_text()
    assert not (out / "pytest.xml").exists()   # it stopped before the tests


def test_acceptance_without_the_wheels_names_what_is_missing(gpu_image, tmp_path):
    r = _run(gpu_image, tmp_path, "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "array_api_compat" in r.stderr and "--wheels" in r.stderr


def test_acceptance_needs_an_out_folder(gpu_image, tmp_path):
    r = _run(gpu_image, tmp_path, "--quick")
    assert r.returncode == 2 and "--out" in r.stderr


@pytest.mark.slow
def test_acceptance_passes_offline_on_the_simulated_device(gpu_image, tmp_path):
    """Every stage, as on the GPU machine (wheels, checkout not installed, no network), on the
    simulated device: the subprocess test keeps the wheels on its path, the training of both
    devices agrees, the bench has rows of the device under test."""
    out = tmp_path / "results"
    r = _run(gpu_image, tmp_path, "--device", "sim", "--quick", "--wheels", str(gpu_image[1]), "--out", str(out),
             "--tests", "test_ch7_train_convnet_as_a_script or test_dropout or test_device_rng_reproducible")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "result.txt").read_text().startswith("gpu_acceptance: PASS: sim ran")
    for f in ("environment.txt", "versions.json", "pytest.xml", "train-compare.txt", "bench.json", "bench-table.md"):
        assert (out / f).is_file(), f


# --------------------------------------------------------------------------- one generator per stream
def _count_rng(monkeypatch, device):
    made = []
    orig = type(device).rng

    def rng(self, seed):
        made.append(seed)
        return orig(self, seed)
    monkeypatch.setattr(type(device), "rng", rng)
    return made


def test_reseeding_a_generator_restarts_its_stream(device):
    g = device.rng(5)
    first = device.to_numpy(g.uniform((3, 4), device.dtype("float32")))
    g.uniform((7,), device.dtype("float32"))
    g.reseed(5)
    np.testing.assert_array_equal(device.to_numpy(g.uniform((3, 4), device.dtype("float32"))), first)
    g.reseed(9)
    np.testing.assert_array_equal(device.to_numpy(g.uniform((3, 4), device.dtype("float32"))),
                                  device.to_numpy(device.rng(9).uniform((3, 4), device.dtype("float32"))))


def test_training_reseeds_its_generators_instead_of_making_new_ones(device, monkeypatch):
    """Dropout (each step) and augmentation (each batch) re-seed one generator: on CuPy a new
    generator is a cuRAND generator made, and later destroyed, per step."""
    from dualnet.data import load_dataset
    from dualnet.training import Trainer
    data = load_dataset("digits", flatten=False)
    net = dn.MultiLayerNet(64, [16, 16], 10, dropout=0.3, input_shape=(1, 8, 8), device=device)
    made = _count_rng(monkeypatch, device)
    tr = Trainer(net, dn.Adam(1e-3), data, epochs=1, batch_size=200, progress=False, log=lambda *a: None,
                 augment=(1, True))
    tr.fit()
    steps = tr.train.steps_per_epoch
    # one shuffle per epoch, one augmentation generator; the two dropout layers keep theirs
    assert len(made) == 2 and steps >= 5, made


# --------------------------------------------------------------------------- devices bound everywhere
def test_the_simulated_devices_fail_like_cupy_outside_bind():
    """The stand-in has teeth: as with CuPy through array-api-compat, creation outside bind()
    lands on the current device (device1) whatever device= says, and math on arrays of the other
    device is refused."""
    two = get_device("sim:2")
    a = two.asarray(np.ones(3), "float32")
    xp = two.xp
    assert not two.owns(xp.zeros((3,), dtype=xp.float32, device=two.array_device))
    with pytest.raises(ValueError, match="current device"):
        xp.sum(a)
    with two.bind():
        assert two.owns(xp.zeros((3,), dtype=xp.float32, device=two.array_device))
        assert two.owns(xp.sum(a))


def test_every_public_entry_point_computes_on_its_own_device():
    """On sim:2 (a second GPU), called directly: every result lives on sim:2."""
    from dualnet import bench
    from dualnet.models import count_correct
    two = get_device("sim:2")
    rng = np.random.default_rng(0)
    x4 = two.asarray(rng.standard_normal((4, 2, 6, 6)), "float32")
    layers = [L.Convolution(2, 3, 3, 1, 1, device=two), L.ReLU(device=two), L.MaxPooling(2, device=two),
              L.BatchNormalization(2, device=two), L.Dropout(0.5, device=two), L.Flatten(device=two),
              L.Affine(72, 5, device=two)]
    for layer in layers:
        out = layer.forward(x4, train=True)
        assert two.owns(out), layer
        dx = layer.backward(out)
        assert two.owns(dx) and all(two.owns(g) for g in layer.grads.values()), layer
    scores = two.asarray(rng.standard_normal((4, 5)), "float32")
    t = two.asarray(np.array([0, 1, 2, 3]))
    loss = L.SoftmaxWithLoss()
    assert two.owns(loss.forward(scores, t)) and two.owns(loss.backward())
    assert two.owns(count_correct(scores, t))
    net = dn.SimpleConvNet(input_dim=(2, 6, 6), filter_num=3, filter_size=3, pad=1, hidden_size=4,
                           output_size=5, device=two, weight_decay=0.1)
    assert two.owns(net.predict(x4)) and two.owns(net.loss(x4, t))
    assert all(two.owns(g) for g in net.backward().values())   # after loss: predict keeps nothing for it
    assert two.owns(net.count_correct(x4, t))
    assert 0.0 <= net.accuracy(x4, t) <= 1.0
    recs = bench.bench_layers(two, "float32", 2, 3, 0, None, gemm_n=16)
    assert {r["phase"] for r in recs} == {"conv_forward", "conv_backward", "gemm_peak", "adam_update"}
    assert bench.ops_per_step(two, "simple_convnet", 2, "float32")["train"] > 0


# --------------------------------------------------------------------------- the probe's GPU
def test_the_cuda_probe_runs_on_the_gpu_the_process_uses(monkeypatch):
    """Only the GPU asked for gets a context: cuda:1, or rank 1's GPU, probes GPU 1 alone."""
    import dualnet.backend as B
    entered = []

    class Dev:
        def __init__(self, i):
            self.i = i

        def __enter__(self):
            entered.append(self.i)

        def __exit__(self, *a):
            return False

    cp = types.SimpleNamespace(
        __version__="14.0.0", float32="float32",
        arange=lambda n, dtype=None: np.arange(n, dtype=dtype), ones=lambda s, dtype=None: np.ones(s, dtype),
        random=types.SimpleNamespace(RandomState=lambda seed: types.SimpleNamespace(
            random_sample=lambda n, dtype=None: np.zeros(n))),
        cuda=types.SimpleNamespace(
            Device=Dev, Stream=types.SimpleNamespace(null=types.SimpleNamespace(synchronize=lambda: None)),
            runtime=types.SimpleNamespace(
                getDeviceCount=lambda: 2, driverGetVersion=lambda: 12040, runtimeGetVersion=lambda: 12040,
                getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 1 << 34,
                                               "major": 9, "minor": 0})))
    monkeypatch.setitem(sys.modules, "cupy", cp)
    try:
        st = B.cuda_status(refresh=True, index=1)
        assert st["available"] and set(entered) == {1}
        entered.clear()
        B.cuda_status(refresh=True)
        assert B.cuda_status(index=3)["reason"].startswith("GPU 3 does not exist")
        with pytest.raises(dn.DeviceError, match="does not exist"):
            get_device("cuda:3")
        assert 1 not in entered
    finally:
        monkeypatch.undo()
        B.cuda_status(refresh=True)


# --------------------------------------------------------------------------- memory, placement, syncs
def test_the_trainer_counts_every_split_against_free_memory(monkeypatch):
    """Train, test and validation sets go to the device together or not at all."""
    from dualnet.data import load_dataset
    from dualnet.training import Trainer
    cpu = get_device("cpu")
    data = load_dataset("digits", flatten=False, val_fraction=0.2)
    train_bytes = data.x_train.size * 4 + data.t_train.nbytes
    monkeypatch.setattr(cpu, "free_memory", lambda: int(2.2 * train_bytes))  # train alone would fit
    net = dn.SimpleConvNet(input_dim=(1, 8, 8), filter_size=3, pad=1, device=cpu)
    tr = Trainer(net, dn.Adam(), data, progress=False, log=lambda *a: None)
    assert not tr.train.on_device and not tr.test.on_device and not tr.val.on_device
    monkeypatch.setattr(cpu, "free_memory", lambda: 100 * train_bytes)
    tr = Trainer(net, dn.Adam(), data, progress=False, log=lambda *a: None)
    assert tr.train.on_device and tr.test.on_device and tr.val.on_device


def test_no_compute_module_calls_a_mask_assigning_wrapper():
    """array-api-compat's CuPy ``clip`` and ``sign`` assign through boolean masks: each reads the
    mask's size back to the host, a device sync inside the step."""
    offenders = []
    for f in (ROOT / "dualnet").rglob("*.py"):
        if "backend" in f.relative_to(ROOT / "dualnet").parts:
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if ("xp.clip(" in code or "xp.sign(" in code) and "``" not in code:
                offenders.append(f"{f.relative_to(ROOT)}:{i}")
    assert offenders == []


def test_peak_memory_is_a_peak_on_the_host():
    cpu = get_device("cpu")

    def step():
        a = np.ones(1 << 20)          # 8 MiB, freed before the end
        del a
        np.ones(1 << 10)
    peak = cpu.peak_memory(step)
    assert (1 << 23) <= peak < (1 << 23) + (1 << 20)


def test_cupy_peak_hook_tracks_the_high_water():
    """The CUDA measure: the running sum of the pool's hands-out and returns, its maximum."""
    import dualnet.backend as B
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(MemoryHook=type("MemoryHook", (), {})))
    from dualnet.backend.cuda import _peak_hook
    h = _peak_hook(fake_cupy, 0)
    for op, n in (("m", 100), ("m", 50), ("f", 100), ("m", 30), ("f", 50), ("f", 30)):
        kw = {"device_id": 0, "mem_size": n, "mem_ptr": 0, "pmem_id": 0}
        (h.malloc_postprocess(size=n, **kw) if op == "m" else h.free_postprocess(**kw))
    h.malloc_postprocess(device_id=1, size=999, mem_size=999, mem_ptr=0, pmem_id=0)  # another GPU
    assert h.peak == 150 and h.now == 0


def test_bench_writes_its_json_without_matplotlib(tmp_path, monkeypatch):
    from dualnet import bench
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    j, p = bench.write_result({"environment": {}, "records": [], "skipped": [], "warnings": []}, str(tmp_path))
    assert p is None and pathlib.Path(j).is_file() and not (tmp_path / "bench.png").exists()
