"""AlexNet as the course notes write it in Keras, and what it needs: 'same' max pooling, a
bilinear resize for small images, ``summary()``, its PyTorch twin, and its bench row."""
import json
import math

import numpy as np
import pytest

from dualnet import layers as L
from dualnet.gradcheck import check_model
from dualnet.layers import layer_from_spec
from dualnet.models import MODELS, AlexNet, MultiLayerNet, Sequential, build_model, model_from_config
from dualnet.optimizers import Adam
from test_layers import build, check_layer

# (H, W, pool, stride): even and odd sizes; a total padding of 0, 1 (bottom/right only) and 2
# (one each side); a window smaller than the stride (the unreached tail is cropped)
SAME_CASES = [(8, 8, 2, 2), (7, 6, 2, 2), (5, 5, 3, 2), (9, 8, 3, 3), (6, 7, 1, 2), (33, 33, 2, 2)]


def keras_same_pads(size, k, stride):
    """Keras' 'same' padding on one axis, written from its rule: (before, after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def distinct(rng, shape):
    """Values 0.05 apart at the least, so no max-pool tie or kink is within a finite difference."""
    return rng.permutation(math.prod(shape)).reshape(shape) * 0.05 - 1.0


@pytest.mark.parametrize("H,W,P,S", SAME_CASES)
def test_same_max_pooling_matches_torch(device, rng, H, W, P, S):
    torch = pytest.importorskip("torch")
    layer = build(L.MaxPooling, device, P, P, S, pad="same")
    x = rng.standard_normal((2, 3, H, W))
    out = layer.forward(device.asarray(x, "float64"))
    (pt, pb), (pl, pr) = keras_same_pads(H, P, S), keras_same_pads(W, P, S)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(xt, (pl, pr, pt, pb), value=-math.inf), P, S)
    assert tuple(out.shape) == tuple(ref.shape) == (2, 3, math.ceil(H / S), math.ceil(W / S))
    assert layer.output_shape((3, H, W)) == tuple(ref.shape[1:])
    np.testing.assert_array_equal(device.to_numpy(out), ref.detach().numpy())
    g = rng.standard_normal(tuple(ref.shape))
    ref.backward(torch.tensor(g))
    dx = layer.backward(device.asarray(g, "float64"))
    np.testing.assert_allclose(device.to_numpy(dx), xt.grad.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("H,W,P,S", [(7, 6, 2, 2), (5, 5, 3, 2), (6, 7, 1, 2)])
def test_same_max_pooling_gradcheck(device, rng, H, W, P, S):
    check_layer(build(L.MaxPooling, device, P, P, S, pad="same"), device, distinct(rng, (2, 2, H, W)))


def test_same_pooling_never_picks_padding():
    """All-negative maps: a padded zero would win the max where -inf never does."""
    layer = L.MaxPooling(2, 2, 2, pad="same", dtype="float64")
    x = -np.arange(1.0, 26.0).reshape(1, 1, 5, 5)
    out = layer.forward(x)
    # the last row/column of windows sees only the input's last row/column
    np.testing.assert_array_equal(out[0, 0, 2], [-21.0, -23.0, -25.0])
    np.testing.assert_array_equal(out[0, 0, :, 2], [-5.0, -15.0, -25.0])


def test_same_pooling_spec_round_trips():
    layer = L.MaxPooling(2, 2, 2, pad="same")
    assert layer.spec()["pad"] == "same"
    again = layer_from_spec(layer.spec())
    assert again.same and again.output_shape((4, 7, 7)) == (4, 4, 4)
    assert L.MaxPooling(2).spec()["pad"] == 0 and not L.MaxPooling(2).same


def test_resize_matches_torch_and_gradcheck(device, rng):
    torch = pytest.importorskip("torch")
    for size in ((11, 13), (3, 4)):  # up and down
        layer = build(L.Resize, device, *size)
        x = rng.standard_normal((2, 3, 5, 6))
        out = layer.forward(device.asarray(x, "float64"))
        xt = torch.tensor(x, requires_grad=True)
        ref = torch.nn.functional.interpolate(xt, size=size, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(device.to_numpy(out), ref.detach().numpy(), rtol=0, atol=1e-12)
        g = rng.standard_normal(tuple(ref.shape))
        ref.backward(torch.tensor(g))
        dx = layer.backward(device.asarray(g, "float64"))
        np.testing.assert_allclose(device.to_numpy(dx), xt.grad.numpy(), rtol=0, atol=1e-12)
        check_layer(layer, device, x)


# --------------------------------------------------------------------------- summary
def test_summary_of_a_small_mlp():
    net = MultiLayerNet(4, [3], 2, use_batchnorm=True)
    text = net.summary()
    rows = [line.split() for line in text.splitlines() if line[:1].isdigit()]
    # Affine 4x3 + 3 = 15; batch norm 3 gamma + 3 beta + 3 mean + 3 var = 12; ReLU 0; Affine 3x2 + 2 = 8
    assert rows == [["0:", "Affine", "(N,", "3)", "15"], ["1:", "BatchNormalization", "(N,", "3)", "12"],
                    ["2:", "ReLU", "(N,", "3)", "0"], ["3:", "Affine", "(N,", "2)", "8"]]
    assert "Total params: 35 (140 B in float32)" in text          # 35 * 4 bytes
    assert "Trainable params: 29" in text and "Non-trainable params: 6" in text
    assert net.num_params() == 29
    short = net.summary(short=True)
    assert "\n" not in short and short.startswith("mlp: 4 layers, input (N, 4) -> (N, 2), 29 trainable")
    assert "(280 B in float64)" in MultiLayerNet(4, [3], 2, use_batchnorm=True, dtype="float64").summary()


def alexnet_params_by_hand(C, K, flat):
    """AlexNet's trainable parameters, layer by layer (weights + biases; gamma + beta)."""
    convs = [(C, 48, 11), (48, 128, 5), (128, 192, 3), (192, 192, 3), (192, 128, 3)]
    n = 0
    for c_in, c_out, k in convs:
        n += c_out * c_in * k * k + c_out   # 17,472 153,728 221,376 331,968 221,312 at C = 3
        n += 2 * c_out                      # its batch norm: 96, 256, 384, 384, 256
    n += flat * 2048 + 2048 + 2 * 2048      # 1152 -> 2048: 2,361,344; BN 4,096
    n += 2048 * 2048 + 2048 + 2 * 2048      # 2048 -> 2048: 4,196,352; BN 4,096
    n += 2048 * K + K                       # 2048 -> 1000: 2,049,000
    return n


def test_alexnet_parameter_count_at_227():
    """227: 55 after the 11x11/4 conv, 28 (same pool), 24 (5x5), 12, 10, 8, 6 (3x3s), 3: 128 * 3 * 3."""
    net = AlexNet(input_dim=(3, 227, 227), output_size=1000)
    assert alexnet_params_by_hand(3, 1000, 128 * 3 * 3) == 9_562_120 == net.num_params()
    text = net.summary()
    assert "Trainable params: 9,562,120" in text
    # running mean and var of the 7 batch norms: 2 * (48 + 128 + 192 + 192 + 128 + 2048 + 2048)
    assert "Non-trainable params: 9,568" in text
    assert "Total params: 9,571,688 (36.51 MiB in float32)" in text  # 9,571,688 * 4 / 2**20
    for shape in ("(N, 48, 55, 55)", "(N, 48, 28, 28)", "(N, 128, 24, 24)", "(N, 128, 12, 12)",
                  "(N, 192, 10, 10)", "(N, 192, 8, 8)", "(N, 128, 6, 6)", "(N, 128, 3, 3)", "(N, 1152)"):
        assert shape in text, shape
    assert net.output_shape == (1000,)


def test_alexnet_at_the_course_size_224():
    """224 under floor geometry: 54, 27, 23, 12, 10, 8, 6, 3 -- the same parameters as 227."""
    net = AlexNet()
    assert net.input_shape == (3, 224, 224)
    assert net.num_params() == alexnet_params_by_hand(3, 1000, 128 * 3 * 3)
    assert "(N, 48, 54, 54)" in net.summary()


def test_alexnet_refuses_small_images_with_the_fix():
    with pytest.raises(Exception, match="resize=224"):
        AlexNet(input_dim=(3, 67, 67), output_size=10)
    net = AlexNet(input_dim=(3, 67, 67), output_size=10, resize=139)  # 139: the smallest that fits
    assert net.output_shape == (10,) and isinstance(net.layers[0], L.Resize)


def tiny(device, dtype="float32", shape=(3, 32, 32), **kw):
    """A narrow AlexNet on small images resized to 139 (small enough for every device)."""
    kw.setdefault("widths", (4, 6, 6, 6, 4))
    kw.setdefault("hidden_size", 16)
    return build_model("alexnet", shape, 5, device=device, dtype=dtype, seed=0, resize=139, **kw)


def test_alexnet_trains_on_every_device(device, rng):
    net = tiny(device)
    x = device.asarray(rng.standard_normal((8, 3, 32, 32)), "float32")
    t = device.asarray(rng.integers(0, 5, 8))
    opt = Adam(1e-2)
    losses = []
    for _ in range(8):
        losses.append(float(net.loss(x, t, train=True)))
        net.backward()
        opt.update(net.params, net.grads)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses      # one batch, learnt by heart


@pytest.mark.slow
def test_alexnet_gradcheck_float64(device, rng):
    net = tiny(device, "float64", (1, 12, 12), widths=(3, 4, 4, 4, 3), hidden_size=6, dropout=0.3)
    x = device.asarray(rng.standard_normal((3, 1, 12, 12)), "float64")
    t = device.asarray(rng.integers(0, 5, 3))
    errors = check_model(net, x, t, max_checks=2, seed=1)
    assert all(e.ok(1e-6, 1e-8) for e in errors.values()), errors


def test_alexnet_checkpoint_config_rebuilds_it():
    net = tiny("cpu")
    assert MODELS["alexnet"] is AlexNet and net.name == "alexnet"
    again = model_from_config(json.loads(json.dumps(net.config)))
    assert again.summary() == net.summary().replace("Model: alexnet", f"Model: {again.name}")
    assert net.model_kwargs["resize"] == 139 and net.model_kwargs["widths"] == [4, 6, 6, 6, 4]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")
    np.testing.assert_array_equal(again.predict(x), net.predict(x))  # same seed, same weights


def test_checkpoint_keeps_same_pooling_and_refuses_other_words(tmp_path):
    from dualnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    net = tiny("cpu")
    path = tmp_path / "ck.npz"
    save_checkpoint(path, net)
    again, _ = load_checkpoint(path, "cpu")
    assert again.summary() == net.summary() and again.layers[2].same
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(str(arrays["meta"]))
    doc["model"]["layers"][2]["pad"] = "valid"    # only MaxPooling's pad="same" is a word it takes
    arrays["meta"] = np.array(json.dumps(doc))
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="pad='valid', expected a number"):
        load_checkpoint(path, "cpu")


def test_torch_twin_computes_what_alexnet_computes(rng):
    torch = pytest.importorskip("torch")
    from dualnet.torch_twin import torch_twin
    net = tiny("cpu", "float64")
    twin = torch_twin(torch, net, copy_weights=True).eval()
    x = rng.standard_normal((2, 3, 32, 32))
    np.testing.assert_allclose(twin(torch.tensor(x)).detach().numpy(), net.predict(x), rtol=0, atol=1e-10)
    # in training, batch norm uses the batch's statistics in both (dropout 0 to compare)
    net = tiny("cpu", "float64", dropout=0.0)
    twin = torch_twin(torch, net, copy_weights=True).train()
    np.testing.assert_allclose(twin(torch.tensor(x)).detach().numpy(), net.predict(x, train=True),
                               rtol=0, atol=1e-9)


def test_torch_twin_refuses_unknown_layers():
    torch = pytest.importorskip("torch")
    from dualnet.torch_twin import torch_twin

    class Odd(L.ReLU):
        pass
    with pytest.raises(ValueError, match="Odd"):
        torch_twin(torch, Sequential([Odd()], (3,)))


# --------------------------------------------------------------------------- CLI and bench
@pytest.mark.slow
def test_train_alexnet_prints_its_summary(tmp_path, capsys, monkeypatch):
    """digits (8x8) are resized to 224 unless --image-size says otherwise; narrow widths keep it fast."""
    from dualnet import cli
    chosen = []
    real = AlexNet.run_kwargs  # AlexNet's own options: the image size, or what fits

    def narrow(cls, options, shape):
        kw = real(options, shape)
        chosen.append(kw)
        return {**kw, "widths": [3, 4, 4, 4, 3], "hidden_size": 8}
    monkeypatch.setattr(AlexNet, "run_kwargs", classmethod(narrow))
    assert real({}, (1, 8, 8)) == {"resize": 224} and real({}, (3, 227, 227)) == {}
    out_dir = tmp_path / "run"
    code = cli.main(["train", "--model", "alexnet", "--image-size", "139", "--epochs", "1", "--no-progress",
                     "--no-plots", "--batch-size", "100", "--device", "cpu", "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0 and chosen == [{"resize": 139}]
    assert "alexnet: 29 layers, input (N, 1, 8, 8) -> (N, 10)" in out
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["config"]["model"] == "alexnet" and m["config"]["model_kwargs"]["resize"] == 139
    # the checkpoint rebuilds it (the resize and the 'same' pools from their specs)
    code = cli.main(["evaluate", "--checkpoint", str(out_dir / "checkpoint.npz"), "--device", "cpu"])
    assert code == 0 and f"test accuracy on digits: {m['test_acc']:.4f}" in capsys.readouterr().out
    # a resumed run keeps its image size: another one is refused before anything trains
    code = cli.main(["train", "--resume", str(out_dir / "checkpoint.npz"), "--image-size", "227", "--epochs", "2"])
    assert code == 2 and "--image-size 227 contradicts" in capsys.readouterr().err


def test_gradcheck_command_knows_alexnet(capsys):
    from dualnet.cli import main
    code = main(["gradcheck", "--model", "alexnet", "--checks", "2"])
    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("PASS") and "(3, 1, 11, 11)" in out


def test_image_size_is_for_alexnet_only(capsys, tmp_path):
    from dualnet.cli import main
    code = main(["train", "--model", "mlp", "--image-size", "64", "--out", str(tmp_path / "r")])
    assert code != 0 and "--image-size applies to alexnet" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_alexnet_writes_its_row(tmp_path, capsys):
    from dualnet.cli import main
    code = main(["bench", "--devices", "cpu", "--models", "alexnet", "--batch-sizes", "2,64", "--steps", "1",
                 "--warmup", "1", "--time-budget", "0.1", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = [(r["model"], r["batch_size"], r["phase"]) for r in res["records"]]
    assert rows == [("alexnet", 2, "train"), ("alexnet", 2, "infer")]
    # batch 64 on the CPU is refused up front, with why and what is benched there
    assert [(s["model"], s["batch_size"]) for s in res["skipped"]] == [("alexnet", 64)]
    assert "on the host up to batch 32" in res["skipped"][0]["reason"]


@pytest.mark.slow
def test_bench_alexnet_torch_twin_runs():
    """The bench's torch twin (derived from the layers) takes the bench's 227x227 input."""
    torch = pytest.importorskip("torch")
    from dualnet import bench
    from dualnet.backend import get_device
    fns, _, _ = bench.torch_contenders(torch, get_device("cpu"), "alexnet", 2, "float32")
    fns["train"]()
    fns["infer"]()


@pytest.mark.slow
def test_alexnet_ops_per_step_do_not_grow_with_the_batch():
    """Array operations (kernel launches on a GPU) of an Adam step: a count per layer, not per sample."""
    from dualnet import bench
    from dualnet.backend import get_device
    sim = get_device("sim")
    one, two = bench.ops_per_step(sim, "alexnet", 1, "float32"), bench.ops_per_step(sim, "alexnet", 2, "float32")
    assert one == two and one["train"] > one["infer"] > 0
