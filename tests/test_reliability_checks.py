"""Nothing wrong passes silently: optimizer settings that cannot train, checkpoints that
contradict themselves, labels and batches that only some calls checked, layers called out of
order, impossible model sizes, and messages that must diagnose correctly.

Each case asserts the exit code (or the error class), that no traceback is printed, and what
is left on disk; the wording of messages is not pinned, only what they must name.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import dualnet as dn
from dualnet.checkpoint import CheckpointError, load_checkpoint
from dualnet.cli import main
from cli_run import one_line, run
from dualnet.errors import ConfigError, DualnetError


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run of the default command (digits, simple_convnet, Adam)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--no-plots", "--device", "cpu"]) == 0
    return out


def tamper(src, dst, doc_fn=None, arrays_fn=None):
    """A copy of checkpoint ``src`` at ``dst`` with its JSON document and arrays changed."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(str(arrays.pop("meta")))
    if doc_fn:
        doc_fn(doc)
    if arrays_fn:
        arrays_fn(arrays)
    np.savez(dst, meta=np.array(json.dumps(doc)), **arrays)
    return dst


def resume_refused(capsys, tmp_path, trained, **how):
    """Resume a tampered copy of ``trained``'s checkpoint in a copy of its run directory: the
    command must stop with one line, before training, leaving the directory as it was."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    ck = tamper(trained / "checkpoint.npz", run_dir / "checkpoint.npz", **how)
    before, files = digest(ck), listing(run_dir)
    code, out, err = run(capsys, "train", "--resume", ck, "--epochs", 2, "--no-progress", "--no-plots")
    assert code == 2 and one_line(err), err
    assert "epoch 2/2" not in out and "(command line:" not in err  # no flag blamed that was not given
    assert "train 1497" not in out  # refused before the data was loaded
    assert digest(ck) == before and listing(run_dir) == files
    return err


# --------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("make,name", [
    (lambda O: O.Adam(beta1=5), "beta1"), (lambda O: O.Adam(beta2=-1), "beta2"),
    (lambda O: O.Adam(beta1=1.0), "beta1"), (lambda O: O.Adam(lr=0), "lr"),
    (lambda O: O.SGD(lr=float("nan")), "lr"), (lambda O: O.SGD(lr=-1), "lr"),
    (lambda O: O.Momentum(momentum=1.5), "momentum"), (lambda O: O.Nesterov(momentum=-0.1), "momentum"),
    (lambda O: O.RMSprop(decay_rate=2), "decay_rate"), (lambda O: O.AdaGrad(lr="fast"), "lr")])
@pytest.mark.parametrize("where", ["dualnet", "book"])
def test_optimizer_settings_that_cannot_train_are_refused(make, name, where):
    if where == "book":
        from dualnet.book.common import optimizer as O
    else:
        from dualnet import optimizers as O
    with pytest.raises(ConfigError) as e:
        make(O)
    assert e.value.param == name and name in str(e.value)
    assert "[0, 1)" in str(e.value) or "(0, inf)" in str(e.value)  # the valid range is named


@pytest.mark.parametrize("key,value", [("beta1", 5), ("beta2", -1.0), ("beta1", 1.0), ("lr", 0.0)])
def test_a_checkpoint_whose_optimizer_cannot_train_is_refused(capsys, tmp_path, trained, key, value):
    err = resume_refused(capsys, tmp_path, trained, doc_fn=lambda d: d["optimizer"].__setitem__(key, value))
    assert key in err and "checkpoint" in err


def test_a_negative_second_moment_is_refused_as_damage(capsys, tmp_path, trained):
    def negative_v(arrays):
        k = next(k for k in arrays if k.startswith("opt/v/"))
        arrays[k] = arrays[k] - 1.0
    err = resume_refused(capsys, tmp_path, trained, arrays_fn=negative_v)
    assert "opt/v/" in err and "lower the learning rate" not in err


def test_load_state_dict_checks_the_hyper_parameters_too():
    opt = dn.Adam()
    scalars, arrays = opt.state_dict()
    with pytest.raises(CheckpointError, match="beta2"):
        opt.load_state_dict(dict(scalars, beta2=3.0), arrays, dn.get_device("cpu"))
    assert opt.beta2 == 0.999  # nothing was taken from the refused state


# --------------------------------------------------------------------------- checkpoints
def _doc(*path, value):
    def fn(d):
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return fn


def _both(f, g):
    return lambda d: (f(d), g(d))


@pytest.mark.parametrize("case,how,names", [
    ("model dtype against its arrays", dict(doc_fn=_doc("model", "dtype", value="float64")), "float64"),
    ("model_kwargs against the layers", dict(doc_fn=_both(_doc("model", "model_kwargs", "hidden_size", value=50),
                                                          _doc("meta", "config", "model_kwargs", "hidden_size",
                                                               value=50))), "layer"),
    ("model_kwargs against the run's", dict(doc_fn=_doc("model", "model_kwargs", "hidden_size", value=50)),
     "model_kwargs"),
    ("config.model against the model", dict(doc_fn=_doc("meta", "config", "model", value="mlp")), "mlp"),
    ("config.dtype against the model", dict(doc_fn=_doc("meta", "config", "dtype", value="float64")), "dtype"),
    ("model named but unknown", dict(doc_fn=_doc("model", "name", value="resnet")), "resnet"),
    ("model_kwargs that build nothing", dict(doc_fn=_both(_doc("model", "model_kwargs", "evil", value=1),
                                                          _doc("meta", "config", "model_kwargs", "evil",
                                                               value=1))), "evil"),
    ("config batch_size 0", dict(doc_fn=_doc("meta", "config", "batch_size", value=0)), "batch_size"),
    ("config lr -1", dict(doc_fn=_doc("meta", "config", "lr", value=-1.0)), "lr"),
    ("config val_fraction 2", dict(doc_fn=_doc("meta", "config", "val_fraction", value=2.0)), "val_fraction"),
    ("config epochs 1.5", dict(doc_fn=_doc("meta", "config", "epochs", value=1.5)), "epochs"),
])
def test_a_checkpoint_that_contradicts_itself_is_refused_before_the_data_loads(capsys, tmp_path, trained,
                                                                              case, how, names):
    err = resume_refused(capsys, tmp_path, trained, **how)
    assert names in err and "checkpoint" in err
    code, out, err = run(capsys, "evaluate", "--checkpoint", tmp_path / "run" / "checkpoint.npz", "--device", "cpu")
    assert code == 2 and one_line(err) and "test accuracy" not in out


@pytest.mark.parametrize("name,kw", [("two_layer_net", {}), ("mlp", dict(hidden_sizes=[7, 5], use_batchnorm=True,
                                                                          dropout=0.2, activation="tanh")),
                                     ("simple_convnet", dict(filter_size=3, pad=1, use_batchnorm=True)),
                                     ("deep_convnet", {}),
                                     ("alexnet", dict(widths=(4, 4, 4, 4, 4), hidden_size=8, resize=139))])
def test_every_named_model_passes_its_own_consistency_check(tmp_path, name, kw):
    shape = {"deep_convnet": (1, 28, 28), "alexnet": (3, 12, 12)}.get(name, (1, 8, 8))
    net = dn.build_model(name, shape, 10, device="cpu", dtype="float64", **kw)
    dn.save_checkpoint(tmp_path / "ck.npz", net, dn.Adam(), {"config": {"model": name, "dtype": "float64"}})
    again, _ = load_checkpoint(tmp_path / "ck.npz", "cpu", optimizer=dn.Adam())
    assert again.config["layers"] == net.config["layers"] and again.dtype == "float64"


# --------------------------------------------------------------------------- labels and batches
def _book_net():
    from dualnet.book.two_layer_net import TwoLayerNet
    return TwoLayerNet(4, 6, 2)


def test_every_entry_point_refuses_the_labels_the_loss_refuses(device):
    """model.loss, model.accuracy, model.count_correct and the book's loss and accuracy run one
    check: out-of-range labels (where checking is free), float (N,) labels, wrong lengths."""
    from dualnet.errors import DataError, DTypeError, ShapeError
    net = dn.TwoLayerNet(4, 6, 2, device=device, seed=0)
    x = device.asarray(np.zeros((2, 4)), "float32")
    calls = [lambda t: net.loss(x, t), lambda t: net.accuracy(x, t), lambda t: net.count_correct(x, t)]
    for call in calls:
        with pytest.raises(DTypeError):
            call(device.asarray(np.array([0.0, 1.0]), "float32"))
        with pytest.raises(ShapeError):
            call(device.asarray(np.array([0, 1, 1])))
        if device.is_host:
            with pytest.raises(DataError):
                call(device.asarray(np.array([0, 5])))
    from dualnet.book.common.layers import SoftmaxWithLoss as BookLoss
    from dualnet.layers import SoftmaxWithLoss
    scores = device.asarray(np.zeros((2, 2)), "float32")
    with pytest.raises(DTypeError):
        SoftmaxWithLoss().forward(scores, device.asarray(np.array([0.0, 1.0]), "float32"))
    with pytest.raises(ShapeError):
        SoftmaxWithLoss().forward(scores, device.asarray(np.array([0, 1, 1])))
    book = _book_net()
    hx = np.zeros((2, 4))
    for call in (lambda t: book.loss(hx, t), lambda t: book.accuracy(hx, t),
                 lambda t: BookLoss().forward(np.zeros((2, 2)), t)):
        with pytest.raises(DTypeError):
            call(np.array([0.0, 1.0]))
        with pytest.raises(DataError):
            call(np.array([0, 5]))   # host labels: checked wherever the network computes
        with pytest.raises(ShapeError):
            call(np.array([0, 1, 1]))


def test_an_empty_batch_is_a_shape_error_everywhere(device):
    from dualnet.errors import ShapeError
    net = dn.TwoLayerNet(4, 6, 2, device=device, seed=0)
    x0, t0 = device.asarray(np.zeros((0, 4)), "float32"), device.asarray(np.zeros(0, np.int64))
    for call in (lambda: net.loss(x0, t0), lambda: net.predict(x0), lambda: net.accuracy(x0, t0),
                 lambda: net.gradient(x0, t0)):
        with pytest.raises(ShapeError):
            call()
    book = _book_net()
    for call in (lambda: book.loss(np.zeros((0, 4)), np.zeros(0, int)), lambda: book.predict(np.zeros((0, 4))),
                 lambda: book.gradient(np.zeros((0, 4)), np.zeros(0, int))):
        with pytest.raises(ShapeError):
            call()


# --------------------------------------------------------------------------- call order
def test_backward_before_forward_is_a_clear_error(device):
    """Every dualnet layer and loss, and the book's layers: a ConfigError, not an
    AttributeError; after one forward, backward works."""
    from dualnet import layers as L
    from dualnet.book.common import layers as B
    dout = device.asarray(np.ones((2, 3)), "float32")
    fresh = [L.ReLU(device=device), L.Sigmoid(device=device), L.Tanh(device=device), L.Affine(3, 3, device=device),
             L.Flatten(device=device), L.Dropout(0.5, device=device), L.BatchNormalization(3, device=device)]
    for layer in fresh:
        with pytest.raises(ConfigError, match="forward"):
            layer.backward(dout)
    with pytest.raises(ConfigError, match="forward"):
        L.SoftmaxWithLoss().backward()
    relu = L.ReLU(device=device)
    relu.forward(dout, train=True)
    assert tuple(relu.backward(dout).shape) == (2, 3)
    hd = np.ones((2, 3))
    for layer in (B.Relu(), B.Sigmoid(), B.Affine(np.ones((3, 3)), np.zeros(3)), B.Dropout(),
                  B.BatchNormalization(np.ones(3), np.zeros(3))):
        with pytest.raises(ConfigError, match="forward"):
            layer.backward(hd)
    with pytest.raises(ConfigError, match="forward"):
        B.SoftmaxWithLoss().backward()
    with pytest.raises(ConfigError):   # the network's own order check, as before
        dn.TwoLayerNet(3, 4, 2, device=device).backward()


# --------------------------------------------------------------------------- model sizes
@pytest.mark.parametrize("make", [
    lambda: dn.TwoLayerNet(4, 0, 2), lambda: dn.TwoLayerNet(4, -3, 2), lambda: dn.TwoLayerNet(0, 3, 2),
    lambda: dn.TwoLayerNet(4, 3, 0), lambda: dn.MultiLayerNet(4, [5, 0], 2), lambda: dn.TwoLayerNet(4, 2.5, 2),
    lambda: dn.SimpleConvNet((1, 8, 8), filter_num=0), lambda: dn.SimpleConvNet((1, 8, 8), filter_size=-1),
    lambda: dn.TwoLayerNet(4, 3, 2, seed=-1)])
def test_impossible_model_sizes_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize("args", [(4, 0, 2), (4, -3, 2)])
def test_the_books_networks_refuse_impossible_sizes(args):
    from dualnet.book.two_layer_net import TwoLayerNet
    from dualnet.book.ch04.two_layer_net import TwoLayerNet as NumericalNet
    for cls in (TwoLayerNet, NumericalNet):
        with pytest.raises(ConfigError):
            cls(*args)


@pytest.mark.parametrize("value", ["-1", "abc", "1e99"])
def test_a_bad_book_seed_names_the_variable(monkeypatch, value):
    from dualnet.book.two_layer_net import TwoLayerNet
    monkeypatch.setenv("DUALNET_SEED", value)
    with pytest.raises(ConfigError) as e:
        TwoLayerNet(4, 3, 2)
    assert "DUALNET_SEED" in str(e.value)


# --------------------------------------------------------------------------- messages
NOT_ARCHIVES = {"json": b'{"model": "mlp"}', "png": b"\x89PNG\r\n\x1a\n" + bytes(64), "text": b"hello\n",
                "npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }"}


@pytest.mark.parametrize("kind", list(NOT_ARCHIVES))
def test_a_file_that_is_no_archive_is_called_so(capsys, tmp_path, kind):
    bad = tmp_path / f"thing.{kind}"
    bad.write_bytes(NOT_ARCHIVES[kind])
    for argv in (["train", "--resume", bad, "--out", tmp_path / "run", "--no-progress"],
                 ["evaluate", "--checkpoint", bad, "--device", "cpu"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and one_line(err) and str(bad) in err
        assert "allow_pickle" not in err and "pickled" not in err  # never a hint to load unsafely
    assert bad.read_bytes() == NOT_ARCHIVES[kind] and listing(tmp_path) == [bad.name]


def test_a_symlink_loop_is_not_called_missing(capsys, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    os.symlink(b, a)
    os.symlink(a, b)
    code, _, err = run(capsys, "evaluate", "--checkpoint", a, "--device", "cpu")
    assert code == 2 and one_line(err) and "does not exist" not in err and "loop" in err
    os.unlink(b)
    code, _, err = run(capsys, "evaluate", "--checkpoint", a, "--device", "cpu")  # dangling now
    assert code == 2 and one_line(err) and str(b) in err
    assert listing(tmp_path) == ["a.npz"]


@pytest.mark.parametrize("devices", ["garbage", "cpu,gpu", "cuda:x", ","])
def test_an_unknown_bench_device_is_an_error(capsys, tmp_path, devices):
    out = tmp_path / "bench"
    code, _, err = run(capsys, "bench", "--devices", devices, "--models", "mlp", "--batch-sizes", "4",
                       "--steps", "3", "--out", out)
    assert code == 2 and one_line(err)
    assert not out.exists()  # no empty bench.json or bench.png


def test_a_bench_with_no_usable_device_writes_nothing(capsys, tmp_path):
    from dualnet.backend import cuda_status
    if cuda_status()["available"]:
        pytest.skip("a usable GPU: cuda:99 is the only device that surely is not")
    out = tmp_path / "bench"
    code, _, err = run(capsys, "bench", "--devices", "cuda:99", "--models", "mlp", "--batch-sizes", "4",
                       "--steps", "3", "--out", out)
    assert code == 2 and one_line(err) and "cuda:99" in err
    assert not out.exists()


def test_the_book_names_its_data_variable(tmp_path, monkeypatch):
    """DUALNET_DATA_DIR at a folder without the IDX files (offline, no cache): the message names
    the variable, never a --data-dir flag the book's scripts do not have."""
    from dualnet import data as D
    from dualnet.book.dataset.mnist import load_mnist
    from dualnet.errors import DataError
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DUALNET_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("DUALNET_DATASET", raising=False)
    monkeypatch.setattr(D, "system_dir", lambda name: str(tmp_path / "nosystem" / name))
    monkeypatch.setitem(D.MIRRORS, "mnist", ["http://127.0.0.1:9/"])  # refused at once
    with pytest.raises(DataError) as e:
        load_mnist()
    assert "DUALNET_DATA_DIR" in str(e.value) and "--data-dir" not in str(e.value)
    assert listing(tmp_path / "empty") == []


def test_the_command_line_names_its_data_flag(tmp_path, monkeypatch, capsys):
    from dualnet import data as D
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(D, "system_dir", lambda name: str(tmp_path / "nosystem" / name))
    monkeypatch.setitem(D.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path / "empty", "--out",
                       tmp_path / "run", "--device", "cpu", "--no-progress")
    assert code == 2 and "--data-dir" in err and "Traceback" not in err and err.startswith("dualnet: error:")
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_training_set_is_said_in_the_header(capsys, tmp_path):
    out = tmp_path / "run"
    code, text, err = run(capsys, "train", "--batch-size", 5000, "--epochs", 1, "--out", out, "--device", "cpu",
                          "--no-progress", "--no-plots")
    assert code == 0, err
    header = next(line for line in text.splitlines() if line.startswith("model:"))
    assert "batch 5000" in header and "1497" in header  # how many images a step really takes
    assert "Traceback" not in err and (out / "checkpoint.npz").exists()


def test_out_inside_a_live_run_directory_is_refused(capsys, tmp_path):
    import subprocess
    import sys
    live = tmp_path / "live"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from dualnet.io import RunDir; "
                               f"RunDir({str(live)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run(capsys, "train", "--out", live / "inner", "--epochs", 1, "--device", "cpu", "--no-progress")
        assert code == 2 and one_line(err) and str(holder.pid) in err
        assert not (live / "inner").exists()
    finally:
        holder.communicate("", timeout=30)
    # once that run has ended, the same folder is fine
    code, _, err = run(capsys, "train", "--out", live / "inner", "--epochs", 1, "--device", "cpu", "--no-progress",
                       "--no-plots")
    assert code == 0, err
