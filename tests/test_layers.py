"""Float64 gradient check of every layer on every device (CS231n relative error)."""
import numpy as np
import pytest

from dualnet import layers as L
from dualnet.gradcheck import numerical_gradient, rel_error
from conftest import away_from_zero


def build(cls, device, *args, **kw):
    """A layer built alone, as a user would: float64 on ``device``, weights of std 0.5."""
    return cls(*args, device=device, dtype="float64", weight_init=0.5, **kw)


def check_layer(layer, device, x, train=True, reseed=None, tol=1e-7):
    """f = sum(layer(x) * w): compare layer.backward(w) with numerical gradients of x and params.

    The tolerance follows from float64 arithmetic, whatever random stream the device draws
    (dropout masks differ per backend): the central difference of f has a rounding error of a
    few ulps of |f| (~1e-14 here), so its relative error is about 1e-14 / (2h |df/dx|).  With
    |w| >= 0.1 every nonzero gradient is at least ~0.1 and that is ~5e-9 for h = 1e-5, far
    under ``tol``; with w drawn from a normal distribution a tiny |w| made the error depend on
    which units the stream kept (1.3e-7 to 7.6e-7 for 18 of 20 Philox streams)."""
    x = device.asarray(x, "float64")
    out = layer.forward(x, train)
    w = device.asarray(away_from_zero(np.random.default_rng(1), tuple(out.shape)), "float64")

    def f():
        if reseed:
            reseed()
        return device.xp.sum(layer.forward(x, train) * w)

    f()
    dx = layer.backward(w)
    grads = dict(layer.grads)
    errors = {"x": rel_error(device.to_numpy(dx), device.to_numpy(numerical_gradient(f, x)))}
    for k, p in layer.params.items():
        errors[k] = rel_error(device.to_numpy(grads[k]), device.to_numpy(numerical_gradient(f, p)))
    assert max(errors.values()) < tol, errors
    return errors


def test_affine_flattens_any_rank(device, rng):
    layer = build(L.Affine, device, 12, 5)
    check_layer(layer, device, rng.standard_normal((3, 3, 2, 2)))
    out = layer.forward(device.asarray(rng.standard_normal((3, 3, 2, 2)), "float64"))
    assert tuple(out.shape) == (3, 5)
    assert tuple(layer.backward(out).shape) == (3, 3, 2, 2)


def test_affine_skips_dx_when_not_needed(device, rng):
    layer = build(L.Affine, device, 4, 2)
    layer.need_dx = False
    layer.forward(device.asarray(rng.standard_normal((2, 4)), "float64"))
    assert layer.backward(device.asarray(np.ones((2, 2)), "float64")) is None
    assert tuple(layer.grads["W"].shape) == (4, 2)


@pytest.mark.parametrize("cls", [L.ReLU, L.Sigmoid, L.Tanh, L.Flatten])
def test_activation_layers(device, rng, cls):
    check_layer(build(cls, device), device, away_from_zero(rng, (3, 2, 3, 3)))


@pytest.mark.parametrize("C,FN,k,stride,pad,H", [(1, 2, 3, 1, 0, 6), (3, 4, 3, 1, 1, 5), (2, 3, 3, 2, 1, 7),
                                                  (2, 2, 2, 2, 0, 6)])
def test_convolution(device, rng, C, FN, k, stride, pad, H):
    check_layer(build(L.Convolution, device, C, FN, k, stride, pad), device, rng.standard_normal((2, C, H, H)))


@pytest.mark.parametrize("cls", [L.MaxPooling, L.AvgPooling])
@pytest.mark.parametrize("k,stride,pad,H", [(2, 2, 0, 6), (3, 2, 1, 7), (3, 1, 0, 5)])
def test_pooling(device, cls, k, stride, pad, H):
    # distinct values spaced apart so no max is tied or flipped by the finite difference
    x = np.random.default_rng(2).permutation(2 * 2 * H * H).reshape(2, 2, H, H) * 0.01
    check_layer(build(cls, device, k, k, stride, pad), device, x)


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 3, 3)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm(device, rng, shape, train):
    layer = build(L.BatchNormalization, device, shape[1])
    dt = device.dtype("float64")
    layer.params["gamma"] = device.asarray(rng.uniform(0.5, 1.5, shape[1]), dt)
    layer.params["beta"] = device.asarray(rng.standard_normal(shape[1]), dt)
    check_layer(layer, device, rng.standard_normal(shape) * 2 + 1, train=train, tol=1e-6)


def test_batchnorm_running_stats_and_eval(device, rng):
    layer = build(L.BatchNormalization, device, 3, momentum=0.5)
    x = rng.standard_normal((50, 3)) * 2 + 3
    out = device.to_numpy(layer.forward(device.asarray(x, "float64"), train=True))
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(device.to_numpy(layer.buffers["running_mean"]), 0.5 * x.mean(0))
    np.testing.assert_allclose(device.to_numpy(layer.buffers["running_var"]), 0.5 + 0.5 * x.var(0))
    ev = device.to_numpy(layer.forward(device.asarray(x, "float64"), train=False))
    rm, rv = 0.5 * x.mean(0), 0.5 + 0.5 * x.var(0)
    np.testing.assert_allclose(ev, (x - rm) / np.sqrt(rv + 1e-5))


def test_dropout(device, rng):
    layer = L.Dropout(0.4, device=device)
    reseed = lambda: layer.set_seed(7)  # noqa: E731
    reseed()
    check_layer(layer, device, rng.standard_normal((50, 40)), reseed=reseed)
    reseed()
    x = device.asarray(np.ones((200, 100)), "float64")
    y = device.to_numpy(layer.forward(x, train=True))
    kept = y != 0
    assert 0.55 < kept.mean() < 0.65
    np.testing.assert_allclose(y[kept], 1 / 0.6)  # scaled so eval needs no correction
    np.testing.assert_array_equal(device.to_numpy(layer.forward(x, train=False)), 1.0)


@pytest.mark.parametrize("onehot", [False, True])
def test_softmax_with_loss(device, rng, onehot):
    layer = L.SoftmaxWithLoss()
    t = rng.integers(0, 5, 4)
    tt = device.asarray(np.eye(5)[t], "float64") if onehot else device.asarray(t)
    x = device.asarray(rng.standard_normal((4, 5)), "float64")
    layer.forward(x, tt)
    dx = layer.backward()
    num = numerical_gradient(lambda: layer.forward(x, tt), x)
    assert rel_error(device.to_numpy(dx), device.to_numpy(num)) < 1e-7


def test_layer_spec_roundtrip():
    for layer in [L.Affine(3, 4), L.Convolution(2, 3, (3, 2), 2, 1), L.MaxPooling(3, 3, 2, 1),
                  L.BatchNormalization(5, 0.8), L.Dropout(0.3), L.ReLU()]:
        again = L.layer_from_spec(layer.spec())
        assert again.spec() == layer.spec()
    with pytest.raises(ValueError, match="unknown layer type"):
        L.layer_from_spec({"type": "Nope"})


def test_a_layer_alone_trains_a_one_layer_model(device):
    """Affine + SoftmaxWithLoss and an optimizer, no Sequential: the README's example."""
    import dualnet as dn
    rng = np.random.default_rng(0)
    x = device.asarray(rng.standard_normal((64, 2)), "float32")
    t = device.asarray((device.to_numpy(x)[:, 0] > 0).astype(np.int64))
    fc, loss_fn, opt = dn.Affine(2, 2, device=device, seed=0), dn.SoftmaxWithLoss(), dn.SGD(lr=0.5)
    losses = []
    for _ in range(50):
        losses.append(float(loss_fn.forward(fc.forward(x, train=True), t)))
        fc.backward(loss_fn.backward())
        opt.update(fc.params, fc.grads)
    assert losses[-1] < 0.5 * losses[0]
    for arr in (*fc.params.values(), *fc.grads.values()):
        device.check(arr)
    assert fc.roles == {"W": "weight", "b": "bias"}


def test_same_seed_same_layer_on_every_device(device):
    a = L.Convolution(2, 3, 3, seed=4, device="cpu")
    b = L.Convolution(2, 3, 3, seed=4, device=device)
    for k in a.params:
        np.testing.assert_array_equal(a.device.to_numpy(a.params[k]), device.to_numpy(b.params[k]))
        device.check(b.params[k])
