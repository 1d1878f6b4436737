import os
import zipfile

import numpy as np
import pytest

import dualnet as dn
from dualnet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


def trained(device, steps=3):
    net = dn.MultiLayerNet(12, [8], 3, use_batchnorm=True, device=device, seed=1)
    opt = dn.Momentum(0.1)
    rng = np.random.default_rng(0)
    x = device.asarray(rng.standard_normal((10, 12)), "float32")
    t = device.asarray(rng.integers(0, 3, 10))
    for _ in range(steps):
        net.loss(x, t, train=True)
        net.backward()
        opt.update(net.params, net.grads)
    return net, opt, x


def test_roundtrip_onto_cpu(device, tmp_path):
    net, opt, x = trained(device)
    path = tmp_path / "ck.npz"
    save_checkpoint(path, net, opt, meta={"epoch": 2})
    with np.load(path, allow_pickle=False) as z:  # no pickle anywhere
        assert "meta" in z.files and "param/0.W" in z.files and "buffer/1.running_mean" in z.files
    opt2 = dn.Momentum(0.5)
    cpu_net, meta = load_checkpoint(path, "cpu", optimizer=opt2)
    assert meta == {"epoch": 2} and opt2.lr == 0.1 and opt2.t == 3
    xc = cpu_net.device.asarray(device.to_numpy(x), "float32")
    np.testing.assert_allclose(cpu_net.device.to_numpy(cpu_net.predict(xc)), device.to_numpy(net.predict(x)),
                               rtol=1e-5, atol=1e-6)


def test_mismatched_shape_names_parameter_and_shapes(tmp_path):
    net, opt, _ = trained(dn.get_device("cpu"))
    path = tmp_path / "ck.npz"
    save_checkpoint(path, net, opt)
    other = dn.MultiLayerNet(12, [9], 3, use_batchnorm=True)
    with pytest.raises(CheckpointError, match=r"'0.W' has shape \(12, 8\) in the checkpoint but \(12, 9\)"):
        load_checkpoint(path, model=other)


def test_write_is_atomic(tmp_path, monkeypatch):
    net, opt, _ = trained(dn.get_device("cpu"))
    path = tmp_path / "ck.npz"
    save_checkpoint(path, net, opt, meta={"v": 1})
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, net, opt, meta={"v": 2})
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # and no temporary file is left


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable dualnet .npz"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.npz")
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.ones(2))
    with pytest.raises(CheckpointError, match="not a dualnet checkpoint"):
        read_checkpoint(plain)
    assert zipfile.is_zipfile(plain)


def test_written_files_have_ordinary_permissions(tmp_path):
    from dualnet.io import atomic_write
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.txt", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "f.txt").st_mode & 0o777) == 0o644


def test_a_model_on_the_second_simulated_device_stays_there(tmp_path):
    """sim:2 stands in for a second GPU: the model, its optimizer state and its random draws
    stay on it through training, a checkpoint and a reload; data of sim:1 is refused."""
    from dualnet.data import load_dataset
    from dualnet.training import Trainer
    two, one = dn.get_device("sim:2"), dn.get_device("sim:1")
    net = dn.MultiLayerNet(64, [16], 10, dropout=0.2, device=two, seed=0)
    opt = dn.Adam(0.01)
    tr = Trainer(net, opt, load_dataset("digits", flatten=True), epochs=1, batch_size=100, progress=False,
                 out_dir=str(tmp_path), log=lambda *_: None)
    tr.fit()
    arrays = list(net.params.values()) + list(net.grads.values()) + list(opt.state_dict()[1].values())
    assert arrays and all(two.owns(a) for a in arrays)
    drop = next(l for l in net.layers if isinstance(l, dn.Dropout))
    assert two.owns(drop.rng.uniform((2,), two.dtype("float32")))  # the dropout masks
    again, meta = load_checkpoint(tmp_path / "checkpoint.npz", two, optimizer=dn.Adam())
    assert meta["epoch"] == 1 and all(two.owns(a) for a in again.params.values())
    with pytest.raises(dn.DeviceError, match=r"device1.*sim:2"):
        again.predict(one.asarray(np.zeros((1, 64)), "float32"))
