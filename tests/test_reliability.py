"""Nothing lost: interruptions, OS faults, concurrent runs, bad data, tampered
checkpoints and API misuse.  Bad inputs are written here in the real formats; interruptions
are real signals sent to a real ``python -m dualnet train`` process.

A ``sitecustomize`` hook (written per test, switched on by an environment variable) only slows
the subprocess down at a known point (a training step, a checkpoint write) so that the signal
lands there; everything else in that process is the real command.
"""
import errno
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

import dualnet as dn
from dualnet import data as D
from dualnet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from dualnet.cli import main
from cli_run import one_line, run
from dualnet.data import load_dataset
from dualnet.errors import ConfigError, DataError, DeviceError, DTypeError, DualnetError, ShapeError
from dualnet.io import RunDir, WriteError
from dualnet.training import BatchSource, Interrupted, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HISTORY_KEYS = ("epoch", "train_acc", "test_acc", "running_acc", "lr")  # all but the timings


def temps(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


# --------------------------------------------------------------------------- subprocess + hook
HOOK = textwrap.dedent('''
    import os
    _spec = os.environ.get("DUALNET_TEST_HOOK")
    if _spec:
        import time
        import numpy as np
        import dualnet.training as T
        _kind, _n, _marker = _spec.split(":", 2)
        _n = int(_n)
        if _kind == "step":  # from step n on, each step is slow: a signal lands inside an epoch
            _real_step, _count = T.train_step, [0]

            def _step(*a):
                _count[0] += 1
                if _count[0] == _n:
                    open(_marker, "w").close()
                if _count[0] >= _n:
                    time.sleep(0.2)
                return _real_step(*a)
            T.train_step = _step
        else:  # the n-th checkpoint.npz write, and every interrupted.npz write, are slow midway
            import dualnet.runstate as R
            _real_save, _real_savez, _st = R.save_checkpoint, np.savez, {"ck": 0, "slow": None}

            def _save(path, *a, **k):
                name = os.path.basename(path)
                _st["ck"] += name == "checkpoint.npz"
                if (name == "checkpoint.npz" and _st["ck"] == _n) or name == "interrupted.npz":
                    _st["slow"] = _marker + "." + name
                try:
                    return _real_save(path, *a, **k)
                finally:
                    _st["slow"] = None

            def _savez(f, **arrays):
                _real_savez(f, **arrays)  # the data is in the temporary file, not yet renamed
                if _st["slow"]:
                    open(_st["slow"], "w").close()
                    time.sleep(1.5)
            R.save_checkpoint, np.savez = _save, _savez
''')

RUN_FLAGS = ["--model", "mlp", "--dropout", "0.2", "--batchnorm", "--lr-decay", "0.9", "--epochs", "3",
             "--batch-size", "50", "--log-every", "7", "--seed", "3", "--no-progress", "--no-plots"]


def spawn(tmp_path, argv, hook):
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "DUALNET_TEST_HOOK": hook,
           "PYTHONPATH": os.pathsep.join([str(hook_dir), REPO, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "dualnet", "train", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))


def wait_for(path, p, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if p.poll() is not None:
            raise AssertionError(f"the run ended before {path} appeared:\n{p.communicate()[1]}")
        if time.time() > deadline:
            p.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def final_state(out_dir):
    doc, arrays = read_checkpoint(out_dir / "checkpoint.npz")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return doc["meta"], arrays, metrics


def assert_same_run(a, b):
    (meta_a, arr_a, m_a), (meta_b, arr_b, m_b) = a, b
    assert sorted(arr_a) == sorted(arr_b)
    for k in arr_a:
        np.testing.assert_allclose(arr_b[k], arr_a[k], rtol=1e-6, atol=1e-6, err_msg=k)
    assert meta_b["step"] == meta_a["step"] == m_a["steps"] == m_b["steps"]
    np.testing.assert_allclose(meta_b["iter_loss"], meta_a["iter_loss"], rtol=1e-6, atol=1e-6)
    for k in HISTORY_KEYS:
        np.testing.assert_allclose(m_b["history"][k], m_a["history"][k], rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.fixture
def reference(tmp_path_factory, device):
    """The uninterrupted run the interrupted ones must reproduce (one per device)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", "--device", device.spec, "--out", str(out), *RUN_FLAGS]) == 0
    return final_state(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig,hook,expect", [
    (signal.SIGINT, "step:40", 130),     # Ctrl-C 10 steps into epoch 2
    (signal.SIGTERM, "step:70", 143),    # SIGTERM 10 steps into epoch 3
    (signal.SIGINT, "save:2", 130),      # Ctrl-C while epoch 2's checkpoint is being written, and again
])                                       # while interrupted.npz is being written
def test_interrupted_run_resumes_exactly(tmp_path, device, reference, sig, hook, expect, capsys):
    out = tmp_path / "run"
    marker = str(tmp_path / "marker")
    p = spawn(tmp_path, ["--device", device.spec, "--out", out, *RUN_FLAGS], f"{hook}:{marker}")
    if hook.startswith("step"):
        wait_for(marker, p)
        p.send_signal(sig)
    else:
        wait_for(marker + ".checkpoint.npz", p)
        p.send_signal(sig)
        wait_for(marker + ".interrupted.npz", p)
        p.send_signal(sig)  # a second Ctrl-C during the save changes nothing
    _, err = p.communicate(timeout=120)
    assert p.returncode == expect, err
    assert "Traceback" not in err and "saved None" not in err
    assert f"saved {out / 'interrupted.npz'}" in err and "--resume" in err
    assert temps(out) == [] and not (out / ".dualnet.lock").exists()
    meta = read_checkpoint(out / "interrupted.npz")[0]["meta"]
    if hook.startswith("step"):
        assert meta["epoch_step"] > 0 and meta["epoch"] == (1 if hook == "step:40" else 2)
    else:  # the finished epoch was saved whole, and is not redone
        assert (meta["epoch"], meta["epoch_step"], meta["step"]) == (2, 0, 60)
        assert read_checkpoint(out / "checkpoint.npz")[0]["meta"]["epoch"] == 2
    # a plain --resume: every setting comes from the checkpoint (the device too)
    code, text, err = run(capsys, "train", "--resume", out / "interrupted.npz", "--no-progress", "--no-plots")
    assert code == 0, err
    assert f"device: {device.spec}" in text
    assert not (out / "interrupted.npz").exists()  # superseded by the later checkpoint
    assert_same_run(reference, final_state(out))


@pytest.mark.slow
def test_kill_during_a_write_leaves_the_last_checkpoint_and_a_temp_file_that_the_next_run_removes(
        tmp_path, capsys):
    out = tmp_path / "run"
    marker = str(tmp_path / "marker")
    p = spawn(tmp_path, ["--device", "cpu", "--out", out, *RUN_FLAGS], f"save:2:{marker}")
    wait_for(marker + ".checkpoint.npz", p)
    p.kill()
    p.communicate(timeout=60)
    assert temps(out), "the killed write should have left its temporary file"
    assert read_checkpoint(out / "checkpoint.npz")[0]["meta"]["epoch"] == 1  # the last good one
    assert (out / ".dualnet.lock").exists()  # left by the dead process: stale
    code, _, err = run(capsys, "train", "--resume", out / "checkpoint.npz", "--no-progress", "--no-plots")
    assert code == 0, err
    assert temps(out) == [] and not (out / ".dualnet.lock").exists()


def test_trainer_interrupted_anywhere_resumes_exactly(device, tmp_path, monkeypatch):
    """The Python API: a signal noted at step 23 (inside epoch 2) stops after that step, saves the
    position, and a new Trainer restored from it ends where an uninterrupted one does."""
    import dualnet.training as T
    data = load_dataset("digits")

    def make(out):
        net = dn.build_model("mlp", (1, 8, 8), 10, hidden_sizes=[32, 32], dropout=0.3, use_batchnorm=True,
                             seed=2, device=device)
        return Trainer(net, dn.Adam(0.01), data, epochs=2, batch_size=100, progress=False, seed=2,
                       out_dir=str(out), log_every=4, schedule=dn.LRSchedule(0.01, 0.5), log=lambda *_: None)
    ref = make(tmp_path / "ref")
    ref.fit()

    tr = make(tmp_path / "a")
    real, count = T.train_step, [0]

    def noting(*a):
        count[0] += 1
        if count[0] == 23:
            tr._signals.signum = signal.SIGINT  # what the deferred handler notes
        return real(*a)
    monkeypatch.setattr(T, "train_step", noting)
    with pytest.raises(Interrupted) as e:
        tr.fit()
    monkeypatch.setattr(T, "train_step", real)
    assert e.value.exit_code == 130 and e.value.position == {"epoch": 1, "epoch_step": 8, "step": 23}
    net2, meta = load_checkpoint(e.value.checkpoint, device, optimizer=(opt := dn.Adam(0.01)))
    tr2 = Trainer(net2, opt, data, epochs=2, batch_size=100, progress=False, seed=2, out_dir=str(tmp_path / "a"),
                  log_every=4, schedule=dn.LRSchedule(0.01, 0.5), log=lambda *_: None)
    tr2.restore(meta)
    tr2.fit()
    assert tr2.step == ref.step == 30 and tr2.iter_loss == pytest.approx(ref.iter_loss, rel=1e-6, abs=1e-6)
    for k in HISTORY_KEYS:
        assert tr2.history[k] == pytest.approx(ref.history[k], rel=1e-6, abs=1e-6)
    for k, v in ref.model.state().items():
        np.testing.assert_allclose(device.to_numpy(net2.state()[k]), device.to_numpy(v), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- resume settings
def test_resume_takes_the_checkpoints_settings_and_refuses_contradictions(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run(capsys, "train", "--device", "cpu", "--model", "mlp", "--dtype", "float64", "--epochs", "1",
               "--batch-size", "50", "--lr", "0.002", "--seed", "5", "--out", out, "--no-progress",
               "--no-plots")[0] == 0
    ck = out / "checkpoint.npz"
    before = ck.read_bytes()
    for flags in (["--dtype", "float32"], ["--lr", "0.01"], ["--batch-size", "20"], ["--model", "two_layer_net"],
                  ["--seed", "1"], ["--optimizer", "sgd"], ["--weight-decay", "0.1"], ["--dropout", "0.5"],
                  ["--val-fraction", "0.1"], ["--lr-decay", "0.5"]):
        code, _, err = run(capsys, "train", "--resume", ck, "--epochs", "2", *flags, "--no-progress")
        assert code == 2 and one_line(err) and flags[0] in err, (flags, err)
    assert ck.read_bytes() == before  # a refused resume loses nothing
    code, _, err = run(capsys, "train", "--resume", ck, "--epochs", "2", "--overwrite")
    assert code == 2 and one_line(err)
    # flags that agree are accepted; those left out come from the checkpoint
    code, text, err = run(capsys, "train", "--resume", ck, "--epochs", "2", "--dtype", "float64", "--lr", "0.002",
                          "--no-progress", "--no-plots")
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())["config"]
    assert (m["dtype"], m["lr"], m["batch_size"], m["seed"], m["model"]) == ("float64", 0.002, 50, 5, "mlp")
    assert read_checkpoint(ck)[0]["model"]["dtype"] == "float64"


def test_plain_resume_remembers_the_data_dir(tmp_path, capsys, monkeypatch):
    from test_data import write_mnist
    write_mnist(tmp_path / "mine", n_train=60, n_test=20, seed=1)
    write_mnist(tmp_path / "other", n_train=60, n_test=20, seed=2)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert run(capsys, "train", "--dataset", "mnist", "--data-dir", "mine", "--model", "mlp", "--epochs", "1",
               "--batch-size", "20", "--device", "cpu", "--out", out, "--no-progress", "--no-plots")[0] == 0
    monkeypatch.chdir(tmp_path / "other")  # "mine" was relative: the checkpoint recorded its full path
    code, text, err = run(capsys, "train", "--resume", out / "checkpoint.npz", "--epochs", "2",
                          "--no-progress", "--no-plots")
    assert code == 0, err
    assert str(tmp_path / "mine") in text  # the data's source, as the summary prints it
    # other data under the same dataset name is refused
    code, _, err = run(capsys, "train", "--resume", out / "checkpoint.npz", "--epochs", "3",
                       "--data-dir", tmp_path / "other", "--no-progress")
    assert code == 2 and one_line(err) and "--data-dir" in err


# --------------------------------------------------------------------------- OS errors
def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    for out in (f, f / "sub"):
        code, _, err = run(capsys, "train", "--device", "cpu", "--out", out, "--no-progress")
        assert code == 2 and one_line(err) and str(f) in err and "--out" in err
    assert f.read_text() == "mine"
    code, _, err = run(capsys, "study", "optimizers", "--quick", "--device", "cpu", "--out", f)
    assert code == 2 and one_line(err) and str(f) in err
    assert f.read_text() == "mine"


def test_out_not_writable(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def denied(path, *a, **k):
        if ".dualnet-probe" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", denied)
    code, _, err = run(capsys, "train", "--device", "cpu", "--out", tmp_path / "ro", "--no-progress")
    assert code == 2 and one_line(err) and "Permission denied" in err and str(tmp_path / "ro") in err
    assert not (tmp_path / "ro").exists()  # the folder it created is removed again
    monkeypatch.setattr(os, "open", real_open)
    if os.geteuid() != 0:  # a real read-only folder (root writes anywhere)
        ro = tmp_path / "real-ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            code, _, err = run(capsys, "train", "--device", "cpu", "--out", ro, "--no-progress")
            assert code == 2 and one_line(err)
        finally:
            ro.chmod(0o755)


def test_full_disk_during_training_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real, calls = np.savez, [0]

    def savez(f, **arrays):
        calls[0] += 1
        if calls[0] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)
    monkeypatch.setattr(np, "savez", savez)
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "3", "--out", out, "--no-progress",
                       "--no-plots", "--batch-size", "100")
    assert code == 2 and one_line(err)
    assert str(out / "checkpoint.npz") in err and "No space left" in err and "intact" in err
    assert read_checkpoint(out / "checkpoint.npz")[0]["meta"]["epoch"] == 1
    assert temps(out) == [] and not (out / ".dualnet.lock").exists()


def test_full_disk_at_the_metrics_keeps_the_trained_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", out, "--no-progress",
                       "--no-plots")
    assert code == 2 and one_line(err) and "metrics.json" in err and "checkpoint.npz" in err
    assert read_checkpoint(out / "checkpoint.npz")[0]["meta"]["epoch"] == 1
    assert temps(out) == []


# --------------------------------------------------------------------------- one run per directory
def test_a_second_run_into_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", out, "--no-progress", "--no-plots")[0] == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", out, "--no-progress")
    assert code == 2 and one_line(err) and "--overwrite" in err and "--resume" in err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", out, "--overwrite",
                       "--seed", "1", "--no-progress", "--no-plots")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 1


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dualnet.io import RunDir; RunDir(sys.argv[1]).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", out, "--no-progress")
        assert code == 2 and one_line(err) and str(holder.pid) in err
        with pytest.raises(DualnetError, match="in use"):
            RunDir(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".dualnet.lock").read_text().strip() == str(holder.pid)  # stale now
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", out, "--no-progress",
                       "--no-plots")
    assert code == 0, err
    assert not (out / ".dualnet.lock").exists()


def test_stale_temp_files_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.npz.k3j_9x0a.tmp"
    stale.write_bytes(b"half")
    keep = out / "notes.tmp"
    keep.write_text("mine")
    with RunDir(out) as rd:
        assert rd.cleaned == [stale.name] and rd.entries() == ["notes.tmp"]
    assert not stale.exists() and keep.exists()


# --------------------------------------------------------------------------- bad data
def idx_bytes(arr, code=0x08, dims=None):
    arr = np.asarray(arr)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}[code]
    dims = arr.shape if dims is None else dims
    return bytes([0, 0, code, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + arr.astype(dtype).tobytes()


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    from test_data import write_mnist
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(D, "system_dir", lambda name: str(tmp_path / "nosystem" / name))
    monkeypatch.setitem(D.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    write_mnist(tmp_path / "d")
    return tmp_path / "d"


@pytest.mark.parametrize("files,msg", [
    ({"train-labels-idx1-ubyte.gz": idx_bytes(np.r_[np.zeros(29), -1], 0x09)}, "out of range"),
    ({"train-labels-idx1-ubyte.gz": idx_bytes(np.r_[np.zeros(29), 10])}, "out of range"),
    ({"t10k-labels-idx1-ubyte.gz": idx_bytes(np.r_[np.zeros(9), 1.5], 0x0D)}, "dtype"),
    ({"t10k-images-idx3-ubyte.gz": idx_bytes(np.zeros((0, 28, 28))),
      "t10k-labels-idx1-ubyte.gz": idx_bytes(np.zeros(0))}, "no images"),
    ({"train-images-idx3-ubyte.gz": idx_bytes(np.zeros(8), dims=(2**32 - 1, 2**32 - 1, 2**31))}, "wrong length"),
], ids=["negative-int8-label", "label-10", "float-labels", "zero-images", "dims-overflow"])
def test_bad_idx_files_are_data_errors_naming_the_file(mnist_dir, files, msg, capsys):
    for name, content in files.items():
        (mnist_dir / name).write_bytes(gzip.compress(content))
    name = next(iter(files))
    with pytest.raises(DataError, match=msg) as e:
        load_dataset("mnist", data_dir=str(mnist_dir))
    assert name in str(e.value)
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", mnist_dir, "--device", "cpu",
                       "--out", mnist_dir.parent / "run", "--no-progress")
    assert code == 2 and one_line(err) and name in err
    assert not (mnist_dir.parent / "run").exists()  # nothing left behind by a refused run


def test_explicit_data_dir_missing_a_file_does_not_fall_back(mnist_dir, tmp_path):
    from test_data import write_mnist
    write_mnist(tmp_path / "home" / ".cache" / "dualnet" / "mnist")  # a complete copy it must not use
    os.unlink(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz") as e:
        load_dataset("mnist", data_dir=str(mnist_dir))
    assert str(mnist_dir) in str(e.value) and e.value.param == "data_dir"
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", data_dir=str(tmp_path / "typo"))


@pytest.mark.parametrize("frac", ["0.9999", "0.0001"])
def test_empty_validation_or_training_split_is_refused(frac, capsys, tmp_path):
    code, _, err = run(capsys, "train", "--device", "cpu", "--val-fraction", frac, "--out", tmp_path / "r",
                       "--no-progress")
    assert code == 2 and one_line(err) and "--val-fraction" in err


def test_damaged_cifar_archives(tmp_path):
    from test_data import write_cifar
    src = tmp_path / "src"
    list(write_cifar(src / "cifar-10-batches-bin", n=5))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    good = buf.getvalue()
    for i, content in enumerate([b"garbage, not a tar.gz", good[:len(good) // 2], good[:200]]):
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / "cifar-10-binary.tar.gz").write_bytes(content)
        with pytest.raises(DataError, match="cifar-10-binary.tar.gz") as e:
            load_dataset("cifar10", data_dir=str(d))
        assert "Traceback" not in str(e.value)
        for _, _, files in os.walk(d):
            assert not [f for f in files if f.endswith(".tmp")]  # no half-written batch
    d = tmp_path / "ok"
    d.mkdir()
    (d / "cifar-10-binary.tar.gz").write_bytes(good)
    assert load_dataset("cifar10", data_dir=str(d)).x_train.shape == (25, 3, 32, 32)


def test_labels_are_validated_where_it_is_free(device):
    net = dn.MultiLayerNet(4, [6], 3, device=device, seed=0)
    x = device.asarray(np.zeros((5, 4)), "float32")
    with pytest.raises(DTypeError, match="float"):
        net.loss(x, device.asarray(np.zeros(5), "float32"))
    with pytest.raises(ShapeError, match="5 samples"):
        net.loss(x, device.asarray(np.zeros(4, np.int64)))
    with pytest.raises(ShapeError):
        net.loss(x, device.asarray(np.zeros((5, 4)), "float32"))  # one-hot of 4 classes for a 3-class net
    if device.is_host:  # a range check costs no sync on the host
        with pytest.raises(DataError, match="3 classes"):
            net.loss(x, device.asarray(np.array([0, 1, 2, 3, 0])))
        with pytest.raises(DataError):
            net.loss(x, device.asarray(np.array([0, -1, 2, 1, 0])))
    # on any device the range is checked once, where the data is placed
    with pytest.raises(DataError, match="0..2"):
        BatchSource(np.zeros((5, 4), np.float32), np.array([0, 1, 2, 3, 0]), device, "float32", 2, num_classes=3)
    with pytest.raises(DTypeError):
        BatchSource(np.zeros((5, 4), np.float32), np.zeros(5, np.float32), device, "float32", 2, num_classes=3)
    data = load_dataset("digits", flatten=True)
    data.t_test[7] = 12
    with pytest.raises(DataError, match="test set"):
        Trainer(dn.MultiLayerNet(64, [8], 10, device=device), dn.SGD(0.1), data, progress=False)


# --------------------------------------------------------------------------- tampered checkpoints
def tamper(src, dst, doc_fn=None, arrays_fn=None):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(str(arrays.pop("meta")))
    meta = doc_fn(doc) if doc_fn else doc
    if arrays_fn:
        arrays_fn(arrays)
    np.savez(dst, meta=np.array(meta if isinstance(meta, str) else json.dumps(meta)), **arrays)
    return dst


def _set(d, path, value):
    *head, last = path
    for k in head:
        d = d[k]
    d[last] = value
    return None


TAMPER = {
    "meta a list": dict(doc_fn=lambda d: [1, 2]),
    "meta not JSON": dict(doc_fn=lambda d: "{not json"),
    "no layers": dict(doc_fn=lambda d: _set(d, ["model", "layers"], None) or d),
    "unknown layer": dict(doc_fn=lambda d: _set(d, ["model", "layers", 0, "type"], "Evil") or d),
    "epoch 1.5": dict(doc_fn=lambda d: _set(d, ["meta", "epoch"], 1.5) or d),
    "epoch a string": dict(doc_fn=lambda d: _set(d, ["meta", "epoch"], "2") or d),
    "meta a number": dict(doc_fn=lambda d: _set(d, ["meta"], 3) or d),
    "optimizer t negative": dict(doc_fn=lambda d: _set(d, ["optimizer", "t"], -1) or d),
    "hidden size 10**9": dict(doc_fn=lambda d: _set(d, ["model", "layers", 0, "out_features"], 10 ** 9) or d),
    "hidden size 10**12": dict(doc_fn=lambda d: _set(d, ["model", "layers", 2, "in_features"], 10 ** 12) or d),
    "unknown optimizer slot": dict(arrays_fn=lambda a: a.update({"opt/zz/0.W": a["opt/v/0.W"]})),
    "optimizer state wrong shape": dict(arrays_fn=lambda a: a.update({"opt/v/0.W": np.zeros((2, 2), np.float32)})),
    "weights NaN": dict(arrays_fn=lambda a: a["param/0.W"].__setitem__((0, 0), np.nan)),
    "weights int": dict(arrays_fn=lambda a: a.update({"param/0.b": a["param/0.b"].astype(np.int32)})),
    "missing array": dict(arrays_fn=lambda a: a.pop("param/2.b")),
    "weights wrong shape": dict(arrays_fn=lambda a: a.update({"param/0.W": np.zeros((3, 3), np.float32)})),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_checkpoints_are_refused_before_anything_is_built(tmp_path, case, capsys):
    net = dn.MultiLayerNet(12, [8], 3, device="cpu", seed=1)
    opt = dn.Momentum(0.1)
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    net.loss(x, np.arange(6) % 3, train=True)
    net.backward()
    opt.update(net.params, net.grads)
    good = tmp_path / "good.npz"
    save_checkpoint(good, net, opt, {"epoch": 1, "step": 1, "iter_loss": [1.0], "config": {"dataset": "digits"}})
    bad = tamper(good, tmp_path / "bad.npz", **TAMPER[case])
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(bad, "cpu", optimizer=dn.Momentum(0.1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bad) in str(e.value)
    assert peak < 50 * 2 ** 20  # nothing near what a tampered size asks for was allocated
    code, _, err = run(capsys, "evaluate", "--checkpoint", bad, "--device", "cpu")
    assert code == 2 and one_line(err) and str(bad) in err


# --------------------------------------------------------------------------- API misuse
def test_api_misuse_gets_errors_naming_both_sides(device):
    net = dn.MultiLayerNet(4, [6], 3, device=device, seed=0)
    with pytest.raises(ConfigError, match="loss"):
        net.backward()
    x = device.asarray(np.zeros((5, 4)), "float32")
    other = dn.get_device("cpu" if device.spec != "cpu" else "sim")
    with pytest.raises(DeviceError, match="labels") as e:
        net.loss(x, other.asarray(np.zeros(5, np.int64)))
    assert device.spec in str(e.value)
    with pytest.raises(ShapeError, match="zero samples"):
        net.accuracy(device.asarray(np.zeros((0, 4)), "float32"), device.asarray(np.zeros(0, np.int64)))
    with pytest.raises(WriteError):
        RunDir(__file__).acquire()  # a file is no run directory
