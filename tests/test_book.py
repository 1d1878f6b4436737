"""dualnet.book: the book's chapter 4-8 scripts run with only their imports swapped, on every device.

The scripts (tests/book_scripts.py) are run as source text in a fresh namespace, and the
convnet one as a real file in a subprocess, on small IDX files in the real MNIST format whose
images are learnable (one blob position per class).  Each test checks that the script learns
and that the network's arrays live on the device of ``DUALNET_DEVICE``.
"""
import ast
import itertools
import math
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import book_scripts as B
from test_data import write_idx

from dualnet.backend import get_device
from dualnet.errors import (CheckpointError, ConfigError, DataError, DeviceError, DualnetError,
                            ShapeError)
from dualnet.book import _env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("blob-mnist")
    B.write_blob_mnist(d, write_idx)
    return d


@pytest.fixture
def book_env(device, mnist_dir, monkeypatch, tmp_path):
    """The book's environment for ``device``: data from the blob files, fresh seeds, cwd in tmp."""
    monkeypatch.setenv("DUALNET_DEVICE", device.spec)
    monkeypatch.setenv("DUALNET_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("DUALNET_SEED", "0")
    for v in ("DUALNET_DATASET", "DUALNET_DTYPE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(_env, "_counter", itertools.count())  # seeds independent of test order
    monkeypatch.chdir(tmp_path)
    np.random.seed(0)   # the scripts draw their batches with NumPy's global generator
    return device


def run_script(name, text=None):
    """Execute script ``name`` as a program's source text; returns the names it left."""
    ns = {"__name__": "__main__"}
    exec(compile(text or B.SCRIPTS[name], f"<{name}>", "exec"), ns)
    return ns


def on_device(device, *arrays):
    return all(device.owns(a) for a in arrays)


def host(device, a):
    return device.to_numpy(a)


# ------------------------------------------------------------------------- the import swap
def test_scripts_import_only_the_books_names():
    """Every script imports the book's modules only, behind ``dualnet.book.``: deleting that
    prefix gives the book's own import lines."""
    for name, text in B.SCRIPTS.items():
        book_imports = 0
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                if node.module.startswith("dualnet"):
                    assert node.module.startswith("dualnet.book."), (name, node.module)
                    assert node.module[len("dualnet.book."):] in B.BOOK_MODULES, (name, node.module)
                    book_imports += 1
                else:
                    assert node.module in ("collections",), (name, node.module)
            elif isinstance(node, ast.Import):
                assert {a.name for a in node.names} <= {"numpy", "sys", "os"}, name
        assert book_imports, name


def test_chapter_5_to_8_scripts_change_only_their_imports():
    """Each script's import lines, ``dualnet.book.`` deleted, are the book script's own, in order
    (a ``numpy`` import the book does not have would hide a missing star export)."""
    chapters = {n for n in B.SCRIPTS if n[:3] in ("CH5", "CH6", "CH7", "CH8")}
    assert set(B.BOOK_IMPORTS) == chapters and len(chapters) == 11
    for name in sorted(chapters):
        lines = [ast.unparse(n).replace("dualnet.book.", "") for n in ast.parse(B.SCRIPTS[name]).body
                 if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert lines == B.BOOK_IMPORTS[name], name


@pytest.mark.parametrize("module", sorted(B.BOOK_EXPORTS))
def test_star_import_gives_the_books_names(module):
    """``from <module> import *`` defines every name the book's module hands a script, and
    ``np`` is NumPy itself (the book's scripts use it for host arrays)."""
    ns = {}
    exec(f"from dualnet.book.{module} import *", ns)
    missing = set(B.BOOK_EXPORTS[module]) - set(ns)
    assert not missing, (module, sorted(missing))
    assert ns["np"] is np
    for name in B.BOOK_EXPORTS[module]:   # the book's names, not dualnet's same-named internals
        obj = ns[name]
        home = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
        if home.startswith("dualnet"):
            assert home.startswith("dualnet.book."), (module, name, home)


def test_star_imported_names_work():
    ns = {}
    exec("from dualnet.book.common.multi_layer_net import *", ns)
    y, t = np.array([0.1, 0.6, 0.3]), np.array([0, 1, 0])
    assert ns["sum_squared_error"](y, t) == pytest.approx(0.5 * (0.01 + 0.16 + 0.09))
    layer = ns["Affine"](np.ones((3, 2)), np.zeros(2))
    np.testing.assert_allclose(np.asarray(layer.forward(np.ones((1, 3)))), [[3.0, 3.0]])
    assert isinstance(ns["OrderedDict"](), dict) and ns["os"].path is os.path
    g = ns["numerical_gradient"](lambda x: float(np.sum(x ** 2)), np.array([1.0, -2.0]))
    np.testing.assert_allclose(g, [2.0, -4.0], rtol=1e-6)
    from dualnet.book.common.gradient import numerical_gradient_2d
    X = np.array([[1.0, 2.0], [3.0, -1.0]])
    np.testing.assert_allclose(numerical_gradient_2d(lambda r: float(np.sum(r ** 2)), X), 2 * X, rtol=1e-6)
    np.testing.assert_allclose(numerical_gradient_2d(lambda r: float(np.sum(r ** 3)), X[0]), [3.0, 12.0],
                               rtol=1e-6)


# ------------------------------------------------------------------------- chapter 4
def test_ch4_two_layer_net_trains_with_manual_updates(book_env):
    dev = book_env
    ns = run_script("CH4_TRAIN_NEURALNET")
    losses, net = ns["train_loss_list"], ns["network"]
    assert all(type(v) is float for v in losses) and len(losses) == 40
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert ns["test_acc_list"][-1] > 0.8 and type(ns["test_acc_list"][-1]) is float
    assert on_device(dev, *net.params.values(), *ns["grad"].values(), net.predict(ns["x_batch"]))
    # chapter 4's net returns probabilities
    p = host(dev, net.predict(ns["x_test"][:5]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_ch4_numerical_gradient_step_lowers_the_loss(book_env):
    ns = run_script("CH4_NUMERICAL_GRADIENT_STEPS")
    before, after = ns["loss_list"]
    assert after < before - 0.01
    assert on_device(book_env, *ns["grad"].values())


# ------------------------------------------------------------------------- chapter 5
def test_ch5_gradient_check(book_env):
    dev = book_env
    text = B.CH5_GRADIENT_CHECK
    if not dev.is_host:
        # NumPy ufuncs reach CuPy arrays through __array_ufunc__, but the simulated device
        # (array_api_strict) refuses them, as NumPy would any other GPU array: compare there.
        text = text.replace("np.average( np.abs(grad_backprop[key] - grad_numerical[key]) )",
                            "np.average(np.abs(device.to_numpy(grad_backprop[key] - "
                            "grad_numerical[key])))")
        text = text.replace("import numpy as np\n", "import numpy as np\nfrom dualnet.book "
                            "import device as _d\ndevice = _d()\n", 1)
    ns = run_script("CH5_GRADIENT_CHECK", text)
    assert set(ns["diffs"]) == {"W1", "b1", "W2", "b2"}
    assert max(ns["diffs"].values()) < 1e-7, ns["diffs"]
    # not vacuous: the gradients are far from zero
    for key in ("W1", "W2"):
        assert np.abs(host(dev, ns["grad_backprop"][key])).max() > 1e-3, key
    assert on_device(dev, *ns["grad_numerical"].values(), *ns["grad_backprop"].values())


def test_ch5_train_neuralnet_with_backprop(book_env):
    dev = book_env
    ns = run_script("CH5_TRAIN_NEURALNET")
    losses, net = ns["train_loss_list"], ns["network"]
    assert len(losses) == 40 and all(type(v) is float for v in losses)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert ns["test_acc_list"][-1] > 0.3
    assert on_device(dev, *net.params.values(), *ns["grad"].values())


# ------------------------------------------------------------------------- chapter 6
def test_ch6_optimizer_paths_on_plain_numbers():
    ns = run_script("CH6_OPTIMIZER_COMPARE_NAIVE")
    f = ns["f"]
    for key, (xs, ys, x, y) in ns["paths"].items():
        assert all(type(v) is float for v in xs + ys), key   # numbers, not one shared array
        assert len(set(xs)) == 30, key
        assert f(x, y) < 0.1 * f(-7.0, 2.0), (key, x, y)


def test_ch6_optimizer_comparison(book_env):
    ns = run_script("CH6_OPTIMIZER_COMPARE_MNIST")
    smoothed, raw = ns["smoothed"], ns["train_loss"]
    for key, curve in smoothed.items():
        assert len(curve) == len(raw[key]) == 20
        assert curve[-1] < curve[0], key
    for key in ("Momentum", "AdaGrad", "Adam"):
        assert smoothed[key][-1] < smoothed["SGD"][-1], key
    opt = ns["optimizers"]["Adam"]
    assert on_device(book_env, *opt.state["m"].values())


def test_ch6_weight_init_comparison(book_env):
    ns = run_script("CH6_WEIGHT_INIT_COMPARE")
    last = {k: np.mean(v[-5:]) for k, v in ns["train_loss"].items()}
    assert last["std=0.01"] > 2.2           # the signal vanishes: no learning
    assert last["He"] < 1.0 and last["Xavier"] < last["std=0.01"] - 0.3


def test_ch6_batch_norm_learns_where_plain_does_not(book_env):
    ns = run_script("CH6_BATCH_NORM_TEST")
    (plain, bn), = ns["results"].values()
    assert len(plain) == len(bn) == 10
    assert bn[-1] > 0.6 and bn[-1] > plain[-1] + 0.3
    # the script's networks are local to __train: build one to check the book's names
    from dualnet.book.common.multi_layer_net_extend import MultiLayerNetExtend
    ext = MultiLayerNetExtend(784, [30, 30], 10, use_batchnorm=True)
    assert list(ext.params) == ["W1", "b1", "W2", "b2", "W3", "b3", "gamma1", "beta1",
                                "gamma2", "beta2"]
    assert on_device(book_env, *ext.params.values())


def test_ch6_weight_decay_is_in_the_loss(book_env):
    dev = book_env
    ns = run_script("CH6_OVERFIT_WEIGHT_DECAY")
    assert len(ns["train_acc_list"]) == 8 and ns["train_acc_list"][-1] > 0.25
    net, x, t = ns["network"], ns["x_batch"], ns["t_batch"]
    from dualnet.book.common.functions import softmax_loss
    ce = softmax_loss(net.predict(x), t)
    penalty = 0.5 * 0.1 * sum(float((host(dev, net.params[f"W{i}"]) ** 2).sum()) for i in range(1, 8))
    assert net.loss(x, t) == pytest.approx(ce + penalty, rel=1e-6)


def test_ch6_dropout_with_the_trainer(book_env):
    dev = book_env
    ns = run_script("CH6_OVERFIT_DROPOUT")
    tr = ns["trainer"]
    assert len(ns["train_acc_list"]) == len(ns["test_acc_list"]) == 8
    # It learns, whatever stream draws the masks (cuRAND's on a GPU is not NumPy's): over NumPy's
    # stream and 20 Philox streams the last test accuracy was 0.34-0.53 (mean 0.44, sd 0.045),
    # from 0.05-0.14 after the first epoch; twice chance (0.1) is 5 sd below that mean.
    assert ns["test_acc_list"][-1] > 0.2
    assert len(tr.train_loss_list) == tr.max_iter == 24
    assert all(type(v) is float and math.isfinite(v) for v in tr.train_loss_list)
    assert on_device(dev, tr.x_train, tr.t_train, *ns["network"].params.values())


def test_ch6_hyperparameter_search(book_env):
    ns = run_script("CH6_HYPERPARAMETER_OPTIMIZATION")
    assert ns["x_val"].shape == (100, 784) and ns["x_train"].shape == (400, 784)
    assert len(ns["results_val"]) == 4 and all(len(v) == 4 for v in ns["results_val"].values())
    assert ns["best"][0][1][-1] > 0.5


# ------------------------------------------------------------------------- chapters 7 and 8
def test_ch7_train_convnet_as_a_script(book_env, mnist_dir, tmp_path):
    """The real thing: a script file, run by Python, with DUALNET_DEVICE in its environment."""
    dev = book_env
    script = tmp_path / "train_convnet.py"
    script.write_text(B.CH7_TRAIN_CONVNET)
    # the checkout first, and every folder the environment already names (a GPU image's wheels)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    epochs = re.findall(r"=== epoch:(\d+), train acc:([\d.]+), test acc:([\d.]+) ===", r.stdout)
    assert [int(e[0]) for e in epochs] == [1, 2, 3, 4]
    final = float(re.search(r"test acc:([\d.]+)\s*\nSaved Network Parameters!", r.stdout).group(1))
    assert final > 0.6
    # save_params("params.pkl") wrote a pickle-free params.npz
    assert not (tmp_path / "params.pkl").exists()
    with np.load(tmp_path / "params.npz", allow_pickle=False) as z:
        assert "param/0.W" in z.files and z["param/0.W"].shape == (8, 1, 5, 5)
    # ... which loads into a fresh network on this device and gives the script's accuracy
    from dualnet.book.dataset.mnist import load_mnist
    from dualnet.book.simple_convnet import SimpleConvNet
    (_, _), (x_test, t_test) = load_mnist(flatten=False)
    net = SimpleConvNet(conv_param={'filter_num': 8, 'filter_size': 5, 'pad': 0, 'stride': 1},
                        hidden_size=30)
    net.load_params("params.pkl")
    assert on_device(dev, *net.params.values())
    assert net.accuracy(x_test[:100], t_test[:100]) == pytest.approx(final)


def test_ch8_deep_convnet_steps(book_env, monkeypatch):
    dev = book_env
    monkeypatch.setenv("DUALNET_DTYPE", "float32")   # as a GPU user would run it
    ns = run_script("CH8_TRAIN_DEEPNET")
    tr, net = ns["trainer"], ns["network"]
    assert len(tr.train_loss_list) == 2 and all(math.isfinite(v) for v in tr.train_loss_list)
    assert list(net.params)[-4:] == ["W7", "b7", "W8", "b8"]
    assert net.params["W7"].shape == (64 * 4 * 4, 50)
    assert on_device(dev, *net.params.values())
    from dualnet.book.deep_convnet import DeepConvNet
    again = DeepConvNet()
    again.load_params("deep_convnet_params.pkl")
    x = ns["x_test"][:4]
    assert str(net.params["W1"].dtype).endswith("float32")
    np.testing.assert_allclose(host(dev, again.predict(x)), host(dev, net.predict(x)), rtol=1e-5)


# ------------------------------------------------------------------------- params, files, layers
def test_params_are_the_models_own_arrays(book_env):
    dev = book_env
    from dualnet.book.two_layer_net import TwoLayerNet
    net = TwoLayerNet(784, 4, 10)
    assert net.params["W1"] is net.model.params["0.W"] and net.params["b2"] is net.model.params["2.b"]
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    before = host(dev, net.predict(x))
    net.params["b2"] += 1.0                 # in place, through the view
    np.testing.assert_allclose(host(dev, net.predict(x)), before + 1.0)
    net.params["b2"] = np.zeros(10)         # assignment copies into the same array
    assert net.params["b2"] is net.model.params["2.b"] and float(host(dev, net.params["b2"]).sum()) == 0
    with pytest.raises(ShapeError, match=r"params\['W1'\] has shape \(784, 4\).*\(3, 3\)"):
        net.params["W1"] = np.zeros((3, 3))
    with pytest.raises(KeyError, match="has no parameter 'W3'.*W1, b1, W2, b2") as e:
        net.params["W3"]
    assert isinstance(e.value, DualnetError) and "W3" not in net.params and "W1" in net.params


def test_save_and_load_params_without_pickle(book_env, tmp_path, monkeypatch):
    dev = book_env
    from dualnet.book.common.multi_layer_net_extend import MultiLayerNetExtend
    net = MultiLayerNetExtend(784, [6, 5], 10, use_batchnorm=True)
    x = np.random.default_rng(1).random((20, 784))
    net.gradient(x, np.arange(20) % 10)     # moves the batch-norm running statistics
    assert net.save_params("params.pkl") == "params.npz"
    with np.load("params.npz", allow_pickle=False) as z:
        assert {"meta", "param/0.W", "buffer/1.running_mean"} <= set(z.files)
    # a checkpoint written on this device loads on the CPU (and the other way round)
    monkeypatch.setenv("DUALNET_DEVICE", "cpu")
    cpu_net = MultiLayerNetExtend(784, [6, 5], 10, use_batchnorm=True)
    cpu_net.load_params("params.pkl")
    np.testing.assert_allclose(cpu_net.predict(x), host(dev, net.predict(x)), rtol=1e-6, atol=1e-9)
    # a plain .npz named like params loads too (e.g. the book's weights converted once)
    np.savez("plain.npz", **{k: host(dev, v) for k, v in net.params.items()})
    cpu_net2 = MultiLayerNetExtend(784, [6, 5], 10, use_batchnorm=True)
    cpu_net2.load_params("plain.npz")
    np.testing.assert_array_equal(cpu_net2.params["gamma2"], host(dev, net.params["gamma2"]))
    # pickles are refused, with the way out
    with open("book.pkl", "wb") as f:
        pickle.dump({"W1": np.zeros(3)}, f)
    with pytest.raises(CheckpointError, match="never unpickles.*book.npz"):
        cpu_net.load_params("book.pkl")
    with open("sneaky.npz", "wb") as f:
        pickle.dump({"W1": np.zeros(3)}, f)
    with pytest.raises(CheckpointError, match="without pickle"):
        cpu_net.load_params("sneaky.npz")
    with pytest.raises(CheckpointError, match=r"W1 has shape \(784, 6\) in the file but \(784, 7\)"):
        MultiLayerNetExtend(784, [7, 5], 10, use_batchnorm=True).load_params("params.pkl")
    with pytest.raises(CheckpointError, match="missing.npz does not exist.*save_params"):
        cpu_net.load_params("missing.pkl")


def test_common_layers_backprop_matches_numerical(book_env):
    dev = book_env
    from dualnet.book.common.gradient import numerical_gradient
    from dualnet.book.common.layers import (Affine, BatchNormalization, Convolution, Dropout,
                                            Pooling, Relu, SoftmaxWithLoss)
    rng = np.random.default_rng(0)
    conv = Convolution(rng.normal(0, 0.3, (3, 1, 3, 3)), np.zeros(3), stride=1, pad=1)
    bn = BatchNormalization(np.ones(3 * 4 * 4), np.zeros(3 * 4 * 4))   # the book's per-element form
    relu, pool = Relu(), Pooling(2, 2, stride=2)
    fc = Affine(rng.normal(0, 0.3, (48, 5)), np.zeros(5))
    drop, last = Dropout(0.0), SoftmaxWithLoss()
    x, t = rng.random((4, 1, 8, 8)), np.array([0, 1, 2, 3])
    layers = [conv, relu, pool, bn, fc, drop]

    def loss(_=None):
        h = x
        for layer in layers:
            h = layer.forward(h)
        return last.forward(h, t)

    value = loss()
    assert type(value) is float
    d = last.backward(1)
    for layer in reversed(layers):
        d = layer.backward(d)
    assert tuple(d.shape) == x.shape and on_device(dev, d, conv.dW, fc.dW, bn.dgamma)
    for layer, name, grad in ((conv, "W", conv.dW), (fc, "W", fc.dW), (bn, "gamma", bn.dgamma)):
        num = numerical_gradient(loss, getattr(layer, name))
        np.testing.assert_allclose(host(dev, grad), host(dev, num), rtol=1e-4, atol=1e-6)
    # per-channel batch norm (dualnet's form) on the same maps, and inference mode
    bn_c = BatchNormalization(np.ones(3), np.zeros(3), running_mean=np.zeros(3), running_var=np.ones(3))
    h = conv.forward(x)
    assert tuple(bn_c.forward(h, train_flg=False).shape) == (4, 3, 8, 8)
    assert conv.W.shape == (3, 1, 3, 3) and on_device(dev, conv.W, bn_c.running_var)
    with pytest.raises(ShapeError, match="needs W of shape"):
        Affine(np.zeros(3), np.zeros(3))


def test_functions_util_and_gradient():
    from dualnet.book.common.functions import (cross_entropy_error, mean_squared_error, relu_grad,
                                               sigmoid, sigmoid_grad, softmax, step_function)
    from dualnet.book.common.gradient import numerical_gradient
    from dualnet.book.common.util import col2im, im2col, shuffle_dataset, smooth_curve
    y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    t = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    assert mean_squared_error(y, t) == pytest.approx(0.0975) and type(mean_squared_error(y, t)) is float
    assert cross_entropy_error(y, t) == pytest.approx(0.510825457099338)
    assert cross_entropy_error(np.stack([y, y]), np.array([2, 2])) == pytest.approx(0.510825457099338)
    np.testing.assert_allclose(softmax(np.array([[0.3, 2.9, 4.0], [1000, 1000, 1000]])).sum(axis=1), 1)
    np.testing.assert_array_equal(step_function(np.array([-1.0, 1.0, 2.0])), [0, 1, 1])
    np.testing.assert_allclose(sigmoid_grad(np.array([0.0])), [0.25])
    assert float(sigmoid(np.array(0.0))) == 0.5
    np.testing.assert_array_equal(relu_grad(np.array([-1.0, 0.0, 2.0])), [0, 1, 1])
    g = numerical_gradient(lambda x: x[0] ** 2 + x[1] ** 2, np.array([3.0, 4.0]))
    np.testing.assert_allclose(g, [6.0, 8.0], rtol=1e-6)
    with pytest.raises(DualnetError, match="float array"):
        numerical_gradient(lambda x: 0.0, np.array([3, 4]))
    # im2col in the book's layout: row (n, oh, ow), column (c, i, j)
    x = np.random.default_rng(0).random((2, 3, 5, 5))
    col = im2col(x, 3, 3, stride=2, pad=1)
    assert col.shape == (2 * 3 * 3, 3 * 3 * 3)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    np.testing.assert_array_equal(col[1 * 9 + 1 * 3 + 2], xp[1, :, 2:5, 4:7].ravel())
    c = np.random.default_rng(1).random(col.shape)   # col2im is im2col's adjoint
    assert np.sum(col * c) == pytest.approx(np.sum(x * col2im(c, x.shape, 3, 3, stride=2, pad=1)))
    xs, ts = shuffle_dataset(np.arange(20).reshape(10, 2), np.arange(10))
    np.testing.assert_array_equal(xs[:, 0] // 2, ts)
    assert sorted(ts) == list(range(10))
    s = smooth_curve([2.0] * 30)
    assert len(s) == 30 and np.allclose(s, 2.0)
    assert np.ptp(smooth_curve(np.random.default_rng(0).random(100))) < 0.8


def test_float32_and_errors_name_the_fix(book_env, monkeypatch, mnist_dir, tmp_path):
    dev = book_env
    from dualnet.book.common.trainer import Trainer
    from dualnet.book.dataset.mnist import load_mnist
    from dualnet.book.simple_convnet import SimpleConvNet
    from dualnet.book.two_layer_net import TwoLayerNet
    monkeypatch.setenv("DUALNET_DTYPE", "float32")
    (x, t), _ = load_mnist()
    net = TwoLayerNet(784, 10, 10)
    assert str(net.params["W1"].dtype).endswith("float32") and net.dtype == "float32"
    with pytest.raises(ConfigError, match="optimizer='Adamm'.*'Adam'"):
        Trainer(net, x, t, x, t, optimizer="Adamm")
    with pytest.raises(ConfigError, match="optimizer_param=.*does not fit SGD"):
        Trainer(net, x, t, x, t, optimizer_param={"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="conv_param lacks 'stride'"):
        SimpleConvNet(conv_param={'filter_num': 3, 'filter_size': 5, 'pad': 0})
    with pytest.raises(ShapeError, match="flatten=False"):
        conv = SimpleConvNet(conv_param={'filter_num': 3, 'filter_size': 5, 'pad': 0, 'stride': 1})
        conv.loss(x[:2], t[:2])       # flattened rows into a conv net
    other = get_device("sim:2")
    with pytest.raises(DeviceError, match=f"device2.*network is on {dev.spec}.*host NumPy arrays"):
        net.loss(other.asarray(x[:2]), t[:2])
    for var, value, err, text in (("DUALNET_DEVICE", "gpu", DeviceError, "DUALNET_DEVICE='gpu'"),
                                  ("DUALNET_DTYPE", "float16", ConfigError, "float64"),
                                  ("DUALNET_SEED", "abc", ConfigError, "DUALNET_SEED"),
                                  ("DUALNET_DATASET", "cifar10", ConfigError, "fashion-mnist")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(err, match=text):
                TwoLayerNet(784, 10, 10) if var != "DUALNET_DATASET" else load_mnist()
    monkeypatch.setenv("DUALNET_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="DUALNET_DATA_DIR=.*nowhere.*not a folder"):
        load_mnist()


def test_load_mnist_shapes_and_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(_env, "_counter", itertools.count())
    B.write_blob_mnist(tmp_path / "mnist", write_idx, n_train=30, n_test=10)
    B.write_blob_mnist(tmp_path / "fashion-mnist", write_idx, n_train=20, n_test=10)
    monkeypatch.setenv("DUALNET_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DUALNET_DATASET", raising=False)
    from dualnet.book.dataset.mnist import load_mnist
    (x, t), (xt, tt) = load_mnist()
    assert x.shape == (30, 784) and x.dtype == np.float32 and t.shape == (30,) and xt.shape == (10, 784)
    (x, t), _ = load_mnist(normalize=False, flatten=False, one_hot_label=True)
    assert x.shape == (30, 1, 28, 28) and x.dtype == np.uint8 and t.shape == (30, 10)
    monkeypatch.setenv("DUALNET_DATASET", "fashion-mnist")
    (x, t), _ = load_mnist()
    assert x.shape == (20, 784)
