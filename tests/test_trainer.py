import numpy as np
import pytest

import dualnet as dn
from dualnet.backend import Device
from dualnet.data import load_dataset
from dualnet.training import BatchSource, Trainer, train_step, train_steps


def test_one_host_read_per_logging_interval(device, monkeypatch):
    """Training steps read nothing back but one array per logging interval (the losses and the
    correct count together); no host array is moved to the device during the epoch."""
    data = load_dataset("digits")
    net = dn.SimpleConvNet((1, 8, 8), filter_num=4, filter_size=3, pad=1, hidden_size=16, device=device)
    tr = Trainer(net, dn.Adam(0.003), data, epochs=1, batch_size=100, log_every=5, progress=False,
                 log=lambda *_: None)
    assert tr.on_device
    reads, moves = [], []
    cls = type(device)
    real_to_numpy, real_asarray = cls.to_numpy, cls.asarray
    monkeypatch.setattr(cls, "to_numpy", lambda self, a: reads.append(1) or real_to_numpy(self, a))
    monkeypatch.setattr(cls, "asarray", lambda self, a, dtype=None: moves.append(type(a).__name__)
                        or real_asarray(self, a, dtype))
    tr.fit()
    steps = 15  # ceil(1497 / 100)
    intervals = 3
    # per interval: one read; per epoch: train and test accuracy
    assert len(reads) == intervals + 2
    assert len(tr.iter_loss) == steps and tr.step == steps
    # the simulated device draws its shuffle on the host and moves it (one permutation per epoch,
    # its stand-in for a device generator); a real device moves nothing
    assert moves == ([] if device.is_host else ["ndarray"] if type(device).__name__ == "SimDevice" else [])


def test_same_seed_same_run(device):
    data = load_dataset("digits")
    losses = []
    for _ in range(2):
        net = dn.build_model("mlp", (1, 8, 8), 10, hidden_sizes=[32], dropout=0.2, seed=4, device=device)
        tr = Trainer(net, dn.SGD(0.1), data, epochs=2, batch_size=64, progress=False, seed=4, log=lambda *_: None)
        tr.fit()
        losses.append(tr.iter_loss)
    np.testing.assert_array_equal(losses[0], losses[1])


def test_batch_source_on_device_and_batch_by_batch_agree(device):
    """The same seed gives the same batches whether the data lives on the device or is moved
    batch by batch; every sample is seen once per epoch."""
    rng = np.random.default_rng(0)
    x, t = rng.random((23, 3)).astype(np.float32), np.arange(23)
    a = BatchSource(x, t, device, "float32", 5, on_device=True)
    b = BatchSource(x, t, device, "float32", 5, on_device=False)
    ea, eb = list(a.epoch(7)), list(b.epoch(7))
    assert len(ea) == len(eb) == a.steps_per_epoch == 5
    for (xa, ta), (xb, tb) in zip(ea, eb):
        device.check(xa)
        device.check(xb)
        np.testing.assert_array_equal(device.to_numpy(xa), device.to_numpy(xb))
        np.testing.assert_array_equal(device.to_numpy(ta), device.to_numpy(tb))
    seen = np.concatenate([device.to_numpy(tb) for _, tb in ea])
    assert sorted(seen.tolist()) == list(range(23))
    # resuming at batch 3 gives the same last two batches
    tail = list(a.epoch(7, start=3))
    np.testing.assert_array_equal(device.to_numpy(tail[0][1]), device.to_numpy(ea[3][1]))


def test_train_step_keeps_loss_and_count_on_the_device(device):
    net = dn.MultiLayerNet(6, [8], 3, device=device, seed=0)
    rng = np.random.default_rng(1)
    x = device.asarray(rng.standard_normal((10, 6)), "float32")
    t = device.asarray(rng.integers(0, 3, 10))
    loss, correct = train_step(net, dn.SGD(0.1), x, t)
    device.check(loss)
    device.check(correct)
    assert 0 <= int(device.to_numpy(correct)) <= 10 and float(device.to_numpy(loss)) > 0


def test_train_steps_descends(device):
    data = load_dataset("digits", flatten=True)
    net = dn.MultiLayerNet(64, [32], 10, device=device, seed=0)
    src = BatchSource(data.x_train, data.t_train, device, "float32", 100)
    losses = train_steps(net, dn.Adam(0.01), src, 40, seed=0)
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_empty_training_set_is_a_clear_error(device):
    with pytest.raises(dn.ShapeError, match="empty"):
        BatchSource(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), device, "float32", 10)


def test_augmented_batches_are_reproducible_resumable_and_shard_invariant(device):
    """Shifts and flips drawn per (seed, batch): the same images again, from any starting batch and
    for any slice of a batch; evaluation batches are never augmented."""
    rng = np.random.default_rng(0)
    x, t = rng.random((23, 1, 6, 6)).astype(np.float32), np.arange(23)
    src = BatchSource(x, t, device, "float32", 5, augment=(1, True))
    plain = BatchSource(x, t, device, "float32", 5)
    a = [device.to_numpy(xb) for xb, _ in src.epoch(3)]
    b = [device.to_numpy(xb) for xb, _ in src.epoch(3)]
    raw = [device.to_numpy(xb) for xb, _ in plain.epoch(3)]
    for u, v, r in zip(a, b, raw):
        np.testing.assert_array_equal(u, v)
        assert u.shape == r.shape
    assert any(not np.array_equal(u, r) for u, r in zip(a, raw))  # something moved
    np.testing.assert_array_equal(device.to_numpy(next(iter(src.epoch(3, start=2)))[0]), a[2])
    halves = [device.to_numpy(next(iter(src.epoch(3, shard=lambda n, k=k: (k * (n // 2), n if k else n // 2))))[0])
              for k in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), a[0])
    np.testing.assert_array_equal(device.to_numpy(src.head(5)[0]), x[:5])  # evaluation: untouched
    with pytest.raises(dn.ShapeError, match="flatten=False"):
        BatchSource(x.reshape(23, -1), t, device, "float32", 5, augment=(1, False))


def test_augment_flips_only_mirror_symmetric_data(monkeypatch):
    seen = []
    real = BatchSource.__init__

    def spy(self, *a, **kw):
        seen.append(kw.get("augment"))
        real(self, *a, **kw)
    monkeypatch.setattr(BatchSource, "__init__", spy)
    from dualnet.cli import main
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        assert main(["train", "--augment", "--epochs", "1", "--no-progress", "--no-plots", "--device", "cpu",
                     "--out", d]) == 0
    assert (1, ()) in seen  # 8x8 digits: 1-pixel shifts, no class to mirror
    assert load_dataset("digits").mirror_symmetric is False


def test_augment_mirrors_only_the_classes_allowed(device):
    """A per-class flip list mirrors images of those classes only (about half of them, drawn
    on the device), never the others; Fashion-MNIST's shoes are not on its list."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 1, 6, 6)).astype(np.float32)
    t = np.arange(400) % 4
    src = BatchSource(x, t, device, "float32", 100, num_classes=4, augment=(0, (1, 3)))
    flat, flat_mirrored = x.reshape(400, -1), x[:, :, :, ::-1].reshape(400, -1)
    mirrored = {k: 0 for k in range(4)}
    for xb, tb in src.epoch(5):
        for img, k in zip(device.to_numpy(xb).reshape(100, -1), device.to_numpy(tb)):
            i = np.flatnonzero((flat == img).all(axis=1))
            j = np.flatnonzero((flat_mirrored == img).all(axis=1))
            assert len(i) + len(j) == 1 and t[np.concatenate([i, j])[0]] == k
            mirrored[int(k)] += len(j)
    assert mirrored[0] == mirrored[2] == 0
    assert 30 < mirrored[1] < 70 and 30 < mirrored[3] < 70, mirrored
    from dualnet.data import MIRROR_CLASSES
    assert not set(MIRROR_CLASSES["fashion-mnist"]) & {5, 7, 9}   # sandal, sneaker, ankle boot
    with pytest.raises(dn.ConfigError, match="mirror classes"):
        BatchSource(x, t, device, "float32", 100, num_classes=4, augment=(0, (4,)))


def test_interval_reader_reads_once_per_interval_and_names_the_diverged_step(device):
    """Steps are added on the device (one array operation each: the running count) and read
    back in one transfer per interval; losses are each rank's share of the batch mean summed
    over the ranks, counts plain sums; a NaN is reported at its own global step."""
    from dualnet.backend import CountingDevice
    from dualnet.distributed import SelfComm
    from dualnet.training import IntervalReader

    class TwoLikeRanks(SelfComm):   # a stand-in for two ranks that sent the same values
        def allreduce_host(self, values, op="sum"):
            return [2 * float(v) for v in values]

    dev = CountingDevice(device)
    reads = []
    real = dev.to_numpy
    dev.to_numpy = lambda a: reads.append(1) or real(a)
    values = [2.5, 1.25, 0.75, float("nan"), 0.5]
    steps = [(dev.asarray(np.array(v), "float64"), dev.asarray(np.array(k + 1))) for k, v in enumerate(values)]
    reader = IntervalReader(dev, TwoLikeRanks(dev), every=3, correct=4, seen=50)
    for k, (loss, c) in enumerate(steps[:3]):
        dev.ops = 0
        reader.add(loss, c, 0.5, 10)
        assert dev.ops == (1 if k else 0) and reads == []   # nothing read, one addition per step
    assert reader.full and reader.pending == 3
    assert reader.read(step=13, epoch=1) == values[:3] and len(reads) == 1
    assert (reader.correct, reader.seen, reader.pending) == (4 + 2 * 6, 50 + 30, 0)
    for loss, c in steps[3:]:
        reader.add(loss, c, 0.5, 10)
    assert not reader.full
    with pytest.raises(dn.TrainingDiverged, match="at step 14 .epoch 2."):
        reader.read(step=15, epoch=1)
    assert len(reads) == 2
