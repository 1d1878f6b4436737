"""The run configuration: defaults, the record written with a run and read back from its
checkpoint, reconciliation of a resumed run with that checkpoint, and the models' declared options."""
import dataclasses
import inspect
import json

import pytest

import dualnet as dn
from dualnet.checkpoint import save_checkpoint
from dualnet.data import load_dataset
from dualnet.errors import CheckpointError, SettingError
from dualnet.models import MODELS, RUN_OPTIONS, AlexNet, MultiLayerNet, SimpleConvNet, build_model
from dualnet.runconfig import DEFAULTS, FIXED_ON_RESUME, CheckpointRun, RunConfig, rank_settings


def flag(setting):
    return "--" + setting.replace("_", "-")


# --------------------------------------------------------------------------- defaults
def test_a_run_left_to_its_defaults():
    c = RunConfig().resolved()
    for k, v in DEFAULTS.items():
        assert getattr(c, k) == v, k
    # the small bundled digits: 20 epochs at Adam's tuned lr; other data sets: 10 at the optimizer's own
    assert (c.dataset, c.epochs, c.lr) == ("digits", 20, 0.003)
    other = RunConfig(dataset="mnist").resolved()
    assert (other.epochs, other.lr) == (10, None)
    assert RunConfig(optimizer="sgd").resolved().lr is None
    assert (c.dropout, c.batchnorm, c.conv, c.image_size, c.device) == (None,) * 5  # the model's own


def test_given_settings_are_kept_and_the_data_folder_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = RunConfig(model="mlp", epochs=3, batch_size=7, lr=0.5, seed=4, data_dir="here").resolved()
    assert (c.model, c.epochs, c.batch_size, c.lr, c.seed) == ("mlp", 3, 7, 0.5, 4)
    assert c.data_dir == str(tmp_path / "here")
    assert RunConfig().names() == tuple(f.name for f in dataclasses.fields(RunConfig))


def test_a_new_run_refuses_an_option_its_model_does_not_take():
    with pytest.raises(SettingError) as e:
        RunConfig(model="simple_convnet", dropout=0.3).resolved()
    assert e.value.param == "dropout"
    assert str(e.value) == "dropout applies to mlp, deep_convnet and alexnet, not simple_convnet"
    assert e.value.render(flag) == "--dropout applies to mlp, deep_convnet and alexnet, not simple_convnet"
    with pytest.raises(SettingError, match="image_size applies to alexnet, not mlp"):
        RunConfig(model="mlp", image_size=64).resolved()


# --------------------------------------------------------------------------- the models' options
def test_every_declared_option_is_an_argument_of_its_model():
    for name, cls in MODELS.items():
        params = inspect.signature(cls.__init__).parameters
        for option in cls.run_options:
            assert RUN_OPTIONS[option][0] in params, (name, option)


def test_declared_options_give_the_constructor_keywords():
    opts = dict(dropout=0.2, batchnorm=True, conv=None, image_size=None)
    assert MultiLayerNet.run_kwargs(opts, (1, 8, 8)) == {"dropout": 0.2, "use_batchnorm": True}
    # 8x8 samples: SimpleConvNet keeps their size with 3x3 filters padded by 1; 28x28 keep its defaults
    sc = dict(batchnorm=True, conv="im2col")
    assert SimpleConvNet.run_kwargs(sc, (1, 8, 8)) == {"use_batchnorm": True, "conv_method": "im2col",
                                                        "filter_size": 3, "pad": 1}
    assert SimpleConvNet.run_kwargs(sc, (1, 28, 28)) == {"use_batchnorm": True, "conv_method": "im2col"}
    # AlexNet: the asked image size, else none where the images fit it, else the course's 224
    assert AlexNet.run_kwargs({"image_size": 139}, (1, 8, 8)) == {"resize": 139}
    assert AlexNet.run_kwargs({}, (1, 8, 8)) == {"resize": 224}
    assert AlexNet.run_kwargs({}, (3, 227, 227)) == {}
    # and the keywords build the model they describe
    net = build_model("mlp", (1, 8, 8), 10, hidden_sizes=[6], **MultiLayerNet.run_kwargs(opts, (1, 8, 8)))
    assert MultiLayerNet.recorded_options(net.model_kwargs) == dict(opts, conv=None, image_size=None)
    assert SimpleConvNet.recorded_options({})["dropout"] == 0.0  # a model without dropout has none


# --------------------------------------------------------------------------- record and checkpoint
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """An mlp run's configuration, its record, and a checkpoint holding that record after epoch 1."""
    cfg = RunConfig(model="mlp", dropout=0.2, batchnorm=True, lr=0.002, batch_size=50, seed=5,
                    dtype="float64").resolved()
    data = load_dataset(cfg.dataset, flatten=False, val_fraction=cfg.val_fraction, seed=cfg.seed)
    dev = dn.get_device("cpu")
    model, opt = cfg.build_model(data, dev), cfg.make_optimizer()
    record = cfg.record(fingerprint=data.fingerprint(), data=data, device=dev, model=model, lr=opt.lr)
    path = tmp_path_factory.mktemp("run") / "checkpoint.npz"
    save_checkpoint(path, model, opt, {"epoch": 1, "epoch_step": 0, "step": 30, "config": record})
    return cfg, record, path, data, model


def test_the_record_keeps_its_format_on_disk(written):
    cfg, record, path, _, model = written
    assert list(record) == ["model", "dataset", "data_dir", "data_fingerprint", "device", "device_name",
                            "epochs", "batch_size", "optimizer", "lr", "lr_decay", "weight_decay", "seed",
                            "dtype", "val_fraction", "num_params", "processes", "augment",
                            "mirror_classes", "model_kwargs", "conv"]
    assert (record["lr"], record["dtype"], record["conv"], record["processes"]) == (0.002, "float64", "auto", 1)
    assert record["model_kwargs"]["dropout"] == 0.2 and record["num_params"] == model.num_params()
    assert json.loads(json.dumps(record)) == record


def test_record_round_trips_through_a_checkpoint(written):
    cfg, record, path, _, _ = written
    ck = CheckpointRun.read(path)
    assert ck.record == record and ck.epochs_done == 1
    used = ck.settings()
    assert list(used) == [k for k in FIXED_ON_RESUME if k in used]
    assert {k: used[k] for k in ("model", "batch_size", "lr", "seed", "dtype", "dropout", "batchnorm",
                                 "image_size")} == dict(model="mlp", batch_size=50, lr=0.002, seed=5,
                                                        dtype="float64", dropout=0.2, batchnorm=True,
                                                        image_size=None)
    # a plain resume decides every setting as the run did; the model options stay the checkpoint model's
    assert RunConfig().resolved(ck) == dataclasses.replace(cfg, dropout=None, batchnorm=None)
    agreeing = RunConfig(lr=0.002, dtype="float64", dropout=0.2, batchnorm=True, epochs=4).resolved(ck)
    assert agreeing.epochs == 4 and agreeing.dropout == 0.2


@pytest.mark.parametrize("setting,given,have", [
    ("lr", 0.01, "lr 0.002"), ("batch_size", 20, "batch_size 50"), ("dtype", "float32", "dtype float64"),
    ("model", "two_layer_net", "model mlp"), ("dropout", 0.5, "dropout 0.2"),
    ("image_size", 64, "image size of the data"), ("augment", True, "augment False")])
def test_a_contradiction_names_both_values_and_the_flag(written, setting, given, have):
    _, _, path, _, _ = written
    ck = CheckpointRun.read(path)
    with pytest.raises(SettingError) as e:
        RunConfig(**{setting: given}).resolved(ck)
    assert e.value.param == setting
    text = e.value.render(lambda s: {"out_dir": "--out"}.get(s, flag(s)))
    shown = flag(setting) if given is True else f"{flag(setting)} {given}"
    assert text.startswith(f"{shown} contradicts checkpoint {path}, whose run used {have}; ")
    assert f"leave {flag(setting)} out" in text and "(another --out)" in text
    assert str(e.value).startswith(f"{setting}")  # the library's own wording names the setting


def test_fewer_epochs_than_trained_and_foreign_data_are_refused(written):
    cfg, record, path, data, model = written
    ck = CheckpointRun.read(path)
    with pytest.raises(SettingError) as e:
        RunConfig(epochs=1).resolved(CheckpointRun(dict(ck.doc, meta=dict(ck.doc["meta"], epoch=3)), path))
    text = e.value.render(flag)
    assert text.startswith("--epochs 1 is fewer than the 3 epochs") and "pass --epochs 4 or more" in text
    with pytest.raises(dn.DataError) as e:
        ck.check_data(data, "another fingerprint", cfg)
    assert e.value.param == "data_dir" and str(path) in str(e.value)
    ck.check_data(data, record["data_fingerprint"], cfg)  # the same data passes
    other = build_model("mlp", (1, 28, 28), 10)
    with pytest.raises(SettingError) as e:
        ck.check_model(other, data, cfg)
    assert e.value.render(flag).endswith("(1, 8, 8) and 10; pass the --dataset it was trained on")
    assert "samples (1, 28, 28)" in str(e.value)
    ck.check_model(model, data, cfg)  # the model it was trained as passes


def test_an_unknown_data_set_in_the_checkpoint_is_refused(written):
    _, record, path, _, _ = written
    ck = CheckpointRun.read(path)
    bad = CheckpointRun(dict(ck.doc, meta=dict(ck.doc["meta"], config=dict(record, dataset="imagenet"))), path)
    with pytest.raises(CheckpointError, match="records dataset 'imagenet', none of digits"):
        RunConfig().resolved(bad)


def test_ranks_share_all_of_the_record_but_their_device_and_folder(written):
    _, record, _, _, _ = written
    shared = rank_settings(record, 50, {"epoch": 1, "epoch_step": 0, "step": 30})
    assert set(shared) == set(record) - {"device", "device_name", "data_dir"} | {"log_every", "resume_position"}
    assert shared["resume_position"] == [1, 0, 30] and rank_settings(record, 50)["resume_position"] is None
