import numpy as np
import pytest

from dualnet import conv, functions as F
from dualnet.conv import ConvGeometry
from dualnet.errors import ConfigError
from dualnet.gradcheck import numerical_gradient, rel_error


def conv_reference(x, W, b, stride, pad):
    """Direct loops: the definition of the convolution (cross-correlation)."""
    N, C, H, Wd = x.shape
    FN, _, FH, FW = W.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    OH, OW = (H + 2 * pad - FH) // stride + 1, (Wd + 2 * pad - FW) // stride + 1
    out = np.zeros((N, FN, OH, OW))
    for i in range(OH):
        for j in range(OW):
            patch = xp_[:, :, i * stride:i * stride + FH, j * stride:j * stride + FW]
            out[:, :, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def conv_backward_reference(x, W, dout, stride, pad):
    """Direct loops for the gradients of :func:`conv_reference`: (dx, dW, db)."""
    N, C, H, Wd = x.shape
    FN, _, FH, FW = W.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp_)
    dW = np.zeros_like(W)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            sl = np.s_[:, :, i * stride:i * stride + FH, j * stride:j * stride + FW]
            g = dout[:, :, i, j]                                   # (N, FN)
            dW += np.tensordot(g, xp_[sl], axes=([0], [0]))        # (FN, C, FH, FW)
            dxp[sl] += np.tensordot(g, W, axes=([1], [0]))         # (N, C, FH, FW)
    return dxp[:, :, pad:pad + H, pad:pad + Wd], dW, dout.sum(axis=(0, 2, 3))


def pool_reference(x, PH, PW, stride, pad, op):
    N, C, H, W = x.shape
    fill = -np.inf if op is np.max else 0.0
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    OH, OW = (H + 2 * pad - PH) // stride + 1, (W + 2 * pad - PW) // stride + 1
    out = np.zeros((N, C, OH, OW))
    for i in range(OH):
        for j in range(OW):
            out[:, :, i, j] = op(xp_[:, :, i * stride:i * stride + PH, j * stride:j * stride + PW], axis=(2, 3))
    return out


def test_activations(device):
    x = np.array([[-3.0, -0.5, 0.0, 0.5, 800.0, -800.0]])
    d = device.asarray(x, "float64")
    with np.errstate(over="ignore"):
        ref = 1 / (1 + np.exp(-x))  # exp overflows to inf at -800: sigmoid is 0 there
    np.testing.assert_allclose(device.to_numpy(F.sigmoid(d)), ref, atol=1e-300)
    np.testing.assert_array_equal(device.to_numpy(F.relu(d)), np.maximum(x, 0))
    np.testing.assert_array_equal(device.to_numpy(F.step(d)), (x > 0).astype(float))
    np.testing.assert_allclose(device.to_numpy(F.tanh(d)), np.tanh(x))
    assert F.identity(d) is d


def test_softmax_is_stable_and_normalized(device):
    x = device.asarray(np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]]), "float64")
    y = device.to_numpy(F.softmax(x))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0)
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(y[0], e / e.sum())


def test_losses(device):
    y = np.array([[0.1, 0.7, 0.2], [0.3, 0.3, 0.4]])
    t = np.array([1, 2])
    oh = np.eye(3)[t]
    dy, dt, doh = device.asarray(y, "float64"), device.asarray(t), device.asarray(oh, "float64")
    ref = -np.mean(np.log(y[[0, 1], t] + 1e-7))
    assert float(F.cross_entropy_error(dy, dt)) == pytest.approx(ref)
    assert float(F.cross_entropy_error(dy, doh)) == pytest.approx(ref)
    assert float(F.mean_squared_error(dy, doh)) == pytest.approx(0.5 * np.sum((y - oh) ** 2) / 2)
    x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    loss, _, _ = F.softmax_cross_entropy(device.asarray(x, "float64"), dt)
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    assert float(loss) == pytest.approx(-np.mean(np.log(p[[0, 1], t])))


def test_one_hot_label_class_mismatch_names_shapes(device):
    x = device.asarray(np.zeros((2, 3)), "float64")
    with pytest.raises(ValueError, match=r"4 classes.*3"):
        F.softmax_cross_entropy(x, device.asarray(np.zeros((2, 4)), "float64"))


@pytest.mark.parametrize("C,H,W,FN,FH,FW,stride,pad", [
    (1, 7, 7, 2, 3, 3, 1, 0), (3, 8, 6, 4, 3, 3, 1, 1), (2, 9, 9, 3, 3, 3, 2, 0),
    (2, 6, 6, 2, 2, 2, 2, 0), (3, 5, 7, 2, 5, 3, 1, 2), (1, 10, 10, 1, 4, 4, 3, 0)])
def test_conv2d_matches_direct_loops(device, rng, C, H, W, FN, FH, FW, stride, pad):
    x = rng.standard_normal((2, C, H, W))
    Wt = rng.standard_normal((FN, C, FH, FW))
    b = rng.standard_normal(FN)
    out, _ = conv.conv2d(device.asarray(x, "float64"), device.asarray(Wt, "float64"),
                        device.asarray(b, "float64"), stride, pad)
    np.testing.assert_allclose(device.to_numpy(out), conv_reference(x, Wt, b, stride, pad), atol=1e-10)


@pytest.mark.parametrize("H,FH,FW,stride,pad", [(7, 3, 3, 1, 0), (7, 3, 3, 1, 1), (8, 2, 2, 2, 0),
                                                 (7, 3, 3, 2, 1), (8, 3, 3, 2, 1), (7, 2, 2, 2, 0)])
def test_col2im_is_adjoint_of_im2col(device, rng, H, FH, FW, stride, pad):
    x = rng.standard_normal((2, 3, H, H))
    col = F.im2col(device.asarray(x, "float64"), FH, FW, stride, pad)
    c = rng.standard_normal(tuple(col.shape))
    back = F.col2im(device.asarray(c, "float64"), x.shape, FH, FW, stride, pad)
    # <im2col(x), c> == <x, col2im(c)> for every x, c
    assert np.sum(device.to_numpy(col) * c) == pytest.approx(np.sum(x * device.to_numpy(back)))


@pytest.mark.parametrize("H,PH,PW,stride,pad", [(8, 2, 2, 2, 0), (7, 3, 3, 2, 1), (6, 3, 3, 1, 0),
                                                 (6, 2, 3, 1, 1), (7, 2, 2, 2, 0), (8, 3, 3, 2, 1)])
def test_pooling_matches_direct_loops(device, rng, H, PH, PW, stride, pad):
    x = rng.standard_normal((2, 3, H, H + (PW - PH)))
    out, _ = F.max_pool2d(device.asarray(x, "float64"), PH, PW, stride, pad)
    np.testing.assert_allclose(device.to_numpy(out), pool_reference(x, PH, PW, stride, pad, np.max))
    avg = F.avg_pool2d(device.asarray(x, "float64"), PH, PW, stride, pad)
    np.testing.assert_allclose(device.to_numpy(avg), pool_reference(x, PH, PW, stride, pad, np.mean) if pad == 0
                               else pool_reference(x, PH, PW, stride, pad, np.sum) / (PH * PW))


def test_max_pool_backward_routes_ties_to_first(device):
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, 1] = -1.0  # three tied maxima of 0
    out, ctx = F.max_pool2d(device.asarray(x, "float64"), 2, 2, 2)
    dx = F.max_pool2d_backward(device.asarray(np.array([[[[5.0]]]]), "float64"), ctx)
    np.testing.assert_array_equal(device.to_numpy(dx)[0, 0], [[5.0, 0.0], [0.0, 0.0]])


def test_shapes_that_do_not_fit_name_the_shapes(device, rng):
    x = device.asarray(rng.standard_normal((1, 3, 8, 8)), "float64")
    W = device.asarray(rng.standard_normal((2, 2, 3, 3)), "float64")
    b = device.asarray(np.zeros(2), "float64")
    with pytest.raises(ValueError, match=r"3 channels.*expect 2"):
        conv.conv2d(x, W, b)
    with pytest.raises(ValueError, match="window 3 is larger than the padded input"):
        F.max_pool2d(device.asarray(rng.standard_normal((1, 1, 2, 2)), "float64"), 3, 3, 1)
    with pytest.raises(ValueError, match="window 5 is larger than the padded input"):
        conv.conv2d(device.asarray(rng.standard_normal((1, 2, 3, 3)), "float64"),
                    device.asarray(rng.standard_normal((2, 2, 5, 5)), "float64"), b)
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.output_size(3, 5, 1, 0)


# --------------------------------------------------------------------------- convolution methods
# (C, H, W, FN, FH, FW, stride, pad): 1 channel, 3x3 and 5x5, non-square maps and filters,
# stride 1/2/3, pad 0/1/2, and geometries whose stride does not divide the span.
CONV_CASES = [
    (1, 7, 7, 2, 3, 3, 1, 0), (1, 8, 8, 3, 3, 3, 1, 1), (1, 12, 12, 3, 5, 5, 1, 0),
    (3, 8, 6, 4, 3, 3, 1, 1), (4, 6, 6, 5, 3, 3, 1, 2), (3, 5, 7, 2, 5, 3, 1, 2),
    (2, 9, 9, 3, 3, 3, 2, 0), (2, 9, 7, 3, 3, 3, 2, 1), (2, 8, 8, 3, 2, 2, 2, 0),
    (3, 9, 9, 2, 3, 3, 2, 2), (1, 10, 10, 1, 4, 4, 3, 0), (2, 11, 9, 3, 5, 5, 2, 2),
    # floored output sizes: some input rows/columns reached by no window
    (2, 8, 8, 3, 3, 3, 2, 1), (2, 7, 7, 3, 2, 2, 2, 0), (1, 9, 8, 2, 3, 3, 3, 1),
]
EXPLICIT_METHODS = list(conv.METHODS)


def _methods(g):
    """"auto" and every method that supports geometry ``g``."""
    return ["auto"] + [m for m in conv.METHODS if conv.METHODS[m].supports(g)]


def _conv_case(rng, C, H, W, FN, FH, FW, N=3):
    return (rng.standard_normal((N, C, H, W)), rng.standard_normal((FN, C, FH, FW)),
            rng.standard_normal(FN))


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "C{}_{}x{}_FN{}_{}x{}_s{}_p{}".format(*c))
def test_conv_methods_match_direct_loops_and_im2col(device, rng, case):
    """Every method, forward and backward, against the loops and against the book's im2col."""
    C, H, W, FN, FH, FW, stride, pad = case
    x, Wt, b = _conv_case(rng, C, H, W, FN, FH, FW)
    ref = conv_reference(x, Wt, b, stride, pad)
    dout = rng.standard_normal(ref.shape)
    ref_grads = conv_backward_reference(x, Wt, dout, stride, pad)
    dx_, W_, b_, d_ = (device.asarray(a, "float64") for a in (x, Wt, b, dout))
    im2col_results = None
    methods = _methods(ConvGeometry.of(x.shape, Wt.shape, stride, pad))
    for method in methods:
        out, ctx = conv.conv2d(dx_, W_, b_, stride, pad, method=method)
        grads = [device.to_numpy(g) for g in conv.conv2d_backward(d_, ctx, W_)]
        out = device.to_numpy(out)
        assert out.shape == ref.shape and [g.shape for g in grads] == [x.shape, Wt.shape, b.shape]
        np.testing.assert_allclose(out, ref, atol=1e-10, err_msg=method)
        for name, g, r in zip(("dx", "dW", "db"), grads, ref_grads):
            np.testing.assert_allclose(g, r, atol=1e-10, err_msg=f"{method} {name}")
        if method == "im2col":
            im2col_results = [out] + grads
    for method in methods:
        out, ctx = conv.conv2d(dx_, W_, b_, stride, pad, method=method)
        got = [device.to_numpy(out)] + [device.to_numpy(g) for g in conv.conv2d_backward(d_, ctx, W_)]
        for g, r in zip(got, im2col_results):
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12, err_msg=method)


@pytest.mark.parametrize("method", EXPLICIT_METHODS)
@pytest.mark.parametrize("case", [(2, 5, 6, 3, 3, 3, 1, 1), (1, 7, 5, 2, 3, 3, 2, 1), (2, 6, 5, 2, 3, 2, 1, 2)],
                         ids=lambda c: "C{}_{}x{}_FN{}_{}x{}_s{}_p{}".format(*c))
def test_conv_methods_pass_numerical_gradient_check(device, rng, method, case):
    """CS231n check in float64: backprop against central differences, relative error < 1e-7."""
    C, H, W, FN, FH, FW, stride, pad = case
    if not conv.METHODS[method].supports(ConvGeometry.of((2, C, H, W), (FN, C, FH, FW), stride, pad)):
        pytest.skip(f"{method} does not support this geometry")
    x, Wt, b = (device.asarray(a, "float64") for a in _conv_case(rng, C, H, W, FN, FH, FW, N=2))
    out, ctx = conv.conv2d(x, Wt, b, stride, pad, method=method)
    r = device.asarray(rng.standard_normal(tuple(out.shape)), "float64")
    xp = device.xp

    def loss():  # sum(out * r): its gradient w.r.t. out is r
        return xp.sum(conv.conv2d(x, Wt, b, stride, pad, method=method)[0] * r)

    dx, dW, db = conv.conv2d_backward(r, ctx, Wt)
    # The loss is linear in each argument, so central differences have no truncation error
    # and a step of 1e-3 (not 1e-5) only shrinks the rounding error of f(x+h) - f(x-h).
    for name, a, g in (("x", x, dx), ("W", Wt, dW), ("b", b, db)):
        assert rel_error(g, numerical_gradient(loss, a, h=1e-3)) < 1e-7, (method, name)


@pytest.mark.parametrize("method", conv.method_names())
def test_conv_need_dx_false_returns_none(device, rng, method):
    x, Wt, b = (device.asarray(a, "float64") for a in _conv_case(rng, 2, 6, 6, 3, 3, 3))
    out, ctx = conv.conv2d(x, Wt, b, 1, 1, method=method)
    dx, dW, db = conv.conv2d_backward(device.asarray(np.ones(tuple(out.shape)), "float64"), ctx, Wt,
                                   need_dx=False)
    assert dx is None and tuple(dW.shape) == (3, 2, 3, 3) and tuple(db.shape) == (3,)


@pytest.mark.parametrize("block_rows", [1, 4, 6])
def test_rows_method_blocks_cover_the_maps(device, rng, monkeypatch, block_rows):
    """"rows" builds its columns a few output rows at a time: blocks of 1 row, of 4 with a
    remainder (6 = 4 + 2), and the whole map give im2col's results, forward and backward."""
    N, C, H, W, FN, pad = 5, 3, 6, 5, 4, 1
    x, Wt, b = (device.asarray(a, "float64") for a in _conv_case(rng, C, H, W, FN, 3, 3, N=N))
    K, L = C * 9, W * N                      # rows and columns per output row of the forward's blocks
    monkeypatch.setattr(conv.rows, "CHUNK_BYTES", (K + 1) * L * 8 * block_rows)
    dout = device.asarray(rng.standard_normal((N, FN, H, W)), "float64")
    results = []
    for method in ("im2col", "rows"):
        out, ctx = conv.conv2d(x, Wt, b, 1, pad, method=method)
        results.append([device.to_numpy(a) for a in (out, *conv.conv2d_backward(dout, ctx, Wt))])
    for got, want, name in zip(results[1], results[0], ("out", "dx", "dW", "db")):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_conv_unknown_or_unfit_method_is_a_clear_error(device, rng):
    x, Wt, b = (device.asarray(a, "float64") for a in _conv_case(rng, 2, 7, 7, 3, 3, 3))
    with pytest.raises(ConfigError, match=r"unknown convolution method 'no_such_method'.*auto, im2col"):
        conv.conv2d(x, Wt, b, method="no_such_method")
    g = ConvGeometry.of(x.shape, Wt.shape, 2, 0)
    unfit = [m for m in conv.METHODS if not conv.METHODS[m].supports(g)]
    fit = [m for m in conv.METHODS if conv.METHODS[m].supports(g)]
    assert {"rows", "shift"} <= set(unfit) and {"im2col", "gemm"} <= set(fit)
    for method in unfit:
        with pytest.raises(ConfigError, match=rf"'{method}' does not support stride 2.*: auto, {', '.join(fit)}$"):
            conv.conv2d(x, Wt, b, stride=2, method=method)


def test_auto_picks_per_layer_and_library(device):
    """DeepConvNet's layers at batch 100; the GPU stand-in ("sim") always gets "gemm"."""
    deep = [((100, 1, 28, 28), (16, 1, 3, 3), 1), ((100, 16, 28, 28), (16, 16, 3, 3), 1),
            ((100, 16, 14, 14), (32, 16, 3, 3), 1), ((100, 32, 14, 14), (32, 32, 3, 3), 2),
            ((100, 32, 8, 8), (64, 32, 3, 3), 1), ((100, 64, 8, 8), (64, 64, 3, 3), 1)]
    def choose(x_shape, W_shape, stride, pad):
        return conv.choose(ConvGeometry.of(x_shape, W_shape, stride, pad), device.is_host)

    got = [choose(xs, ws, 1, pad) for xs, ws, pad in deep]
    if device.is_host:
        # F(4x4, 3x3) a row of tiles at a time where C >= 16 (14x14: its tiles cover 1.31x)
        assert got == ["rows", "winograd4_rows", "winograd4_rows", "winograd4_rows", "winograd4_rows",
                       "winograd4_rows"]
        assert choose((100, 1, 28, 28), (30, 1, 5, 5), 1, 0) == "im2col"
        assert choose((100, 16, 28, 28), (16, 16, 3, 3), 2, 1) == "gemm"
        assert choose((100, 3, 32, 32), (16, 3, 3, 3), 2, 1) == "im2col"
    else:
        assert got == ["gemm"] * 6


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1)])
def test_function_and_layer_choose_by_the_same_rule(device, rng, stride, pad):
    """``method="auto"`` runs the method :func:`conv.choose` names, in the function (which reads
    where the arrays live) and in the layer (which asks its device)."""
    from dualnet.layers import Convolution
    x = device.asarray(rng.standard_normal((2, 16, 9, 9)), "float64")
    layer = Convolution(16, 4, 3, stride, pad, device=device, dtype="float64")
    want = conv.choose(ConvGeometry.of(x.shape, (4, 16, 3, 3), stride, pad), device.is_host)
    _, saved = conv.conv2d(x, layer.params["W"], layer.params["b"], stride, pad)
    layer.forward(x)
    assert saved.method == layer.saved.method == want
    # 9x9 output, 16 channels: F(4x4)'s tiles would cover 1.78x it, F(2x2) runs on the host
    assert want == ("gemm" if not device.is_host else "winograd_rows" if stride == 1 else "gemm")


def max_pool_backward_reference(x, dout, PH, PW, stride, pad):
    """Direct loops: each window's gradient goes to its first maximal element (row-major)."""
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    dxp = np.zeros_like(xp_)
    N, C, OH, OW = dout.shape
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    win = xp_[n, c, i * stride:i * stride + PH, j * stride:j * stride + PW]
                    a, b_ = np.unravel_index(np.argmax(win), win.shape)  # argmax: first maximum
                    dxp[n, c, i * stride + a, j * stride + b_] += dout[n, c, i, j]
    return dxp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]


@pytest.mark.parametrize("H,PH,PW,stride,pad", [(8, 2, 2, 2, 0), (7, 3, 3, 2, 1), (6, 3, 3, 1, 0),
                                                 (6, 2, 3, 1, 1), (9, 3, 3, 3, 0), (7, 2, 2, 2, 0),
                                                 (8, 3, 3, 3, 0)])
def test_max_pool_backward_first_tie_on_quantized_inputs(device, rng, H, PH, PW, stride, pad):
    """Inputs on a coarse grid (like 8-bit images after ReLU), so most windows hold ties;
    overlapping windows add their routed gradients."""
    x = np.maximum(rng.integers(-2, 3, (2, 3, H, H + (PW - PH))), 0).astype(float)
    out, ctx = F.max_pool2d(device.asarray(x, "float64"), PH, PW, stride, pad)
    dout = rng.standard_normal(tuple(out.shape))
    dx = F.max_pool2d_backward(device.asarray(dout, "float64"), ctx)
    np.testing.assert_allclose(device.to_numpy(dx), max_pool_backward_reference(x, dout, PH, PW, stride, pad),
                               atol=1e-12)


def batch_innermost(x):
    """The (N, C, H, W) view of a C-order (C, H, W, N) copy of ``x``: the "rows" methods' layout."""
    return np.permute_dims(np.ascontiguousarray(np.permute_dims(x, (1, 2, 3, 0))), (3, 0, 1, 2))


@pytest.mark.parametrize("H,P,pad", [(8, 2, 0), (6, 2, 1), (9, 3, 0), (8, 4, 0)])
def test_max_pool_recorded_routes_match_window_routing(device, rng, H, P, pad):
    """Windows that tile the padded input: what the forward records (the two-stage leads of a
    2x2 pool in C order, the first-maximum mask otherwise, as of a batch-innermost map on the
    host) and the offset-by-offset routing of an unrecorded forward give the same dx, the
    first maximum of each window in row-major order, on inputs full of ties."""
    x = np.maximum(rng.integers(-2, 3, (2, 3, H, H + P)), 0).astype(float)
    x[0, 0, :P, :P] = 1.0   # a window all of one value
    inputs = [device.asarray(x, "float64")]
    if device.is_host:   # the (N, C, H, W) view of a C-order (C, H, W, N) array
        inputs.append(batch_innermost(x))
    dout = rng.standard_normal((2, 3, (H + 2 * pad) // P, (H + P + 2 * pad) // P))
    want = max_pool_backward_reference(x, dout, P, P, P, pad)
    routes = set()
    for xd in inputs:
        out, ctx = F.max_pool2d(xd, P, P, P, pad)
        out2, ctx2 = F.max_pool2d(xd, P, P, P, pad, record=False)
        routes.add(ctx[0])
        assert ctx2[0] == "windows"
        np.testing.assert_array_equal(device.to_numpy(out), device.to_numpy(out2))
        d = device.asarray(dout, "float64")
        dx, dx2 = (device.to_numpy(F.max_pool2d_backward(d, c)) for c in (ctx, ctx2))
        np.testing.assert_array_equal(dx, dx2)
        np.testing.assert_allclose(dx, want, atol=1e-12)
    # every recorded route was taken (padding makes a new C-order array of either input)
    if P != 2:
        assert routes == {"tiled"}
    else:
        assert routes == ({"2x2 rows", "tiled"} if device.is_host and pad == 0 else {"2x2 rows"})


def test_max_pool_window_holding_nan_leaves_the_other_windows_alone(device):
    """A NaN compares false with everything: its window's gradient goes to at most one of its
    elements (which one depends on the route), and every other window's is exact."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    inputs = [device.asarray(x, "float64")]
    if device.is_host:   # batch-innermost: the first-maximum mask's route
        inputs.append(batch_innermost(x))
    dout = device.asarray(np.full((1, 1, 2, 2), 2.0), "float64")
    want = np.zeros((4, 4))
    want[1, 3] = want[3, 1] = want[3, 3] = 2.0
    for xd in inputs:
        for record in (True, False):
            _, ctx = F.max_pool2d(xd, 2, 2, 2, record=record)
            dx = device.to_numpy(F.max_pool2d_backward(dout, ctx))[0, 0]
            np.testing.assert_array_equal(dx[:, 2:], want[:, 2:])
            np.testing.assert_array_equal(dx[2:, :2], want[2:, :2])
            nan_window = dx[:2, :2]
            assert np.count_nonzero(nan_window) <= 1 and np.sum(nan_window) in (0.0, 2.0), (record, nan_window)


def test_max_pool_gradient_keeps_a_batch_innermost_order_for_a_c_order_dout():
    """The gradient of a flattened map comes back in C order while the pooled map was
    batch-innermost: dx still comes out batch-innermost (dout is put in that order once), with
    the values of a C-order input.  A performance property, read back from NumPy's strides."""
    rng = np.random.default_rng(2)
    x = np.round(rng.standard_normal((5, 3, 8, 8)), 1)
    xb = batch_innermost(x)
    dout = rng.standard_normal((5, 3, 4, 4))
    dx = F.max_pool2d_backward(dout, F.max_pool2d(xb, 2, 2, 2)[1])
    assert conv.layout_of(dx) == conv.CHWN, dx.strides
    np.testing.assert_array_equal(dx, F.max_pool2d_backward(dout, F.max_pool2d(x, 2, 2, 2)[1]))
    np.testing.assert_allclose(dx, max_pool_backward_reference(x, dout, 2, 2, 2, 0), atol=1e-12)


def test_shift_flip_matches_a_per_image_loop(device, rng):
    """Random shifts with zero fill and left-right flips, checked image by image with NumPy."""
    N, C, H, W, pad = 5, 2, 6, 7, 2
    x = rng.standard_normal((N, C, H, W))
    dy = rng.integers(-pad, pad + 1, N)
    dx = rng.integers(-pad, pad + 1, N)
    flip = rng.random(N) < 0.5
    out = device.to_numpy(F.shift_flip(device.asarray(x, "float64"), device.asarray(dy), device.asarray(dx),
                                       device.asarray(flip), pad))
    for k in range(N):
        img = x[k, :, :, ::-1] if flip[k] else x[k]
        want = np.zeros_like(img)
        for i in range(H):
            for j in range(W):
                si, sj = i - dy[k], j - dx[k]
                if 0 <= si < H and 0 <= sj < W:
                    want[:, i, j] = img[:, si, sj]
        np.testing.assert_array_equal(out[k], want)
    zero = np.zeros(N, dtype=np.int64)
    same = F.shift_flip(device.asarray(x, "float64"), device.asarray(zero), device.asarray(zero),
                        device.asarray(np.zeros(N, bool)), pad)
    np.testing.assert_array_equal(device.to_numpy(same), x)


def test_rows_layout_survives_relu_and_pooling():
    """On the CPU, "rows" hands on batch-innermost maps (its declared LAYOUT), and ReLU, max
    pooling and their gradients keep that memory order, so the next "rows" layer copies its
    input without a transpose.  A performance property, read back from NumPy's strides."""
    from dualnet.layers import MaxPooling, ReLU
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 8, 8)).astype(np.float32)
    W = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    out, saved = conv.conv2d(x, W, np.zeros(5, np.float32), 1, 1, method="rows")
    relu, pool = ReLU(), MaxPooling(2, 2, 2)
    assert conv.METHODS["rows"].LAYOUT == conv.CHWN and relu.keeps_layout and pool.keeps_layout
    y = pool.forward(relu.forward(out, train=True), train=True)
    d = relu.backward(pool.backward(np.ones(y.shape, np.float32)))
    dx = conv.conv2d_backward(d, saved, W)[0]
    for name, a in (("conv out", out), ("pooled", y), ("pool dx", d), ("conv dx", dx)):
        assert conv.layout_of(a) == conv.CHWN, (name, a.strides)


def test_affine_gives_a_batch_innermost_input_its_gradient_in_that_order():
    """Affine on a batch-innermost map returns dx in that order (and in C order for a C-order
    input), with the same values either way, so the ReLU and pooling before it see operands
    of one memory order.  A performance property, read back from NumPy's strides."""
    from dualnet.layers import Affine
    rng = np.random.default_rng(3)
    x = np.transpose(rng.standard_normal((3, 4, 4, 5)), (3, 0, 1, 2))   # (N, C, H, W), CHWN order
    dout = rng.standard_normal((5, 7))
    grads = []
    for xin, want in ((x, conv.CHWN), (np.ascontiguousarray(x), conv.NCHW)):
        layer = Affine(48, 7, dtype="float64", seed=0)
        layer.forward(xin, train=True)
        dx = layer.backward(dout)
        assert conv.layout_of(dx) == want, dx.strides
        grads.append((dx, layer.grads["W"]))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


def test_layers_that_declare_keeping_the_layout_keep_it():
    """Every layer declaring ``keeps_layout`` returns batch-innermost output and input gradient
    for a batch-innermost input; every method returns the LAYOUT it declares."""
    from dualnet import layers as L
    rng = np.random.default_rng(1)
    x = np.transpose(rng.standard_normal((3, 6, 6, 5)), (3, 0, 1, 2))   # (N, C, H, W), CHWN order
    assert conv.layout_of(x) == conv.CHWN and conv.layout_of(np.ascontiguousarray(x)) == conv.NCHW
    candidates = [L.ReLU(), L.Sigmoid(), L.Tanh(), L.MaxPooling(2), L.MaxPooling(3, stride=1),
                  L.MaxPooling(2, pad=1), L.AvgPooling(2), L.Dropout(0.5)]
    declared = [layer for layer in candidates if layer.keeps_layout]
    assert [type(layer).__name__ for layer in declared] == ["ReLU", "Sigmoid", "Tanh", "MaxPooling", "MaxPooling"]
    for layer in declared:
        out = layer.forward(x, train=True)
        dx = layer.backward(np.transpose(rng.standard_normal((*out.shape[1:], out.shape[0])), (3, 0, 1, 2)))
        assert conv.layout_of(out) == conv.layout_of(dx) == conv.CHWN, layer
    W, b = rng.standard_normal((4, 3, 3, 3)), np.zeros(4)
    for name, m in conv.METHODS.items():
        out, _ = conv.conv2d(np.ascontiguousarray(x), W, b, 1, 1, method=name)
        assert conv.layout_of(out) == m.LAYOUT, name
