"""Micro-batches (dualnet.microbatch): a batch run in parts has the whole batch's loss, gradients,
scores and update, to rounding, on every device; the size rule splits only what it should."""
import numpy as np
import pytest

import dualnet as dn
from dualnet import microbatch
from dualnet.errors import ConfigError
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


@pytest.mark.parametrize("bad", [-1, 2.5, "big", True])
def test_a_bad_micro_batch_is_refused_by_name(bad):
    model = dn.TwoLayerNet(4, 3, 2, device="cpu", seed=0)
    with pytest.raises(ConfigError, match="micro_batch"):
        microbatch.size(model, 8, True, bad)


def test_an_inference_keeps_nothing_for_backward_and_backward_says_so(device, rng):
    model = _conv(device)
    x = device.asarray(rng.normal(size=(4, 1, 12, 12)), "float64")
    t = device.asarray(rng.integers(0, 5, size=4), "int64")
    model.loss(x, t, train=True)
    model.predict(x)   # released every layer's state: a backward now would mix two batches
    assert all(getattr(l, "saved", None) is None for l in model.layers)
    with pytest.raises(ConfigError, match="predict"):
        model.backward()
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
