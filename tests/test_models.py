import numpy as np
import pytest

import dualnet as dn
from dualnet.gradcheck import check_model


def small_models(device):
    kw = dict(device=device, dtype="float64", seed=0)
    return {
        "two_layer_net": (dn.TwoLayerNet(16, 10, 4, weight_init=0.5, **kw), (16,)),
        "mlp_bn_dropout_l2": (dn.MultiLayerNet(16, [8, 8], 4, use_batchnorm=True, dropout=0.2,
                                               weight_decay=0.1, **kw), (16,)),
        "mlp_sigmoid_l1": (dn.MultiLayerNet(16, [8], 4, activation="sigmoid", weight_decay=0.05,
                                            regularization="l1", **kw), (16,)),
        "mlp_tanh": (dn.MultiLayerNet(16, [8], 4, activation="tanh", **kw), (16,)),
        "simple_convnet": (dn.SimpleConvNet((2, 8, 8), filter_num=3, filter_size=3, pad=1, hidden_size=6,
                                            output_size=4, weight_init=0.5, **kw), (2, 8, 8)),
        "simple_convnet_bn": (dn.SimpleConvNet((1, 6, 6), filter_num=2, filter_size=3, pad=0, hidden_size=5,
                                               output_size=3, use_batchnorm=True, **kw), (1, 6, 6)),
        # seed 3 with input seed 6 keeps every ReLU and max of this deep net clear of a kink
        "deep_convnet": (dn.DeepConvNet((1, 28, 28), output_size=4, hidden_size=6, dropout=0.3,
                                        **{**kw, "seed": 3}), (1, 28, 28)),
    }


@pytest.mark.parametrize("name", ["two_layer_net", "mlp_bn_dropout_l2", "mlp_sigmoid_l1", "mlp_tanh",
                                  "simple_convnet", "simple_convnet_bn", "deep_convnet"])
def test_model_gradient_check(device, name):
    model, shape = small_models(device)[name]
    n = 4 if name == "deep_convnet" else 8
    rng = np.random.default_rng(6 if name == "deep_convnet" else 3)
    x = device.asarray(rng.standard_normal((n,) + shape), "float64")
    t = device.asarray(rng.integers(0, model.output_shape[0], n))
    errors = check_model(model, x, t, max_checks=6, seed=1)
    # L1's sign() has a kink at 0 only; the weights are never exactly 0 here.  A bias before batch
    # norm has a true gradient of 0: its relative error is meaningless, its absolute one tiny.
    assert all(e.ok(1e-6, 1e-8) for e in errors.values()), errors
    assert set(errors) == set(model.params)


def test_models_build_with_book_shapes():
    assert dn.SimpleConvNet().num_params() == 30 * 25 + 30 + 4320 * 100 + 100 + 100 * 10 + 10
    deep = dn.DeepConvNet()
    shapes = [tuple(p.shape) for k, p in deep.params.items() if k.endswith(".W")]
    assert shapes[:6] == [(16, 1, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3),
                          (64, 64, 3, 3)]
    assert shapes[6] == (64 * 4 * 4, 50)
    assert dn.TwoLayerNet().num_params() == 784 * 50 + 50 + 50 * 10 + 10


def test_misfit_shapes_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 2 .*Affine.*expects 10 input features"):
        dn.Sequential([dn.Affine(4, 8), dn.ReLU(), dn.Affine(10, 2)], input_shape=(4,))
    with pytest.raises(ValueError, match="pooling: window 2 is larger than the padded input"):
        dn.DeepConvNet((1, 2, 2))
    net = dn.TwoLayerNet(4, 3, 2)
    with pytest.raises(ValueError, match=r"shape \(2, 5\).*expects \(N, 4\)"):
        net.predict(net.device.asarray(np.ones((2, 5)), "float32"))
    with pytest.raises(TypeError, match="float64 but the model is float32"):
        net.predict(net.device.asarray(np.ones((2, 4)), "float64"))


def test_same_seed_same_initial_network_on_every_device(device):
    a = dn.SimpleConvNet(device="cpu", seed=5)
    b = dn.SimpleConvNet(device=device, seed=5)
    for k in a.params:
        np.testing.assert_array_equal(a.device.to_numpy(a.params[k]), b.device.to_numpy(b.params[k]))


def test_device_parity_of_training_steps(device):
    """A few Adam steps on cpu and on ``device`` give the same losses."""
    rng = np.random.default_rng(0)
    x = rng.random((16, 1, 12, 12))
    t = rng.integers(0, 10, 16)
    losses = []
    for spec in ("cpu", device):
        d = dn.get_device(spec)
        net = dn.SimpleConvNet((1, 12, 12), filter_num=4, hidden_size=16, device=d, dtype="float64", seed=1)
        opt = dn.Adam(0.01)
        xd, td = d.asarray(x, "float64"), d.asarray(t)
        out = []
        for _ in range(5):
            out.append(float(net.loss(xd, td, train=True)))
            net.backward()
            opt.update(net.params, net.grads)
        losses.append(out)
    a, b = losses
    np.testing.assert_allclose(a, b, rtol=1e-10)
    assert a[-1] < a[0]


@pytest.mark.parametrize("method", ["auto", "im2col", "gemm", "rows", "shift"])
def test_first_layer_input_gradient_is_skipped(monkeypatch, method):
    """The first convolution's backward runs with need_dx=False and returns no dx; the later
    ones compute theirs; whichever method runs."""
    from dualnet import conv
    net = dn.DeepConvNet((1, 8, 8), hidden_size=4, conv_method=method)
    calls, orig = [], conv.conv2d_backward

    def spy(dout, saved, W, need_dx=True):
        dx, dW, db = orig(dout, saved, W, need_dx)
        calls.append((saved.method, need_dx, dx is None))
        return dx, dW, db

    monkeypatch.setattr(conv, "conv2d_backward", spy)
    x = net.device.asarray(np.random.default_rng(0).random((2, 1, 8, 8)), "float32")
    net.loss(x, net.device.asarray(np.array([1, 2])), train=True)
    net.backward()
    convs = [layer for layer in net.layers if isinstance(layer, dn.Convolution)][::-1]   # backward order
    assert [c[1:] for c in calls] == [(True, False)] * 5 + [(False, True)]
    assert [c[0] for c in calls] == [layer.saved.method for layer in convs]
    assert method == "auto" or {c[0] for c in calls} == {method}
    assert "0.W" in net.grads


def test_accuracy_in_batches_matches_one_batch(device):
    net = dn.MultiLayerNet(20, [16], 5, device=device, seed=2)
    rng = np.random.default_rng(0)
    x = device.asarray(rng.standard_normal((53, 20)), "float32")
    t = device.asarray(rng.integers(0, 5, 53))
    pred = device.to_numpy(device.xp.argmax(net.predict(x), axis=1))
    expected = float(np.mean(pred == device.to_numpy(t)))
    assert net.accuracy(x, t, batch_size=7) == pytest.approx(expected)
    oh = device.asarray(np.eye(5)[device.to_numpy(t)], "float32")
    assert net.accuracy(x, oh, batch_size=10) == pytest.approx(expected)


def test_sequential_for_your_own_net(device):
    net = dn.Sequential([dn.Convolution(1, 2, 3, pad=1), dn.Tanh(), dn.AvgPooling(2), dn.Flatten(),
                         dn.Affine(2 * 3 * 3, 3)], input_shape=(1, 6, 6), device=device, dtype="float64",
                        weight_init="xavier")
    rng = np.random.default_rng(0)
    x = device.asarray(rng.standard_normal((2, 1, 6, 6)), "float64")
    t = device.asarray(np.array([0, 2]))
    assert max(e.rel for e in check_model(net, x, t, max_checks=5).values()) < 1e-6
    again = dn.model_from_config(net.config, device=device)
    assert [l.spec() for l in again.layers] == [l.spec() for l in net.layers]


def test_pooling_before_relu_is_the_same_network(device):
    """The models run conv - maxpool - ReLU: forward and gradients equal the book's
    conv - ReLU - maxpool, including at ties and all-negative windows."""
    rng = np.random.default_rng(0)
    x = device.asarray(np.round(rng.standard_normal((4, 1, 8, 8)), 1), "float64")  # quantized: ties
    t = device.asarray(rng.integers(0, 3, 4))
    ours = dn.SimpleConvNet((1, 8, 8), filter_num=3, filter_size=3, pad=1, hidden_size=5, output_size=3,
                            device=device, dtype="float64", seed=1)
    assert [type(l).__name__ for l in ours.layers[:3]] == ["Convolution", "MaxPooling", "ReLU"]
    book = dn.Sequential([dn.Convolution(1, 3, 3, pad=1), dn.ReLU(), dn.MaxPooling(2, 2, 2), dn.Affine(48, 5),
                          dn.ReLU(), dn.Affine(5, 3)], (1, 8, 8), device=device, dtype="float64", seed=1)
    book.load_state({k: device.to_numpy(v) for k, v in ours.state().items()})
    la, lb = ours.loss(x, t, train=True), book.loss(x, t, train=True)
    assert float(la) == pytest.approx(float(lb), rel=1e-14)
    ga, gb = ours.backward(), book.backward()
    for k in ga:
        np.testing.assert_allclose(device.to_numpy(ga[k]), device.to_numpy(gb[k]), rtol=1e-12, atol=1e-14)


def test_accuracy_refuses_labels_of_another_length(device):
    net = dn.MultiLayerNet(4, [3], 2, device=device)
    with pytest.raises(dn.ShapeError, match="one label per sample"):
        net.accuracy(device.asarray(np.zeros((5, 4)), "float32"), device.asarray(np.zeros(4, np.int64)))


@pytest.mark.parametrize("name", ["simple_convnet", "deep_convnet"])
def test_every_conv_method_trains_the_same_network(device, name):
    """Loss, scores and every gradient of a whole network agree across convolution methods.

    The CPU's "rows" hands its maps on batch-innermost (views of (C, H, W, N) memory) through
    ReLU, pooling and the next convolution; this checks that chain, forward and backward,
    against the book's im2col on every device (where "auto" is "gemm" on the GPU stand-in)."""
    model, shape = small_models(device)[name]
    n = 4
    rng = np.random.default_rng(6)
    x = device.asarray(rng.standard_normal((n,) + shape), "float64")
    t = device.asarray(rng.integers(0, model.output_shape[0], n))
    results = {}
    for method in dn.conv.method_names():
        model.set_conv_method(method)
        loss = device.to_numpy(model.loss(x, t, train=False))
        model.backward()
        results[method] = (loss, device.to_numpy(model.scores),
                           {k: device.to_numpy(g) for k, g in model.grads.items()})
    ref = results["im2col"]
    for method, (loss, scores, grads) in results.items():
        np.testing.assert_allclose(loss, ref[0], rtol=1e-12, err_msg=method)
        np.testing.assert_allclose(scores, ref[1], rtol=1e-10, atol=1e-12, err_msg=method)
        for k, g in grads.items():
            np.testing.assert_allclose(g, ref[2][k], rtol=1e-9, atol=1e-12, err_msg=f"{method} {k}")
