"""dualnet.cs231n: CS231n's two-layer-net notebook runs with only its four imports swapped.

The notebook's code cells (tests/cs231n_notebook.py) run top to bottom on each device, on small
CIFAR-10 batches that the tests write in the course's pickled format (Python 2 pickles, as the
real files are).  A planted batch whose pickle would run code is refused and its code never runs.
"""
import contextlib
import io
import os
import pickle
import re
import struct

import numpy as np
import pytest

import cs231n_notebook as NB

from dualnet.errors import DataError, DeviceError, DTypeError, DualnetError, ShapeError

RECONSTRUCT = np.zeros(0).__reduce__()[0]


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote CIFAR-10: text and bytes as Python 2 ``str``
    (BINSTRING) and NumPy's ``_reconstruct`` under NumPy 1's ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def _save_builtin(self, obj):
        if obj is RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            self.save_global(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str
    dispatch[type(RECONSTRUCT)] = _save_builtin


def write_py2_batch(path, images, labels, name):
    """A CIFAR-10 python batch: {'batch_label', 'labels', 'data' (N, 3072) uint8, 'filenames'}."""
    batch = {"batch_label": name, "labels": [int(v) for v in labels],
             "data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1)),
             "filenames": [f"img_{i:05d}.png" for i in range(len(images))]}
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(batch)


def learnable_images(n, seed):
    """``n`` 32x32 RGB uint8 images: class k is a bright square at one of 10 places, in one of
    three colours, over noise -- easy for a two-layer net, hard to guess."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    imgs = rng.uniform(0, 60, (n, 32, 32, 3))
    for i, k in enumerate(labels):
        r, c = 4 + 10 * (k // 4), 2 + 8 * (k % 4)
        imgs[i, r:r + 6, c:c + 6, k % 3] += 180
    return np.clip(imgs, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """The notebook's relative folder cs231n/datasets/cifar-10-batches-py, in a temporary cwd."""
    base = tmp_path_factory.mktemp("cs231n")
    root = base / "cs231n" / "datasets" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for b in range(1, 6):
        x, t = learnable_images(60, b)
        write_py2_batch(root / f"data_batch_{b}", x, t, f"training batch {b} of 5")
    x, t = learnable_images(60, 9)
    # the test batch as Python 3 writes protocol 2 (bytes keys, bytes through _codecs.encode)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in t],
                     b"data": x.transpose(0, 3, 1, 2).reshape(60, -1).copy(),
                     b"filenames": [b"a.png"] * 60}, f, protocol=2)
    return base


@pytest.fixture
def course_env(device, cifar_root, monkeypatch):
    monkeypatch.setenv("DUALNET_DEVICE", device.spec)
    monkeypatch.delenv("DUALNET_DTYPE", raising=False)
    monkeypatch.chdir(cifar_root)
    return device


def run_notebook():
    """The notebook's cells in one namespace; returns (namespace, what it printed)."""
    ns, out = {"__name__": "__main__"}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(NB.NOTEBOOK, "<two_layer_net.ipynb>", "exec"), ns)
    return ns, out.getvalue()


def printed_after(text, heading):
    return float(text.split(heading, 1)[1].split()[0])


# ------------------------------------------------------------------------- the notebook
def test_notebook_imports_are_the_course_s_with_the_prefix():
    lines = [ln for ln in NB.NOTEBOOK.splitlines() if "cs231n" in ln and "import" in ln]
    assert [ln.strip().replace("dualnet.cs231n", "cs231n") for ln in lines] == NB.COURSE_IMPORTS


def test_notebook_runs_and_meets_its_checks(course_env):
    dev = course_env
    ns, out = run_notebook()
    # the notebook's own checks, read from what it printed
    assert printed_after(out, "Difference between your scores and correct scores:") < 1e-7
    assert printed_after(out, "Difference between your loss and correct loss:") < 1e-10
    rel = dict(re.findall(r"(\w+) max relative error: (\S+)", out))
    assert set(rel) == {"W1", "b1", "W2", "b2"} and max(float(v) for v in rel.values()) < 1e-8, rel
    assert printed_after(out, "Final training loss: ") < 0.2
    # what crossed into the notebook is host NumPy, float64 where it is a float
    assert type(ns["scores"]) is np.ndarray and ns["scores"].dtype == np.float64
    assert all(type(g) is np.ndarray and g.dtype == np.float64 for g in ns["grads"].values())
    assert type(ns["net"].params["W1"]) is np.ndarray and ns["net"].params["W1"].dtype == np.float64
    # the CIFAR-10 part: shapes, learning, the weights grid
    assert ns["X_train"].shape == (NB.N_TRAIN, 3072) and ns["X_test"].shape == (NB.N_TEST, 3072)
    stats = ns["stats"]
    # 240 images in batches of 40: an epoch every 6 iterations, 0, 6, ..., 198
    assert len(stats["loss_history"]) == 200 and len(stats["val_acc_history"]) == 34
    # the course's learning rate (1e-4) is too low to move the loss much, as the notebook says,
    # but the net learns; the search's 1e-3 learns well
    assert np.mean(stats["loss_history"][-20:]) < stats["loss_history"][0]
    assert ns["val_acc"] > 0.4 and ns["best_val"] > 0.8 and ns["test_acc"] > 0.8   # chance: 0.1
    assert ns["grid"].shape == (8 * 32 + 7 * 3, 8 * 32 + 7 * 3, 3) and ns["grid"].max() == 255
    # ... computed on the device the environment named
    net = ns["best_net"]
    assert net.device == dev and all(dev.owns(a) for a in net._weights.values())


def test_gradient_check_edits_reach_the_device(course_env):
    """The notebook's gradient check changes net.params in place between loss calls: the next
    loss must see each change, on every device."""
    from dualnet.cs231n.classifiers.neural_net import TwoLayerNet
    np.random.seed(0)
    net = TwoLayerNet(4, 5, 3, std=0.1)
    X, y = np.random.randn(6, 4), np.array([0, 1, 2, 0, 1, 2])
    before = net.loss(X, y)[0]
    W1 = net.params["W1"]
    W1 += 0.5
    assert net.loss(X, y)[0] != before
    W1 -= 0.5
    assert net.loss(X, y)[0] == pytest.approx(before, abs=1e-12)
    scores = net.loss(X)
    net.params["b2"] = np.ones(3)             # replacing a parameter is seen too
    np.testing.assert_allclose(net.loss(X), scores + 1.0, rtol=1e-12)
    assert net.params["b2"].sum() == 3.0
    # training writes the trained values into the very arrays the caller holds
    stats = net.train(X, y, X, y, learning_rate=0.5, learning_rate_decay=1.0,
                      num_iters=300, batch_size=6)
    assert W1 is net.params["W1"]
    trained = net.loss(X)
    np.random.seed(0)
    fresh = TwoLayerNet(4, 5, 3, std=0.1)
    for k in ("W1", "b1", "W2", "b2"):
        fresh.params[k] = net.params[k]
    np.testing.assert_allclose(fresh.loss(X), trained, rtol=1e-12)
    assert stats["loss_history"][-1] < stats["loss_history"][0]
    assert (net.predict(X) == y).mean() == 1.0 and net.predict(X).dtype == np.int64


def test_training_history_and_decay_follow_the_course(course_env, capsys):
    from dualnet.cs231n.classifiers.neural_net import TwoLayerNet
    np.random.seed(3)
    X, y = np.random.randn(50, 8), np.random.randint(0, 4, 50)
    net = TwoLayerNet(8, 6, 4, std=0.1)
    stats = net.train(X, y, X[:10], y[:10], learning_rate=0.0, num_iters=1201, batch_size=20,
                      verbose=True)
    # 2.5 iterations per epoch: epochs start at iterations 0, 5, 10, ... (it % 2.5 == 0)
    assert len(stats["train_acc_history"]) == len(stats["val_acc_history"]) == 1201 // 5 + 1
    assert len(stats["loss_history"]) == 1201 and all(type(v) is float for v in stats["loss_history"])
    assert len(set(stats["val_acc_history"])) == 1      # lr 0: nothing moved
    printed = capsys.readouterr().out
    assert printed.count("iteration ") == 13 and "iteration 1200 / 1201: loss" in printed
    with pytest.raises(ShapeError, match=r"X has shape \(3, 7\).*8 features"):
        net.loss(np.zeros((3, 7)))
    with pytest.raises(KeyError, match="no parameter 'W3'.*W1, b1, W2, b2") as e:
        net.params["W3"]
    assert isinstance(e.value, DualnetError)
    snapshot = net.params.copy()
    assert type(snapshot) is dict and snapshot["W1"] is not net.params["W1"]
    np.testing.assert_array_equal(snapshot["W2"], net.params["W2"])
    assert dict(net.params.items()).keys() == {"W1", "b1", "W2", "b2"} and "W1" in net.params
    with pytest.raises(ShapeError, match=r"params\['W1'\] has shape \(8, 6\).*\(6, 8\)"):
        net.params["W1"] = np.zeros((6, 8))


def test_unknown_device_is_refused(monkeypatch):
    from dualnet.cs231n.classifiers.neural_net import TwoLayerNet
    monkeypatch.setenv("DUALNET_DEVICE", "gpu7")
    with pytest.raises(DeviceError, match="DUALNET_DEVICE='gpu7'.*cpu"):
        TwoLayerNet(4, 3, 2)


# ------------------------------------------------------------------------- the modules
def test_gradient_check_helpers():
    from dualnet.cs231n.gradient_check import (eval_numerical_gradient, eval_numerical_gradient_array,
                                               grad_check_sparse)
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = eval_numerical_gradient(lambda a: float(np.sum(a ** 3)), x, verbose=False)
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, [[1.0, -2.0], [0.5, 3.0]])      # restored
    df = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(eval_numerical_gradient_array(lambda a: a * a, x, df), 2 * x * df, rtol=1e-8)
    errs = grad_check_sparse(lambda a: float(np.sum(a ** 2)), x, 2 * x, num_checks=3)
    assert len(errs) == 3 and max(errs) < 1e-8
    assert max(grad_check_sparse(lambda a: float(np.sum(a ** 2)), x, 3 * x, num_checks=3)) > 0.1
    with pytest.raises(DTypeError, match="float NumPy array"):
        eval_numerical_gradient(lambda a: 0.0, np.array([1, 2]))


def test_visualize_grid():
    from dualnet.cs231n.vis_utils import visualize_grid
    Xs = np.arange(5 * 2 * 3 * 1, dtype=float).reshape(5, 2, 3, 1)
    Xs[4] = 7.0                                 # a constant image
    g = visualize_grid(Xs, ubound=10.0, padding=2)
    assert g.shape == (3 * 2 + 2 * 2, 3 * 3 + 2 * 2, 1)
    np.testing.assert_allclose(g[0:2, 0:3, 0], 10.0 * np.arange(6).reshape(2, 3) / 5)
    np.testing.assert_allclose(g[0:2, 5:8, 0], 10.0 * np.arange(6).reshape(2, 3) / 5)   # image 1
    assert g[2:4].sum() == 0 and g[:, 3:5].sum() == 0             # padding rows and columns
    assert g[4:6, 5:8].sum() == 0 and g[8:, :].sum() == 0         # constant image 4; empty slots
    with pytest.raises(ShapeError, match=r"\(N, H, W, C\)"):
        visualize_grid(np.zeros((3, 4)))


def test_load_cifar10_reads_the_course_s_batches(cifar_root):
    from dualnet.cs231n.data_utils import load_CIFAR10
    root = cifar_root / "cs231n" / "datasets" / "cifar-10-batches-py"
    Xtr, Ytr, Xte, Yte = load_CIFAR10(str(root))
    assert Xtr.shape == (300, 32, 32, 3) and Xtr.dtype == np.float64 and Ytr.dtype == np.int64
    assert Xte.shape == (60, 32, 32, 3) and Yte.shape == (60,)
    x, t = learnable_images(60, 1)
    np.testing.assert_array_equal(Xtr[:60], x)
    np.testing.assert_array_equal(Ytr[:60], t)
    np.testing.assert_array_equal(Xte, learnable_images(60, 9)[0])
    # the file really is a Python 2 pickle of the course's layout
    raw = (root / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct" in raw
    assert b"U\x04data" in raw      # a Python 2 str key (SHORT_BINSTRING), not a unicode one


class _WritesAFile:
    """What a malicious batch would hold: unpickling it runs exec, which writes ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


def test_planted_batch_is_refused_and_its_code_never_runs(tmp_path):
    from dualnet.cs231n.data_utils import load_CIFAR10
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for b in range(1, 6):
        write_py2_batch(root / f"data_batch_{b}", *learnable_images(4, b), "training")
    write_py2_batch(root / "test_batch", *learnable_images(4, 0), "testing")
    marker = tmp_path / "payload-ran.txt"
    x, t = learnable_images(4, 3)
    planted = {"batch_label": "training batch 3 of 5", "labels": [int(v) for v in t],
               "data": x.reshape(4, -1), "filenames": _WritesAFile(marker)}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        (root / "data_batch_3").write_bytes(pickle.dumps(planted, protocol=protocol))
        with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 batch.*exec.*none of it ran"):
            load_CIFAR10(str(root))
        assert not marker.exists()
    # a real batch pickled at protocol 5 (NumPy's arrays through _frombuffer) is read
    from dualnet.cs231n.data_utils import load_CIFAR_batch
    good = dict(planted, filenames=[b"a.png"] * 4, data=x.transpose(0, 3, 1, 2).reshape(4, -1).copy())
    (root / "p5").write_bytes(pickle.dumps(good, protocol=5))
    X5, Y5 = load_CIFAR_batch(str(root / "p5"))
    np.testing.assert_array_equal(X5, x)
    np.testing.assert_array_equal(Y5, t)
    # the payload is live: a plain unpickler would have written the file
    pickle.loads(pickle.dumps(planted))
    assert marker.read_text() == "ran"
    marker.unlink()
    # other things a batch must not hold: an object array, a class, a dict that is no batch
    for bad, text in ((np.array([1, "x"], dtype=object), "not a CIFAR-10 batch|holds"),
                      ({"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]}, r"uint8 \(N, 3072\)"),
                      ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 11]}, "0..9"),
                      (DataError, "not a CIFAR-10 batch")):
        (root / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
        with pytest.raises(DataError, match=text):
            load_CIFAR10(str(root))
    (root / "data_batch_3").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(DataError, match="data_batch_3 cannot be read"):
        load_CIFAR10(str(root))
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 does not exist.*cifar-10-python.tar.gz"):
        load_CIFAR10(str(root))
    with pytest.raises(DataError, match="not a folder"):
        load_CIFAR10(str(tmp_path / "nowhere"))


def test_training_steps_cross_to_the_host_a_fixed_number_of_times(monkeypatch):
    """Copies between host and device in ``train`` do not grow with the number of steps (up to
    the 1000 iterations whose batch indices go over at once), and ``verbose`` adds one read per
    100 iterations; counted on the simulated device, whose transfers are the device's methods."""
    from dualnet.cs231n.classifiers.neural_net import TwoLayerNet
    monkeypatch.setenv("DUALNET_DEVICE", "sim")
    np.random.seed(0)
    X, y = np.random.randn(40, 6), np.random.randint(0, 3, 40)
    net = TwoLayerNet(6, 5, 3, std=0.1)
    net.params["W1"]                       # handed out: pushed once per call
    dev, calls = net.device, []
    for name in ("asarray", "to_numpy"):
        real = getattr(dev, name)
        monkeypatch.setattr(dev, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])

    def transfers(iters, verbose=False):
        calls.clear()
        with contextlib.redirect_stdout(io.StringIO()):
            net.train(X, y, X[:10], y[:10], num_iters=iters, batch_size=10, verbose=verbose)
        return len(calls)

    few, many = transfers(20), transfers(600)
    # W1 pushed, X, y, X_val, y_val, one block of indices in; 4 parameters, 3 histories out
    assert few == many == 1 + 4 + 1 + 4 + 3, (few, many)
    assert transfers(600, verbose=True) == many + 6
    assert transfers(1001) == many + 1     # a second block of batch indices
