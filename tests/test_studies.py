"""Each study's quick mode, with checks that its numbers say what the book says.

Every study runs on two data sources: ``auto`` (what this machine has: Fashion-MNIST from
Debian's package here, the bundled digits on a bare machine) and ``digits`` forced, so the
fallback a fresh machine takes is tested on every machine.
"""
import json

import numpy as np
import pytest

import dualnet.data
from dualnet.errors import ConfigError, DataError
from dualnet.studies import run_study
from dualnet.studies.common import study_data
from test_plots import check_figures, recording_figures


@pytest.fixture(scope="module", params=["auto", "digits"])
def dataset(request):
    return request.param


@pytest.fixture(scope="module")
def out(tmp_path_factory, dataset):
    return tmp_path_factory.mktemp(f"studies-{dataset}")


def study(name, out, dataset, device="cpu", **kw):
    """Run study ``name`` in quick mode on ``dataset``; checks its figures (titles, axis labels,
    epoch ticks: test_plots.check_figures) and returns its JSON as written."""
    with recording_figures() as saved:
        doc = run_study(name, device, quick=True, out=str(out), dataset=dataset, **kw)
    check_figures(saved)
    d = json.loads((out / f"{name}.json").read_text())
    assert d["data"] == doc["data"] and (dataset == "auto" or d["data"] == dataset)
    return d


def test_optimizers(out, dataset):
    d = study("optimizers", out, dataset)
    f0 = 49 / 20 + 4
    for name, q in d["quadratic"].items():
        assert q["final_f"] < 0.05 * f0, name
        assert q["path"][0] == [-7.0, 2.0] and len(q["path"]) == 31
    loss = d["mlp_final_loss"]
    assert set(loss) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}
    assert loss["adam"] < loss["sgd"]  # plain SGD is the slowest (book fig. 6-9)
    assert all(min(c[-20:]) < c[0] for c in d["mlp_curves"].values())
    assert (out / "optimizers_quadratic.png").exists() and (out / "optimizers_mlp.png").exists()


def test_init(out, dataset):
    d = study("init", out, dataset)
    assert d["final_loss"]["he"] < d["final_loss"]["std=0.01"]
    h = d["histograms"]
    assert h["relu/std=0.01"]["std"][-1] < 1e-3 < h["relu/he"]["std"][-1]  # activations vanish with std 0.01
    assert np.mean(h["sigmoid/std=1"]["mean"]) == pytest.approx(0.5, abs=0.1)
    assert (out / "init_histograms.png").exists()


def test_batchnorm(out, dataset):
    d = study("batchnorm", out, dataset)
    for s in d["scales"]:  # a diverged net stops at the epoch it diverged, and only then
        for key in ("bn", "plain"):
            stop = s[key + "_diverged_epoch"]
            assert len(s[key]) == (d["epochs"] if stop is None else stop - 1), (s["weight_std"], key)
    small = [s for s in d["scales"] if s["weight_std"] <= 0.01]
    assert small and np.mean([s["bn"][-1] for s in small]) > np.mean([s["plain"][-1] for s in small]) + 0.2


def test_overfit(out, dataset):
    d = study("overfit", out, dataset)
    c = d["configs"]
    assert d["train_images"] == (200 if d["data"] == "digits" else 300)
    assert c["none"]["final_gap"] > 0.1  # few images: the plain net overfits
    assert c["L2 0.1"]["final_gap"] < c["none"]["final_gap"]
    assert c["dropout 0.2"]["final_gap"] < c["none"]["final_gap"]
    assert set(c) >= {"L1 0.005", "L2 0.1 + dropout 0.2"}


def test_search_uses_validation_only(out, dataset):
    d = study("search", out, dataset)
    assert d["scored_on"] == "validation" and d["validation_images"] == 100 and d["train_images"] == 400
    accs = [t["final_val_acc"] for t in d["trials"]]
    assert accs == sorted(accs, reverse=True) and len(accs) == 8
    assert all(0 <= a <= 1 for a in accs) and accs[0] > 0.15
    assert all(1e-6 <= t["lr"] <= 1e-2 and 1e-8 <= t["weight_decay"] <= 1e-4 for t in d["trials"])
    assert not any("test" in k for t in d["trials"] for k in t)


def test_filters_on_auto(out, dataset):
    d = study("filters", out, dataset, device="auto")
    assert d["conv_test_acc"] > 0.5 and d["relative_filter_change"] > 0.01
    for png in ("filters_before.png", "filters_after.png", "filters_two_layer_net.png"):
        assert (out / png).exists()


def test_study_data_falls_back_to_digits(tmp_path, monkeypatch):
    """A bare machine: no MNIST or Fashion-MNIST in data_dir, the cache or Debian's folder."""
    monkeypatch.setattr(dualnet.data, "cache_dir", lambda name: str(tmp_path / "cache" / name))
    monkeypatch.setattr(dualnet.data, "system_dir", lambda name: str(tmp_path / "system" / name))
    assert study_data(str(tmp_path)).name == "digits"
    with pytest.raises(DataError, match="fashion-mnist not found"):
        study_data(str(tmp_path), dataset="fashion-mnist")  # a named set is never replaced
    with pytest.raises(ConfigError, match="dataset must be one of"):
        study_data(dataset="cifar10")


def test_cs231n_skips_without_cifar(tmp_path):
    d = run_study("cs231n", "cpu", quick=True, out=str(tmp_path / "out"), data_dir=str(tmp_path))
    assert d["skipped"].startswith("skipped: CIFAR-10 is not in --data-dir")


def test_cs231n_runs_on_cifar_files(tmp_path):
    from test_data import write_cifar
    list(write_cifar(tmp_path / "cifar-10-batches-bin", n=200))
    d = run_study("cs231n", "cpu", quick=True, out=str(tmp_path / "out"), data_dir=str(tmp_path))
    assert "skipped" not in d and 0 <= d["best_val_acc"] <= 1 and 0 <= d["test_acc_of_best"] <= 1
    assert d["trials"][0]["final_loss"] is not None
