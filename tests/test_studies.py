"""Each study's quick mode, with checks that its numbers say what the book says."""
import json

import numpy as np
import pytest

from dualnet.studies import run_study


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("studies")


def load(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_optimizers(out):
    run_study("optimizers", "cpu", quick=True, out=str(out))
    d = load(out, "optimizers")
    f0 = 49 / 20 + 4
    for name, q in d["quadratic"].items():
        assert q["final_f"] < 0.05 * f0, name
        assert q["path"][0] == [-7.0, 2.0] and len(q["path"]) == 31
    loss = d["mlp_final_loss"]
    assert set(loss) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"}
    assert loss["adam"] < loss["sgd"]  # plain SGD is the slowest (book fig. 6-9)
    assert all(min(c[-20:]) < c[0] for c in d["mlp_curves"].values())
    assert (out / "optimizers_quadratic.png").exists() and (out / "optimizers_mlp.png").exists()


def test_init(out):
    run_study("init", "cpu", quick=True, out=str(out))
    d = load(out, "init")
    assert d["final_loss"]["he"] < d["final_loss"]["std=0.01"]
    h = d["histograms"]
    assert h["relu/std=0.01"]["std"][-1] < 1e-3 < h["relu/he"]["std"][-1]  # activations vanish with std 0.01
    assert np.mean(h["sigmoid/std=1"]["mean"]) == pytest.approx(0.5, abs=0.1)
    assert (out / "init_histograms.png").exists()


def test_batchnorm(out):
    run_study("batchnorm", "cpu", quick=True, out=str(out))
    d = load(out, "batchnorm")
    small = [s for s in d["scales"] if s["weight_std"] <= 0.01]
    assert small and np.mean([s["bn"][-1] for s in small]) > np.mean([s["plain"][-1] for s in small]) + 0.2


def test_overfit(out):
    run_study("overfit", "cpu", quick=True, out=str(out))
    c = load(out, "overfit")["configs"]
    assert c["none"]["final_gap"] > 0.1  # 300 images: the plain net overfits
    assert c["L2 0.1"]["final_gap"] < c["none"]["final_gap"]
    assert c["dropout 0.2"]["final_gap"] < c["none"]["final_gap"]
    assert set(c) >= {"L1 0.005", "L2 0.1 + dropout 0.2"}


def test_search_uses_validation_only(out):
    run_study("search", "cpu", quick=True, out=str(out))
    d = load(out, "search")
    assert d["scored_on"] == "validation" and d["validation_images"] == 100 and d["train_images"] == 400
    accs = [t["final_val_acc"] for t in d["trials"]]
    assert accs == sorted(accs, reverse=True) and len(accs) == 8
    assert all(0 <= a <= 1 for a in accs) and accs[0] > 0.15
    assert all(1e-6 <= t["lr"] <= 1e-2 and 1e-8 <= t["weight_decay"] <= 1e-4 for t in d["trials"])
    assert not any("test" in k for t in d["trials"] for k in t)


def test_filters_on_auto(out):
    run_study("filters", "auto", quick=True, out=str(out))
    d = load(out, "filters")
    assert d["conv_test_acc"] > 0.5 and d["relative_filter_change"] > 0.01
    for png in ("filters_before.png", "filters_after.png", "filters_two_layer_net.png"):
        assert (out / png).exists()


def test_cs231n_skips_without_cifar(out, tmp_path):
    d = run_study("cs231n", "cpu", quick=True, out=str(out), data_dir=str(tmp_path))
    assert d["skipped"].startswith("skipped: CIFAR-10 is not in --data-dir")


def test_cs231n_runs_on_cifar_files(out, tmp_path):
    from test_data import write_cifar
    list(write_cifar(tmp_path / "cifar-10-batches-bin", n=200))
    d = run_study("cs231n", "cpu", quick=True, out=str(out), data_dir=str(tmp_path))
    assert "skipped" not in d and 0 <= d["best_val_acc"] <= 1 and 0 <= d["test_acc_of_best"] <= 1
    assert d["trials"][0]["final_loss"] is not None
