"""Regression: the MeanSquaredError loss layer (identity output) with Sequential, training and
gradcheck, on every device."""
import numpy as np
import pytest

from dualnet import functions as F
from dualnet.errors import ConfigError, ShapeError
from dualnet.gradcheck import check_model, numerical_gradient, rel_error
from dualnet.layers import Affine, MeanSquaredError, ReLU, SoftmaxWithLoss, layer_from_spec
from dualnet.models import Sequential
from dualnet.optimizers import Adam
from dualnet.checkpoint import load_checkpoint
from dualnet.data import Dataset
from dualnet.training import BatchSource, Trainer, train_steps


def linear_data(n, seed):
    """The course notes' example: y = 3 x0 + 2 x1 for x uniform in [-1, 1]^2; targets (N, 1)."""
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 2))
    return x, (3 * x[:, 0] + 2 * x[:, 1])[:, None]


def regression_net(device, dtype="float64", hidden=16):
    return Sequential([Affine(2, hidden), ReLU(), Affine(hidden, 1)], (2,), loss=MeanSquaredError(),
                      device=device, dtype=dtype, seed=0)


def test_mean_squared_error_pair_matches_its_definition(rng):
    y, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    assert float(F.mean_squared_error(y, t)) == pytest.approx(0.5 * np.sum((y - t) ** 2) / 5)
    np.testing.assert_allclose(F.d_mean_squared_error(y, t), (y - t) / 5)
    # one sample (K,): the batch is 1
    np.testing.assert_allclose(F.d_mean_squared_error(y[0], t[0]), y[0] - t[0])
    # the derivative is the loss's: central differences
    num = numerical_gradient(lambda: F.mean_squared_error(y, t), y)
    assert rel_error(num, F.d_mean_squared_error(y, t)) < 1e-8


def test_loss_layer_gradcheck_float64(device, rng):
    """float64 backprop of the loss layer alone against central differences, on the device."""
    layer = MeanSquaredError()
    x = device.asarray(rng.normal(size=(6, 3)), "float64")
    t = device.asarray(rng.normal(size=(6, 3)), "float64")
    value = layer.forward(x, t)
    assert device.owns(value) and value.ndim == 0
    dx = layer.backward(1.0)
    assert device.owns(dx) and tuple(dx.shape) == (6, 3)
    num = numerical_gradient(lambda: layer.forward(x, t), x)
    assert rel_error(dx, num) < 1e-8
    np.testing.assert_allclose(device.to_numpy(layer.backward(2.0)), 2 * device.to_numpy(dx))


def test_model_gradcheck_float64(device):
    x, t = linear_data(8, 1)
    net = regression_net(device, hidden=5)
    errors = check_model(net, device.asarray(x, "float64"), device.asarray(t, "float64"))
    assert set(errors) == {"0.W", "0.b", "2.W", "2.b"}
    assert all(e.ok(tol=1e-7) for e in errors.values()), errors


def test_linear_target_trains_to_a_small_loss(device):
    x, t = linear_data(256, 0)
    net = regression_net(device)
    src = BatchSource(x, t, device, "float64", 32)
    losses = train_steps(net, Adam(lr=0.01), src, 400, seed=0)
    assert losses[0] > 1.0                      # the targets' half-variance is (9 + 4) / 6 ~ 2.2
    assert np.mean(losses[-20:]) < 0.01, losses[-20:]
    xn, tn = linear_data(50, 7)                 # new points: it learned the plane
    pred = device.to_numpy(net.predict(device.asarray(xn, "float64")))
    assert pred.shape == (50, 1) and np.abs(pred - tn).max() < 0.3


def test_against_torch_mse(rng):
    torch = pytest.importorskip("torch")
    y, t = rng.normal(size=(7, 2)), rng.normal(size=(7, 2))
    yt = torch.tensor(y, requires_grad=True)
    ref = 0.5 * torch.nn.functional.mse_loss(yt, torch.tensor(t), reduction="sum") / 7
    ref.backward()
    layer = MeanSquaredError()
    assert float(layer.forward(y, t)) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(layer.backward(), yt.grad.numpy(), rtol=1e-12)


def test_accuracy_is_refused_and_misfits_are_named(device):
    x, t = linear_data(10, 2)
    net = regression_net(device)
    xd, td = device.asarray(x, "float64"), device.asarray(t, "float64")
    with pytest.raises(ConfigError, match="accuracy is refused.*MeanSquaredError.*regression.*model.loss"):
        net.accuracy(xd, td)
    with pytest.raises(ConfigError, match="accuracy is refused"):
        net.count_correct(xd, td)
    with pytest.raises(ShapeError, match=r"targets have shape \(10, 2\).*outputs have shape \(10, 1\)"):
        net.loss(xd, device.asarray(np.zeros((10, 2)), "float64"))
    # a classifier keeps its accuracy; the loss is rebuilt from its spec
    assert SoftmaxWithLoss.classifies and not MeanSquaredError.classifies
    assert type(layer_from_spec(MeanSquaredError().spec())) is MeanSquaredError


def test_trainer_scores_a_regression_model_by_its_loss(device, tmp_path):
    """The Trainer trains a regression model and records mean losses, not accuracies; its
    checkpoint resumes like a classifier's."""
    x, t = linear_data(256, 0)
    xt, tt = linear_data(64, 5)
    data = Dataset("plane", x, t, xt, tt, num_classes=1, x_val=xt[:32], t_val=tt[:32])
    logs = []
    net = regression_net(device)
    h = Trainer(net, Adam(lr=0.01), data, epochs=12, batch_size=32, progress=False,
                log=logs.append).fit()
    # 5 epochs, saved; resumed from the checkpoint (model rebuilt from its config) to 12
    first = Trainer(regression_net(device), Adam(lr=0.01), data, epochs=5, batch_size=32,
                    progress=False, out_dir=str(tmp_path / "a"), log=lambda *a: None)
    first.fit()
    opt = Adam(lr=0.01)
    again, meta = load_checkpoint(tmp_path / "a" / "checkpoint.npz", device=device, optimizer=opt)
    assert type(again.loss_layer) is MeanSquaredError
    second = Trainer(again, opt, data, epochs=12, batch_size=32, progress=False, log=lambda *a: None)
    second.restore(meta)
    np.testing.assert_allclose(second.fit()["test_loss"], h["test_loss"], rtol=1e-9)
    assert len(h["train_loss"]) == len(h["test_loss"]) == len(h["val_loss"]) == 12
    assert h["train_acc"] == h["test_acc"] == h["running_acc"] == [] and "val_acc" not in h
    assert h["test_loss"][0] > 5 * h["test_loss"][-1] and h["test_loss"][-1] < 0.02
    # the recorded test loss is the loss layer's mean over the test set
    xd, td = device.asarray(xt, "float64"), device.asarray(tt, "float64")
    assert h["test_loss"][-1] == pytest.approx(float(device.to_numpy(net.loss(xd, td))), rel=1e-9)
    assert "test loss" in logs[-1] and "acc" not in logs[-1]
