"""Micro-batches (dualnet.microbatch): a batch run in parts has the whole batch's loss, gradients,
scores and update, to rounding, on every device; the size rule splits only what it should."""
import numpy as np
import pytest

import dualnet as dn
from dualnet import microbatch
from dualnet.errors import ConfigError, DualnetError, ShapeError
from dualnet.training import train_step


def _whole_and_parts(make, device, x, t, m):
    """(loss, flat grads, scores) of the same fresh model, once whole and once in parts of m."""
    out = []
    for mb in (None, m):
        model = make(device)
        loss, grads = model.gradient(x, t, train=True, micro_batch=mb)
        out.append((device.to_numpy(loss), device.to_numpy(grads.flat), device.to_numpy(model.scores)))
    return out


def _conv(device):
    # dropout and L2 weight decay: the masks and the penalty must add up like the whole batch's
    return dn.DeepConvNet((1, 12, 12), output_size=5, hidden_size=7, dropout=0.3, weight_decay=0.05,
                          device=device, dtype="float64", seed=1)


def test_micro_batches_give_the_whole_batchs_loss_grads_and_scores(device, rng):
    x = device.asarray(rng.normal(size=(10, 1, 12, 12)), "float64")
    t = device.asarray(rng.integers(0, 5, size=10), "int64")
    (l0, g0, s0), (l1, g1, s1) = _whole_and_parts(_conv, device, x, t, 4)   # 4 + 4 + 2: unequal parts
    assert s1.shape == s0.shape == (10, 5)
    assert abs(l1 - l0) <= 1e-12 * abs(l0)
    np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(s1, s0, rtol=1e-10, atol=1e-13)


def test_a_training_step_in_micro_batches_updates_like_one_batch(device, rng):
    x = device.asarray(rng.normal(size=(6, 1, 12, 12)), "float64")
    t = device.asarray(rng.integers(0, 5, size=6), "int64")
    flats, counts = [], []
    for mb in (None, 2):
        model = _conv(device)
        opt = dn.Adam(lr=1e-2)
        for _ in range(2):
            _, correct = train_step(model, opt, x, t, micro_batch=mb)
        flats.append(device.to_numpy(model.params.flat))
        counts.append(int(device.to_numpy(correct)))
    np.testing.assert_allclose(flats[1], flats[0], rtol=1e-9, atol=1e-12)
    assert counts[0] == counts[1]


def test_batch_normalization_in_training_is_never_split(device, rng):
    """Batch statistics are the whole batch's: a model with it trains as one batch even when asked."""
    model = dn.MultiLayerNet(6, [5], 3, use_batchnorm=True, device=device, dtype="float64", seed=0)
    assert microbatch.size(model, 8, True, 2) == 8
    assert microbatch.size(model, 8, False, 2) == 2    # evaluation uses the running statistics
    x = device.asarray(rng.normal(size=(8, 6)), "float64")
    t = device.asarray(rng.integers(0, 3, size=8), "int64")
    l0, _ = dn.MultiLayerNet(6, [5], 3, use_batchnorm=True, device=device, dtype="float64",
                             seed=0).gradient(x, t, micro_batch=None)
    l1, _ = model.gradient(x, t, micro_batch=2)
    assert float(device.to_numpy(l1)) == float(device.to_numpy(l0))


def test_evaluation_forward_in_parts_gives_the_same_scores(device, rng):
    model = _conv(device)
    x = device.asarray(rng.normal(size=(7, 1, 12, 12)), "float64")
    whole = device.to_numpy(model.predict(x, micro_batch=None))
    parts = device.to_numpy(model.predict(x, micro_batch=3))
    np.testing.assert_allclose(parts, whole, rtol=1e-12, atol=1e-14)
    # a training forward is one batch whatever micro_batch says: its backward follows
    loss = model.loss(x, device.asarray(rng.integers(0, 5, size=7), "int64"), train=True)
    assert model.scores.shape == (7, 5) and device.owns(loss)
    assert set(model.backward()) == set(model.params)


@pytest.mark.parametrize("name, n, dtype, expect", [
    ("deep_convnet", 256, "float32", 64), ("deep_convnet", 100, "float32", 50),
    ("deep_convnet", 64, "float32", 64), ("deep_convnet", 256, "float64", 37),
    ("simple_convnet", 256, "float32", 128), ("simple_convnet", 100, "float32", 100),
])
def test_auto_size_on_the_host_is_the_measured_rule(name, n, dtype, expect):
    """MICRO_BATCH_BYTES of layer outputs per part, equal parts (docs/convolution.md, "Micro-batches")."""
    make = {"deep_convnet": dn.DeepConvNet, "simple_convnet": dn.SimpleConvNet}[name]
    model = make(device="cpu", dtype=dtype, seed=0)
    per_sample = model.sample_values * (8 if dtype == "float64" else 4)
    m = microbatch.size(model, n, True)
    assert m == expect
    assert m * per_sample <= microbatch.MICRO_BATCH_BYTES or m == 1
    parts = -(-n // m)
    assert parts == 1 or n / (parts - 1) * per_sample > microbatch.MICRO_BATCH_BYTES   # no fewer parts fit


def test_auto_leaves_a_device_batch_whole_and_a_size_splits_anywhere():
    sim = dn.DeepConvNet(device="sim", seed=0)
    assert microbatch.size(sim, 256, True) == 256                 # a GPU pays per launch, not per cache miss
    assert microbatch.size(sim, 256, True, 64) == 64
    assert microbatch.size(sim, 256, True, None) == 256
    assert microbatch.size(sim, 10, True, 4) == 4


@pytest.mark.parametrize("bad", [-1, 2.5, "big", True, False])
def test_a_bad_micro_batch_is_refused_by_name_on_every_path(bad):
    model = dn.MultiLayerNet(4, [3], 2, use_batchnorm=True, device="cpu", seed=0)   # never split
    x, t = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    for call in (lambda: microbatch.size(model, 8, True, bad), lambda: model.gradient(x, t, micro_batch=bad),
                 lambda: model.predict(x, train=True, micro_batch=bad), lambda: model.predict(x, micro_batch=bad)):
        with pytest.raises(ConfigError, match="micro_batch"):
            call()


def test_sizes_are_any_integer_and_parts_as_equal_as_can_be():
    model = dn.TwoLayerNet(4, 3, 2, device="cpu", seed=0)
    assert microbatch.size(model, 10, True, np.int64(3)) == 3
    assert [e - s for s, e in microbatch.parts(10, 3)] == [2, 3, 2, 3]
    assert [e - s for s, e in microbatch.parts(256, 64)] == [64] * 4
    assert microbatch.parts(5, 5) == [(0, 5)]


def test_a_layer_of_your_own_keeps_the_batch_whole_unless_it_says_per_sample():
    from dualnet.layers import Layer

    class Scale(Layer):   # declares nothing: it might couple samples
        def forward(self, x, train=False):
            return 2 * x

        def backward(self, dout):
            return 2 * dout
    model = dn.Sequential([dn.layers.Affine(4, 3), Scale()], (4,), device="cpu", seed=0)
    assert microbatch.size(model, 10, True, 2) == 10 and microbatch.size(model, 10, False, 2) == 2
    Scale.per_sample = True
    assert microbatch.size(model, 10, True, 2) == 2


def test_a_bad_batch_is_refused_whole_and_changes_nothing():
    model = dn.TwoLayerNet(4, 5, 3, device="cpu", dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(6, 4))
    before = model.params.flat.copy()
    for t, shown in ((np.array([0, 1, 2, 0, 1, 2, 0, 1]), r"\(8,\).*6 samples"),
                     (np.array([0, 1, 2, 0, 1]), r"\(5,\).*6 samples")):
        with pytest.raises(ShapeError, match=shown):
            train_step(model, dn.SGD(lr=0.1), x, t, micro_batch=3)
    with pytest.raises(DualnetError):
        model.gradient(np.float64(1.0), np.array(0), micro_batch=3)
    with pytest.raises(DualnetError, match="outside the model's 3 classes"):
        model.gradient(x, np.array([0, 1, 2, 0, 1, 9]), micro_batch=3)   # out of range in the second part
    np.testing.assert_array_equal(model.params.flat, before)


def test_regression_targets_split_or_stay_whole_with_the_same_result():
    from dualnet.layers import Affine, MeanSquaredError, ReLU
    make = lambda: dn.Sequential([Affine(4, 5), ReLU(), Affine(5, 2)], (4,), loss=MeanSquaredError(),  # noqa: E731
                                 device="cpu", dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4))
    for t in (rng.normal(size=(6, 2)), rng.normal(size=12)):   # (N, K), and flat targets the loss reshapes
        l0, g0 = make().gradient(x, t, micro_batch=None)
        l1, g1 = make().gradient(x, t, micro_batch=3)
        assert abs(float(l1) - float(l0)) <= 1e-12 * abs(float(l0))
        np.testing.assert_allclose(g1.flat, g0.flat, rtol=1e-10, atol=1e-14)


def test_backward_after_micro_batches_or_any_predict_is_refused(device, rng):
    model = _conv(device)
    x = device.asarray(rng.normal(size=(6, 1, 12, 12)), "float64")
    t = device.asarray(rng.integers(0, 5, size=6), "int64")
    model.gradient(x, t, micro_batch=2)   # the layers hold the last part only
    with pytest.raises(ConfigError, match="loss"):
        model.backward()
    model.loss(x, t, train=True)
    model.predict(x, train=True)          # a training forward, but not of the loss backward starts from
    with pytest.raises(ConfigError, match="loss"):
        model.backward()
    bn = dn.MultiLayerNet(6, [5], 3, use_batchnorm=True, device=device, dtype="float64", seed=0)
    bn.predict(device.asarray(rng.normal(size=(4, 6)), "float64"))
    assert all(getattr(l, "xn", None) is None for l in bn.layers)


def test_an_inference_keeps_nothing_for_backward_and_backward_says_so(device, rng):
    model = _conv(device)
    x = device.asarray(rng.normal(size=(4, 1, 12, 12)), "float64")
    t = device.asarray(rng.integers(0, 5, size=4), "int64")
    model.loss(x, t, train=True)
    model.predict(x)   # released every layer's state: a backward now would mix two batches
    assert all(getattr(l, "saved", None) is None for l in model.layers)
    with pytest.raises(ConfigError, match="predict"):
        model.backward()
    with pytest.raises(ConfigError, match="released"):   # a layer of it, called alone, says so too
        model.layers[-1].backward(device.asarray(np.ones((4, 5)), "float64"))
    model.loss(x, t, train=False)   # an evaluation loss keeps its state: a gradient check's backward
    assert set(model.backward()) == set(model.params)


def test_an_inference_holds_one_layers_state_at_a_time():
    """tracemalloc's peak of predict against loss(train=False), which keeps every layer's state."""
    import tracemalloc
    model = dn.DeepConvNet(device="cpu", seed=0)
    x = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    t = np.zeros(32, dtype=np.int64)
    peaks = {}
    for name, run in (("loss", lambda: model.loss(x, t, train=False)), ("predict", lambda: model.predict(x))):
        run()   # plans and caches made once
        tracemalloc.start()
        run()
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["predict"] < 0.7 * peaks["loss"], peaks
