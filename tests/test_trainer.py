import numpy as np
import pytest

import dualnet as dn
from dualnet.backend import Device
from dualnet.data import load_dataset
from dualnet.trainer import Trainer


@pytest.mark.parametrize("spec", ["cpu", "sim"])
def test_one_host_read_per_logging_interval(spec, monkeypatch):
    """Training steps read nothing back but the losses and running accuracy, once per interval."""
    data = load_dataset("digits")
    dev = dn.get_device(spec)
    net = dn.SimpleConvNet((1, 8, 8), filter_num=4, filter_size=3, pad=1, hidden_size=16, device=dev)
    tr = Trainer(net, dn.Adam(0.003), data, epochs=1, batch_size=100, log_every=5, progress=False,
                 log=lambda *_: None)
    reads, moves = [], []
    real_to_numpy, real_asarray = Device.to_numpy, Device.asarray
    monkeypatch.setattr(Device, "to_numpy", lambda self, a: reads.append(1) or real_to_numpy(self, a))
    monkeypatch.setattr(Device, "asarray", lambda self, a, dtype=None: moves.append(type(a).__name__)
                        or real_asarray(self, a, dtype))
    tr.fit()
    steps = 15  # ceil(1497 / 100)
    intervals = 3
    # per interval: the stacked losses and the correct-count; per epoch: train and test accuracy
    assert len(reads) == 2 * intervals + 2
    assert len(tr.iter_loss) == steps and tr.step == steps
    # no host array is moved to the device during the epoch (the sim device draws its
    # shuffle on the host: one permutation per epoch, its stand-in for a device RNG)
    assert moves == ([] if spec == "cpu" else ["ndarray"])


def test_same_seed_same_run():
    data = load_dataset("digits")
    losses = []
    for _ in range(2):
        net = dn.build_model("mlp", (1, 8, 8), 10, hidden_sizes=[32], dropout=0.2, seed=4)
        tr = Trainer(net, dn.SGD(0.1), data, epochs=2, batch_size=64, progress=False, seed=4, log=lambda *_: None)
        tr.fit()
        losses.append(tr.iter_loss)
    np.testing.assert_array_equal(losses[0], losses[1])
