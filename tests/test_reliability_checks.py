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
from dualnet.errors import ConfigError, DualnetError


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    return err.count("\n") == 1 and err.startswith("dualnet: error:") and "Traceback" not in err


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
