"""The build phase: a model resolves its device once, draws every parameter once, and keeps
parameters and gradients in one flat buffer each, whose views are the layers' arrays."""
import numpy as np
import pytest

import dualnet as dn
from dualnet import backend
from dualnet import layers as L
from dualnet.params import ParamSpec


@pytest.fixture
def counted(monkeypatch):
    """Counts of CPU devices made and of host draws (shape of each), while the test runs."""
    seen = {"devices": 0, "draws": []}
    init = backend.CPUDevice.__init__

    def counting_init(self, *a, **kw):
        seen["devices"] += 1
        init(self, *a, **kw)
    monkeypatch.setattr(backend.CPUDevice, "__init__", counting_init)
    normal, zeros, ones = backend.HostRNG.normal, backend.HostRNG.zeros, backend.HostRNG.ones

    def draw(fn, shape):
        seen["draws"].append(tuple(np.atleast_1d(shape)))
        return fn(shape)
    monkeypatch.setattr(backend.HostRNG, "normal", lambda self, shape, std=1.0: draw(
        lambda s: normal(self, s, std), shape))
    monkeypatch.setattr(backend.HostRNG, "zeros", staticmethod(lambda shape: draw(zeros, shape)))
    monkeypatch.setattr(backend.HostRNG, "ones", staticmethod(lambda shape: draw(ones, shape)))
    return seen


def test_deep_convnet_resolves_one_device_and_draws_each_parameter_once(counted):
    net = dn.DeepConvNet(device="cpu", seed=3)
    assert counted["devices"] == 1
    shapes = [tuple(p.shape) for p in net.params.values()]
    assert len(shapes) == 16  # 6 convolutions and 2 affine layers: W and b each
    assert counted["draws"] == shapes  # each parameter drawn once, in order; no buffers here


def test_a_layer_alone_builds_itself_on_first_use(counted):
    fc = L.Affine(3, 2, device="cpu", seed=5)
    assert counted["devices"] == 0 and counted["draws"] == []  # nothing before it is used
    W = fc.device.to_numpy(fc.params["W"])
    assert counted["devices"] == 1 and counted["draws"] == [(3, 2), (2,)]
    want = np.sqrt(2 / 3) * np.random.default_rng(5).standard_normal((3, 2))  # He, from its own seed
    np.testing.assert_array_equal(W, want.astype(np.float32))
    assert fc.params is fc.params and counted["draws"] == [(3, 2), (2,)]  # built once
    out = fc.forward(fc.device.asarray(np.ones((4, 3)), "float32"))
    assert tuple(out.shape) == (4, 2) and counted["devices"] == 1


def test_a_model_draws_what_its_layers_declare_from_one_generator():
    """The values are those of one HostRNG(seed) drawing the declared specs in order."""
    net = dn.TwoLayerNet(5, 4, 3, seed=7)
    rng = backend.HostRNG(7)
    for (name, p), layer_k in zip(net.params.items(), ["0.W", "0.b", "2.W", "2.b"]):
        i, k = name.split(".")
        spec = net.layers[int(i)].param_specs()[k]
        assert isinstance(spec, ParamSpec) and name == layer_k
        want = spec.draw(rng, 0.01).astype(np.float32)
        np.testing.assert_array_equal(net.device.to_numpy(p), want)
    assert net.roles() == {"0.W": "weight", "0.b": "bias", "2.W": "weight", "2.b": "bias"}


def test_params_and_grads_are_views_of_one_flat_buffer_each(device):
    net = dn.SimpleConvNet((1, 6, 6), filter_num=2, filter_size=3, pad=1, hidden_size=5, output_size=3,
                           use_batchnorm=True, device=device, dtype="float64", seed=0)
    n = net.num_params()
    P = net.params.flat
    assert tuple(P.shape) == (n,)
    with device.bind():
        P[...] = device.asarray(np.arange(n, dtype=np.float64), "float64")
    seen = np.concatenate([device.to_numpy(p).ravel() for p in net.params.values()])
    np.testing.assert_array_equal(seen, np.arange(n))  # writing the buffer shows through the layers
    conv = net.layers[0]
    np.testing.assert_array_equal(device.to_numpy(conv.params["W"]).ravel(), np.arange(conv.params["W"].size))
    rng = np.random.default_rng(0)
    x = device.asarray(rng.standard_normal((4, 1, 6, 6)), "float64")
    t = device.asarray(rng.integers(0, 3, 4))
    net.loss(x, t, train=True)
    grads = net.backward()
    G = grads.flat
    assert tuple(G.shape) == (n,) and list(grads) == list(net.params)
    with device.bind():
        G[...] = device.asarray(np.full(n, 7.0), "float64")
    assert all(np.all(device.to_numpy(g) == 7.0) for layer in net.layers for g in layer.grads.values())
    with device.bind():  # and the other way: a layer's array writes into the buffer
        conv.params["b"][...] = device.asarray(np.full(2, -1.0), "float64")
    np.testing.assert_array_equal(device.to_numpy(P)[conv.params["W"].size:][:2], [-1.0, -1.0])


def test_flat_weight_decay_matches_the_per_weight_rule(device):
    """Weight decay acts once on the flat gradient buffer, on the weights only."""
    rng = np.random.default_rng(1)
    x = device.asarray(rng.standard_normal((6, 4)), "float64")
    t = device.asarray(rng.integers(0, 3, 6))
    for reg in ("l2", "l1"):
        plain = dn.MultiLayerNet(4, [5], 3, use_batchnorm=True, device=device, dtype="float64", seed=2)
        decayed = dn.MultiLayerNet(4, [5], 3, use_batchnorm=True, device=device, dtype="float64", seed=2,
                                   weight_decay=0.3, regularization=reg)
        for net in (plain, decayed):
            net.loss(x, t, train=True)
            net.backward()
        for k, p in plain.params.items():
            p = device.to_numpy(p)
            step = p if reg == "l2" else np.sign(p)
            want = device.to_numpy(plain.grads[k]) + (0.3 * step if plain.roles()[k] == "weight" else 0.0)
            np.testing.assert_allclose(device.to_numpy(decayed.grads[k]), want, rtol=1e-13, atol=1e-15)


def test_assigning_a_model_parameter_copies_into_it(device):
    net = dn.TwoLayerNet(3, 2, 2, device=device, dtype="float64")
    params = net.params
    W = params["0.W"]
    params["0.W"] = device.asarray(np.ones((3, 2)), "float64")
    assert net.params["0.W"] is W and net.params.flat is not None
    np.testing.assert_array_equal(device.to_numpy(net.layers[0].params["W"]), np.ones((3, 2)))
    with pytest.raises(dn.ShapeError, match=r"shape \(3, 2\)"):
        params["0.W"] = device.asarray(np.ones((2, 3)), "float64")
    with pytest.raises(KeyError, match="not a parameter"):
        params["9.W"] = W


def test_moving_a_model_builds_new_flat_buffers_there():
    cpu, sim = dn.get_device("cpu"), dn.get_device("sim")
    net = dn.MultiLayerNet(4, [3], 2, use_batchnorm=True, device=cpu, seed=0)
    before = {k: cpu.to_numpy(v).copy() for k, v in net.state().items()}
    net.to(sim)
    assert sim.owns(net.params.flat) and all(sim.owns(v) for v in net.state().values())
    for k, v in net.state().items():
        np.testing.assert_array_equal(sim.to_numpy(v), before[k])
    assert all(layer.device is sim for layer in net.layers)


def test_a_layer_with_the_old_init_hook_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="param_specs"):
        class Old(L.Layer):
            def _init_params(self, rng):
                return {}
