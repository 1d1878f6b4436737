"""Real parsing and caching code, on small files written here in the real formats."""
import gzip
import hashlib
import http.server
import os
import struct
import threading

import numpy as np
import pytest

from dualnet import data as D


def write_idx(path, arr, compress=True):
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)
    return path


def write_mnist(folder, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        write_idx(str(folder / name), a)
    return arrays


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home, so the cache is the test's own; no system folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(D, "system_dir", lambda name: str(tmp_path / "nosystem" / name))
    monkeypatch.setitem(D.MIRRORS, "mnist", ["http://127.0.0.1:9/"])  # discard port: refused at once
    return tmp_path / "home"


def test_idx_roundtrip(tmp_path):
    a = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(D.read_idx(write_idx(str(tmp_path / "a.gz"), a)), a)
    np.testing.assert_array_equal(D.read_idx(write_idx(str(tmp_path / "a.idx"), a, compress=False)), a)


def test_load_from_data_dir(tmp_path, home):
    arrays = write_mnist(tmp_path / "d")
    ds = D.load_dataset("mnist", data_dir=str(tmp_path / "d"))
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte.gz"], atol=1e-4)
    np.testing.assert_array_equal(ds.t_test, arrays["t10k-labels-idx1-ubyte.gz"])
    flat = D.load_dataset("mnist", data_dir=str(tmp_path / "d"), flatten=True, one_hot=True, val_fraction=0.2)
    assert flat.x_train.shape == (24, 784) and flat.x_val.shape == (6, 784) and flat.t_train.shape == (24, 10)
    assert 0.0 <= flat.x_train.min() and flat.x_train.max() <= 1.0


@pytest.mark.parametrize("damage,msg", [
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28))), "wrong length"),
    (lambda p: p.write_bytes(gzip.compress(b"\x12\x34\x56\x78")), "bad IDX magic"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-5])), "wrong length"),
    (lambda p: p.write_bytes(b"not gzip at all"), "cannot read"),
])
def test_damaged_files_are_clear_errors(tmp_path, home, damage, msg):
    write_mnist(tmp_path / "d")
    p = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    damage(p)
    with pytest.raises(D.DataError, match=msg) as e:
        D.load_dataset("mnist", data_dir=str(tmp_path / "d"))
    assert "train-images-idx3-ubyte.gz" in str(e.value)


def test_checksum_mismatch_in_cache(home):
    write_mnist(home / ".cache" / "dualnet" / "mnist")
    with pytest.raises(D.DataError, match="checksum mismatch"):
        D.load_dataset("mnist")


def test_offline_error_lists_every_path(tmp_path, home):
    (tmp_path / "mine").mkdir()  # a data_dir without any of the files: the lookup goes on
    with pytest.raises(D.DataError) as e:
        D.load_dataset("mnist", data_dir=str(tmp_path / "mine"))
    msg = str(e.value)
    for path in (str(tmp_path / "mine"), str(home / ".cache" / "dualnet" / "mnist"),
                 str(tmp_path / "nosystem" / "mnist"), "http://127.0.0.1:9/"):
        assert path in msg
    # in the Python argument's name; the command line adds its flag, the book its variable
    assert "data_dir" in msg and e.value.param == "data_dir"
    assert not any(f.endswith(".part") for _, _, fs in os.walk(home) for f in fs)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_checks_sha256_and_caches(home, server, monkeypatch):
    root, url = server
    arrays = write_mnist(root)
    digests = {f: {hashlib.sha256((root / f).read_bytes()).hexdigest()} for f in arrays}
    monkeypatch.setitem(D.MIRRORS, "mnist", ["http://127.0.0.1:9/", url])  # first mirror fails
    monkeypatch.setitem(D.SHA256, "mnist", digests)
    ds = D.load_dataset("mnist")
    np.testing.assert_array_equal(ds.t_train, arrays["train-labels-idx1-ubyte.gz"])
    cache = home / ".cache" / "dualnet" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(arrays)


def test_failed_download_leaves_no_partial_file(home, server, monkeypatch):
    root, url = server
    write_mnist(root)
    monkeypatch.setitem(D.MIRRORS, "mnist", [url])  # real SHA-256 of MNIST: these files do not match
    with pytest.raises(D.DataError, match="checksum mismatch"):
        D.load_dataset("mnist")
    cache = home / ".cache" / "dualnet" / "mnist"
    assert os.listdir(cache) == []


def test_debian_fashion_mnist_package():
    """The real files of Debian's dataset-fashion-mnist (installed by .ci/run)."""
    folder = "/usr/share/datasets/fashion-mnist"
    if not os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    ds = D.load_dataset("fashion-mnist", data_dir=None)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.t_train).tolist() == [6000] * 10
    assert ds.classes[9] == "Ankle boot"


def write_cifar(folder, n=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
        yield name, labels, pixels


def test_cifar10_binary(tmp_path):
    batches = dict((n, (l, p)) for n, l, p in write_cifar(tmp_path / "cifar-10-batches-bin"))
    ds = D.load_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    l, p = batches["data_batch_1.bin"]
    np.testing.assert_array_equal(ds.t_train[:20], l)
    np.testing.assert_allclose(ds.x_train[0].reshape(-1) * 255, p[0], atol=1e-3)
    ms = D.load_dataset("cifar10", data_dir=str(tmp_path), subtract_mean=True, flatten=True)
    assert ms.x_train.shape == (100, 3072)
    np.testing.assert_allclose(ms.x_train.mean(axis=0), 0, atol=1e-5)


def test_cifar10_truncated_and_missing(tmp_path):
    list(write_cifar(tmp_path))
    with open(tmp_path / "test_batch.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(D.DataError, match="not a multiple of the CIFAR-10 record size"):
        D.load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(D.DataError, match="cifar10 not found"):
        D.load_dataset("cifar10", data_dir=str(tmp_path / "none"))


def test_digits_fixed_split():
    a = D.load_dataset("digits")
    b = D.load_dataset("digits", seed=5)
    assert a.x_train.shape == (1497, 1, 8, 8) and a.x_test.shape == (300, 1, 8, 8)
    np.testing.assert_array_equal(a.t_test, b.t_test)
    assert a.x_train.max() == 1.0
