"""Floor geometry: convolutions and poolings whose window does not divide the input, against
PyTorch (float64) on every method and device; and the method registry's contract."""
import numpy as np
import pytest

import dualnet as dn
from dualnet import conv, functions as F
from dualnet.conv import ConvGeometry
from dualnet.errors import ConfigError, ShapeError
from dualnet.gradcheck import check_model

# (N, C, H, W, FN, FH, FW, stride, pad): the windows of the strided cases leave input rows or
# columns unreached (7 + 0 - 2 = 5 is odd; 9 + 2 - 3 = 8 is not a multiple of 3); the stride-1
# cases are there so that every method meets PyTorch.
CASES = [(2, 3, 8, 8, 4, 3, 3, 2, 1), (2, 2, 7, 7, 3, 2, 2, 2, 0), (2, 2, 9, 8, 3, 3, 3, 3, 1),
         (3, 1, 7, 6, 2, 3, 2, 2, 0), (2, 3, 7, 7, 4, 3, 3, 1, 1), (2, 2, 6, 5, 3, 2, 3, 1, 0)]


def _ids(c):
    return "N{}C{}_{}x{}_FN{}_{}x{}_s{}_p{}".format(*c)


def _torch():
    return pytest.importorskip("torch")


def _torch_conv(x, W, b, dout, stride, pad):
    torch = _torch()
    tx, tW, tb = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, W, b))
    out = torch.nn.functional.conv2d(tx, tW, tb, stride=stride, padding=pad)
    out.backward(torch.tensor(dout))
    return [a.detach().numpy() for a in (out, tx.grad, tW.grad, tb.grad)]


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_method_matches_pytorch_on_floor_geometry(device, case):
    N, C, H, W, FN, FH, FW, stride, pad = case
    rng = np.random.default_rng(3)
    x, Wt, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((FN, C, FH, FW)), rng.standard_normal(FN)
    g = ConvGeometry.of(x.shape, Wt.shape, stride, pad)
    assert (g.OH, g.OW) == ((H + 2 * pad - FH) // stride + 1, (W + 2 * pad - FW) // stride + 1)
    dout = rng.standard_normal(g.out_shape)
    want = _torch_conv(x, Wt, b, dout, stride, pad)
    methods = [m for m, mod in conv.METHODS.items() if mod.supports(g)]
    assert {"im2col", "gemm"} <= set(methods) and (stride != 1 or {"rows", "shift"} <= set(methods))
    for method in ["auto", *methods]:
        out, saved = conv.conv2d(*(device.asarray(a, "float64") for a in (x, Wt, b)), stride, pad, method)
        got = [out, *conv.conv2d_backward(device.asarray(dout, "float64"), saved, device.asarray(Wt, "float64"))]
        for name, a, w in zip(("out", "dx", "dW", "db"), got, want):
            np.testing.assert_allclose(device.to_numpy(a), w, rtol=1e-10, atol=1e-10, err_msg=f"{method} {name}")


def test_rows_and_columns_no_window_reaches_get_zero_gradient(device):
    """7x7 input, 2x2 window, stride 2: row and column 6 are never read."""
    rng = np.random.default_rng(4)
    x, Wt, b = rng.standard_normal((2, 2, 7, 7)), rng.standard_normal((3, 2, 2, 2)), np.zeros(3)
    for method in ("im2col", "gemm"):
        out, saved = conv.conv2d(*(device.asarray(a, "float64") for a in (x, Wt, b)), 2, 0, method)
        assert tuple(out.shape) == (2, 3, 3, 3)
        dx = device.to_numpy(conv.conv2d_backward(device.asarray(np.ones((2, 3, 3, 3)), "float64"), saved,
                                                  device.asarray(Wt, "float64"))[0])
        assert np.all(dx[:, :, 6, :] == 0) and np.all(dx[:, :, :, 6] == 0) and np.all(dx[:, :, :6, :6] != 0)
    for pool in (F.max_pool2d, F.avg_pool2d):
        out = pool(device.asarray(x, "float64"), 2, 2, 2)
        out = out[0] if isinstance(out, tuple) else out
        assert tuple(out.shape) == (2, 2, 3, 3)


# (H, W, PH, PW, stride, pad); PyTorch allows pad up to half the window
POOL_CASES = [(7, 7, 2, 2, 2, 0), (8, 8, 3, 3, 2, 1), (9, 7, 3, 2, 2, 1), (7, 8, 3, 3, 3, 0)]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "{}x{}_{}x{}_s{}_p{}".format(*c))
def test_pooling_matches_pytorch_on_floor_geometry(device, case):
    torch = _torch()
    H, W, PH, PW, stride, pad = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, H, W))
    layers = {"max": (dn.MaxPooling(PH, PW, stride, pad, device=device, dtype="float64"),
                      torch.nn.functional.max_pool2d),
              "avg": (dn.AvgPooling(PH, PW, stride, pad, device=device, dtype="float64"),
                      torch.nn.functional.avg_pool2d)}
    for name, (layer, tf) in layers.items():
        tx = torch.tensor(x, requires_grad=True)
        tout = tf(tx, (PH, PW), stride, pad)
        dout = rng.standard_normal(tuple(tout.shape))
        tout.backward(torch.tensor(dout))
        assert layer.output_shape(x.shape[1:]) == tuple(tout.shape[1:])
        out = layer.forward(device.asarray(x, "float64"), train=True)
        dx = layer.backward(device.asarray(dout, "float64"))
        np.testing.assert_allclose(device.to_numpy(out), tout.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(device.to_numpy(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_network_on_floor_geometry_passes_gradient_check(device):
    """Conv 3x3 stride 2 pad 1 on 7x7 (row 7 of the padded input unreached), then a 2x2 stride-2
    max pool on 3x3 (the last row unreached): float64 backprop against central differences."""
    net = dn.Sequential([dn.Convolution(2, 3, 3, 2, 1), dn.ReLU(), dn.Convolution(3, 4, 2, 1, 0), dn.Tanh(),
                         dn.MaxPooling(2, 2, 2), dn.Flatten(), dn.Affine(4, 3)],
                        input_shape=(2, 7, 7), device=device, dtype="float64", seed=2)
    assert net.layers[0].output_shape((2, 7, 7)) == (3, 4, 4)
    assert net.layers[4].output_shape((4, 3, 3)) == (4, 1, 1)
    rng = np.random.default_rng(7)
    x = device.asarray(rng.standard_normal((3, 2, 7, 7)), "float64")
    t = device.asarray(rng.integers(0, 3, 3))
    assert max(e.rel for e in check_model(net, x, t, max_checks=6).values()) < 1e-6


def test_windows_larger_than_the_input_are_refused():
    with pytest.raises(ShapeError, match=r"window 5 is larger than the padded input \(3 \+ 2\*0 = 3\)"):
        ConvGeometry.of((1, 1, 3, 8), (2, 1, 5, 3), 1, 0)
    with pytest.raises(ShapeError, match="3 channels.*expect 2"):
        ConvGeometry.of((1, 3, 8, 8), (2, 2, 3, 3))
    with pytest.raises(ShapeError, match="pooling: window 4 is larger"):
        dn.MaxPooling(4).output_shape((1, 3, 3))
    assert dn.Convolution(1, 2, 3, stride=2).output_shape((1, 6, 6)) == (2, 2, 2)


def test_an_explicit_method_that_cannot_run_the_geometry_is_refused_when_the_layer_is_built():
    with pytest.raises(ValueError, match=r"layer 0 .*'rows' does not support stride 2.*methods that do: auto, im2col, gemm"):
        dn.Sequential([dn.Convolution(1, 2, 3, stride=2, method="rows")], input_shape=(1, 8, 8))


def test_registry_dispatches_on_the_saved_method_name(monkeypatch):
    """A method is one module: registering a new one makes it selectable by name, and backward
    dispatches on the ``method`` its saved tuple carries."""
    import types
    from typing import Any, NamedTuple

    class Saved(NamedTuple):
        g: Any
        inner: Any
        method: str = "im2col_twin"

    def forward(x, W, b, g):
        out, inner = conv.METHODS["im2col"].forward(x, W, b, g)
        return out, Saved(g, inner)

    def backward(dout, saved, W, need_dx):
        return conv.METHODS["im2col"].backward(dout, saved.inner, W, need_dx)

    twin = types.ModuleType("im2col_twin")
    twin.NAME, twin.LAYOUT, twin.supports = "im2col_twin", conv.NCHW, lambda g: g.stride == 1
    twin.forward, twin.backward = forward, backward
    monkeypatch.setattr(conv, "METHODS", dict(conv.METHODS))
    conv.register(twin)
    assert "im2col_twin" in conv.method_names()
    rng = np.random.default_rng(8)
    x, Wt, b = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    out, saved = conv.conv2d(x, Wt, b, 1, 1, method="im2col_twin")
    ref, ref_saved = conv.conv2d(x, Wt, b, 1, 1, method="im2col")
    assert type(saved) is Saved and saved.method == "im2col_twin"
    d = rng.standard_normal(out.shape)
    for a, r in zip((out, *conv.conv2d_backward(d, saved, Wt)), (ref, *conv.conv2d_backward(d, ref_saved, Wt))):
        np.testing.assert_array_equal(a, r)
    with pytest.raises(ConfigError, match="'im2col_twin' does not support stride 2"):
        conv.conv2d(x, Wt, b, 2, 1, method="im2col_twin")
    with pytest.raises(ValueError, match="taken"):
        conv.register(twin)
    with pytest.raises(TypeError, match="half_done lacks NAME, LAYOUT, supports, forward, backward"):
        conv.register(types.ModuleType("half_done"))


def test_auto_gives_3x3_layers_with_channels_to_blocked_winograd_on_the_host():
    """The measured rule (docs/convolution.md): on the host, Winograd a row of tiles at a time
    for 3x3 stride-1 layers with >= 16 input channels: F(4x4, 3x3) unless its tiles cut by the
    border cover over 1.5x the output, then F(2x2, 3x3); "rows" for few channels and for other
    filters; "gemm" off the host."""
    def pick(C, H, FN, pad, host=True, F=3, stride=1):
        return conv.choose(conv.ConvGeometry.of((100, C, H, H), (FN, C, F, F), stride, pad), host)
    # DeepConvNet's six convolutions at 28x28 input
    assert [pick(1, 28, 16, 1), pick(16, 28, 16, 1), pick(16, 14, 32, 1), pick(32, 14, 32, 2),
            pick(32, 8, 64, 1), pick(64, 8, 64, 1)] == ["rows", "winograd4_rows", "winograd4_rows",
                                                         "winograd4_rows", "winograd4_rows", "winograd4_rows"]
    assert pick(8, 28, 16, 1) == "rows"                      # too few channels
    assert pick(16, 28, 16, 2) == "winograd4_rows"           # output 30x30: tiles cover 1.14x
    assert pick(32, 10, 32, 1) == "winograd4_rows"           # output 10x10: 1.44x
    assert pick(32, 6, 32, 1) == "winograd_rows"             # output 6x6: 1.78x, F(2x2) tiles it whole
    assert pick(16, 28, 16, 2, F=5) == "rows"                # not 3x3
    assert pick(16, 29, 16, 0, stride=2) == "gemm"           # strided
    assert pick(64, 8, 64, 1, host=False) == "gemm"          # launch-bound devices
