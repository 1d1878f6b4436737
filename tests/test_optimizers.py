import numpy as np
import pytest

import dualnet as dn
from dualnet.optimizers import OPTIMIZERS, LRSchedule, make_optimizer


# Three steps of each rule from p = [1, -2] with lr = 0.1 and gradients [0.5, 1], [-1, 0], [2, -0.5],
# worked by hand with the book's update rules (common/optimizer.py: momentum 0.9, RMSprop decay
# 0.99, Adam betas 0.9 / 0.999, eps 1e-7).  First steps, to check the arithmetic:
#   sgd       1 - 0.1*0.5 = 0.95
#   momentum  v = -0.05, p = 0.95;  then v = 0.9*-0.05 + 0.1 = 0.055, p = 1.005
#   nesterov  v = -0.05, p = 1 + 0.81*v - 1.9*0.1*0.5 = 0.8645
#   adagrad   h = 0.25, p = 1 - 0.05/(0.5 + 1e-7) = 0.90000002
#   rmsprop   h = 0.0025, p = 1 - 0.05/(0.05 + 1e-7) = 2.0e-6
#   adam      lr_t = 0.1*sqrt(0.001)/0.1, m = 0.05, v = 0.00025, p = 1 - lr_t*m/(sqrt(v) + 1e-7)
BOOK_STEPS = {
    "sgd": ([0.95, 1.05, 0.85], [-2.1, -2.1, -2.05]),
    "momentum": ([0.95, 1.005, 0.8545], [-2.1, -2.19, -2.221]),
    "nesterov": ([0.8645, 1.09905, 0.597145], [-2.271, -2.3439, -2.27401]),
    "adagrad": ([0.900000019999996, 0.9894427310999883, 0.902155578815115],
                [-2.099999990000001, -2.099999990000001, -2.055278634450005]),
    "rmsprop": ([1.999996000034976e-06, 0.8953241604652018, 0.021205430953531113],
                [-2.999999000001, -2.999999000001, -2.549182914639126]),
    "adam": ([0.900000632451532, 0.936610881595338, 0.8946453776819329],
             [-2.099999683773234, -2.1670052971905087, -2.1847319668201095]),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_rules_match_the_book(device, name):
    grads = [[0.5, 1.0], [-1.0, 0.0], [2.0, -0.5]]
    opt = make_optimizer(name, 0.1)
    params = {"w": device.asarray(np.array([1.0, -2.0]), "float64")}
    want = np.array(BOOK_STEPS[name]).T  # (step, element)
    for step, g in enumerate(grads):
        opt.update(params, {"w": device.asarray(np.array(g), "float64")})
        np.testing.assert_allclose(device.to_numpy(params["w"]), want[step], rtol=1e-12, atol=1e-15,
                                   err_msg=f"{name}, step {step + 1}")
    for slot in opt.state.values():  # state lives on the parameters' device
        for arr in slot.values():
            device.check(arr, "optimizer state")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers_descend_the_books_quadratic(name):
    """f(x, y) = x**2/20 + y**2 from (-7, 2), with the book's chapter-6 learning rates."""
    lr = {"sgd": 0.95, "momentum": 0.1, "nesterov": 0.1, "adagrad": 1.5, "rmsprop": 0.1, "adam": 0.3}[name]
    dev = dn.get_device("cpu")
    p = {"x": dev.asarray(np.array([-7.0])), "y": dev.asarray(np.array([2.0]))}
    opt = make_optimizer(name, lr)
    f0 = 49 / 20 + 4
    for _ in range(30):
        opt.update(p, {"x": p["x"] / 10.0, "y": 2.0 * p["y"]})
    f = float(p["x"][0]) ** 2 / 20 + float(p["y"][0]) ** 2
    assert f < 0.5 * f0


def test_lr_schedules():
    exp = LRSchedule(0.1, 0.95)
    assert [round(exp(e), 6) for e in range(3)] == [0.1, 0.095, 0.09025]
    step = LRSchedule(1.0, 0.5, kind="step", step_size=2)
    assert [step(e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="decay"):
        LRSchedule(0.1, 1.5)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="choose one of sgd, momentum"):
        make_optimizer("lbfgs")


def test_state_dict_roundtrip(device):
    opt = dn.Adam(0.01)
    params = {"w": device.asarray(np.ones(3), "float64")}
    for _ in range(3):
        opt.update(params, {"w": device.asarray(np.full(3, 0.5), "float64")})
    scalars, arrays = opt.state_dict()
    other = dn.Adam(0.5)
    other.load_state_dict(scalars, {k: device.to_numpy(v) for k, v in arrays.items()}, device)
    assert other.t == 3 and other.lr == 0.01
    p1, p2 = {"w": device.asarray(np.ones(3), "float64")}, {"w": device.asarray(np.ones(3), "float64")}
    g = {"w": device.asarray(np.full(3, 0.2), "float64")}
    opt.update(p1, g)
    other.update(p2, g)
    np.testing.assert_array_equal(device.to_numpy(p1["w"]), device.to_numpy(p2["w"]))
    with pytest.raises(ValueError, match="checkpoint optimizer is Adam"):
        dn.SGD(0.1).load_state_dict(scalars, {}, device)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_one_flat_update_equals_per_parameter_updates(device, name):
    """A network's params are views of one flat buffer, updated in one go; the result is the
    per-parameter one, the layers train through their own arrays, and checkpoints keep their keys."""
    rng = np.random.default_rng(0)
    x = device.asarray(rng.standard_normal((8, 1, 6, 6)), "float64")
    t = device.asarray(rng.integers(0, 3, 8))
    nets = [dn.SimpleConvNet((1, 6, 6), filter_num=2, filter_size=3, pad=1, hidden_size=5, output_size=3,
                             device=device, dtype="float64", seed=2) for _ in range(2)]
    opts = [make_optimizer(name, 0.05), make_optimizer(name, 0.05)]
    for _ in range(3):
        for i, (net, opt) in enumerate(zip(nets, opts)):
            net.loss(x, t, train=True)
            net.backward()
            # net 0: the network's own flat-backed params; net 1: a plain dict (per parameter)
            opt.update(net.params if i == 0 else dict(net.params), net.grads)
    flat = nets[0].params.flat
    assert flat is not None and opts[0]._flat_of is flat and opts[1]._flat_of is None
    for k in nets[0].params:
        np.testing.assert_allclose(device.to_numpy(nets[0].params[k]), device.to_numpy(nets[1].params[k]),
                                   rtol=1e-12, atol=1e-15)
    a, b = opts[0].state_dict()[1], opts[1].state_dict()[1]
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(device.to_numpy(a[k]), device.to_numpy(b[k]), rtol=1e-12, atol=1e-15)


def test_flat_state_survives_a_rebound_parameter_and_a_reload(device):
    """Moving a model builds new flat buffers: the optimizer's state follows them; a layer moved
    on its own leaves the model's buffer (updates go per parameter, into the same state); a
    loaded state continues exactly like the optimizer it came from."""
    rng = np.random.default_rng(1)
    x = device.asarray(rng.standard_normal((6, 4)), "float64")
    t = device.asarray(rng.integers(0, 2, 6))

    def step(net, opt):
        net.loss(x, t, train=True)
        net.backward()
        opt.update(net.params, net.grads)

    a, b, d = (dn.MultiLayerNet(4, [5], 2, device=device, dtype="float64", seed=0) for _ in range(3))
    oa, ob, od = dn.Adam(0.01), dn.Adam(0.01), dn.Adam(0.01)
    for _ in range(2):
        step(a, oa)
        step(b, ob)
        step(d, od)
    scalars, arrays = oa.state_dict()
    oc = dn.Adam(0.5)
    oc.load_state_dict(scalars, {k: device.to_numpy(v) for k, v in arrays.items()}, device)
    old = b.params.flat
    b.to(device)  # new flat buffers (copies)
    assert b.params.flat is not None and b.params.flat is not old
    d.layers[0].to(device)  # layer 0 alone gets new arrays (copies), outside d's flat buffer
    assert d.params.flat is None
    c = dn.MultiLayerNet(4, [5], 2, device=device, dtype="float64", seed=0)
    c.load_state({k: device.to_numpy(v) for k, v in a.state().items()})
    for _ in range(2):
        step(a, oa)
        step(b, ob)
        step(c, oc)
        step(d, od)
    assert ob._flat_of is b.params.flat
    for k in a.params:
        ref = device.to_numpy(a.params[k])
        for other in (b, c, d):
            np.testing.assert_allclose(device.to_numpy(other.params[k]), ref, rtol=1e-12, atol=1e-15)


def test_update_refuses_grads_on_another_device():
    cpu, sim = dn.get_device("cpu"), dn.get_device("sim")
    with pytest.raises(dn.DeviceError, match="gradient"):
        dn.SGD(0.1).update({"w": cpu.asarray(np.ones(2))}, {"w": sim.asarray(np.ones(2))})


@pytest.mark.parametrize("flat", [True, False])
def test_reduce_sees_one_flat_gradient_buffer(device, flat):
    """The data-parallel hook: ``reduce`` gets all gradients as one 1-D array, once per step, and
    what it returns is what the update applies (here: halving them halves an SGD step)."""
    net = dn.MultiLayerNet(4, [3], 2, device=device, dtype="float64", seed=0)
    x = device.asarray(np.ones((2, 4)), "float64")
    t = device.asarray(np.array([0, 1]))
    before = {k: device.to_numpy(v).copy() for k, v in net.params.items()}
    net.loss(x, t, train=True)
    grads = {k: device.to_numpy(v).copy() for k, v in net.backward().items()}
    seen = []

    def halve(G):
        seen.append(tuple(G.shape))
        return G * 0.5
    dn.SGD(0.1).update(net.params if flat else dict(net.params), net.grads, reduce=halve)
    assert seen == [(net.num_params(),)]
    for k in before:
        np.testing.assert_allclose(device.to_numpy(net.params[k]), before[k] - 0.05 * grads[k], rtol=1e-12)
