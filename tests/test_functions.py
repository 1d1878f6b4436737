import numpy as np
import pytest

from dualnet import functions as F


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
    out, _ = F.conv2d(device.asarray(x, "float64"), device.asarray(Wt, "float64"),
                        device.asarray(b, "float64"), stride, pad)
    np.testing.assert_allclose(device.to_numpy(out), conv_reference(x, Wt, b, stride, pad), atol=1e-10)


@pytest.mark.parametrize("H,FH,FW,stride,pad", [(7, 3, 3, 1, 0), (7, 3, 3, 1, 1), (8, 2, 2, 2, 0),
                                                 (7, 3, 3, 2, 1)])
def test_col2im_is_adjoint_of_im2col(device, rng, H, FH, FW, stride, pad):
    x = rng.standard_normal((2, 3, H, H))
    col = F.im2col(device.asarray(x, "float64"), FH, FW, stride, pad)
    c = rng.standard_normal(tuple(col.shape))
    back = F.col2im(device.asarray(c, "float64"), x.shape, FH, FW, stride, pad)
    # <im2col(x), c> == <x, col2im(c)> for every x, c
    assert np.sum(device.to_numpy(col) * c) == pytest.approx(np.sum(x * device.to_numpy(back)))


@pytest.mark.parametrize("H,PH,PW,stride,pad", [(8, 2, 2, 2, 0), (7, 3, 3, 2, 1), (6, 3, 3, 1, 0),
                                                 (6, 2, 3, 1, 1)])
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
        F.conv2d(x, W, b)
    with pytest.raises(ValueError, match="fractional output size"):
        F.max_pool2d(device.asarray(rng.standard_normal((1, 1, 7, 7)), "float64"), 2, 2, 2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.output_size(3, 5, 1, 0)
