"""Run under ``mpiexec -n K``: checks the collectives of dualnet.distributed on one device.

Usage: mpiexec -n K python tests/dist_ops.py DEVICE   (prints "ok rank R" on success)
"""
import sys

import numpy as np

from dualnet.data import Dataset
from dualnet.distributed import SelfComm, init
from dualnet.models import Sequential
from dualnet.layers import Affine, BatchNormalization, MeanSquaredError, ReLU
from dualnet.optimizers import Adam
from dualnet.training import Trainer


def main(spec):
    comm = init(spec, timeout=30)
    dev, r, K = comm.device, comm.rank, comm.size
    assert comm.distributed and K >= 2 and 0 <= r < K and comm.local_size == K, comm.describe()
    xp = dev.xp
    # weighted mean: sum over ranks of w_r * x_r
    x = dev.asarray(np.arange(6.0) + 10 * r, "float64")
    w = (r + 1) / sum(range(1, K + 1))
    got = dev.to_numpy(comm.allreduce_mean(x, w))
    want = sum((q + 1) / sum(range(1, K + 1)) * (np.arange(6.0) + 10 * q) for q in range(K))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # plain mean
    y = dev.asarray(np.full(3, float(r)), "float32")
    np.testing.assert_allclose(dev.to_numpy(comm.allreduce_mean(y)), np.full(3, (K - 1) / 2), rtol=1e-6)
    # host agreement
    assert comm.allreduce_host([r, 1.0]) == [K * (K - 1) / 2, float(K)]
    assert comm.allreduce_host([r], "max") == [K - 1.0] and comm.allreduce_host([r], "min") == [0.0]
    assert comm.agree_signal(15 if r == K - 1 else None) == 15
    assert comm.agree_signal(None) is None
    assert comm.allgather_host([r, 2 * r]) == [[q, 2.0 * q] for q in range(K)]
    # shards cover 0..n-1 once
    for n in (0, 1, K - 1, 7, 100, 97):
        parts = comm.allgather_host(list(comm.shard(n)))
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    # state: rank 0's weights, buffers and optimizer state reach everyone
    net = Sequential([Affine(4, 5), BatchNormalization(5), ReLU(), Affine(5, 3)], input_shape=(4,),
                     device=dev, dtype="float64", seed=100 + r)
    opt = Adam(0.01)
    xb = dev.asarray(np.random.default_rng(r).standard_normal((8, 4)), "float64")
    tb = dev.asarray(np.arange(8) % 3)
    net.loss(xb, tb, train=True)
    net.backward()
    opt.update(net.params, net.grads)        # rank-specific state
    comm.sync_state(net, opt)
    flat = np.concatenate([dev.to_numpy(v).ravel() for v in net.params.values()] +
                          [dev.to_numpy(v).ravel() for v in net.buffers.values()] +
                          [dev.to_numpy(v).ravel() for v in opt.state_dict()[1].values()])
    everyone = comm.allgather_host(flat.tolist())
    assert all(np.array_equal(everyone[0], e) for e in everyone), "state differs after sync_state"
    # buffers are averaged
    for b in net.buffers.values():
        b[...] = dev.asarray(np.full(tuple(b.shape), float(r)), "float64")
    comm.average_buffers(net)
    for b in net.buffers.values():
        np.testing.assert_allclose(dev.to_numpy(b), (K - 1) / 2, rtol=1e-12)
    # sharded count equals the whole count
    xs = dev.asarray(np.random.default_rng(0).standard_normal((37, 4)), "float64")
    ts = dev.asarray(np.arange(37) % 3)
    whole = int(dev.to_numpy(net.count_correct(xs, ts)))
    assert comm.count(net, xs, ts, 10) == whole
    regression_trains_like_one_process(comm, dev)
    comm.barrier()
    print(f"ok rank {r} {comm.reduce_backend}", flush=True)
    comm.close()


def regression_trains_like_one_process(comm, dev):
    """A regression model is scored by its mean loss, each rank summing its shard: the ranks end
    with the weights and losses of one process (batches of 30 of 100 samples: a last one of 10)."""
    rng = np.random.default_rng(3)
    x, xt = rng.uniform(-1, 1, (100, 2)), rng.uniform(-1, 1, (41, 2))
    data = Dataset("plane", x, x @ [[3.0], [2.0]], xt, xt @ [[3.0], [2.0]], num_classes=1)
    runs = []
    for c in (comm, SelfComm(dev)):
        net = Sequential([Affine(2, 8), ReLU(), Affine(8, 1)], (2,), loss=MeanSquaredError(), device=dev,
                         dtype="float64", seed=0)
        tr = Trainer(net, Adam(0.01), data, epochs=2, batch_size=30, progress=False, log=lambda *a: None,
                     comm=c, eval_batch=7)
        runs.append((tr.fit(), tr.iter_loss, {k: dev.to_numpy(v) for k, v in net.params.items()}))
    (h2, loss2, w2), (h1, loss1, w1) = runs
    np.testing.assert_allclose(loss2, loss1, rtol=1e-10)
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(h2[k], h1[k], rtol=1e-10)
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-10, atol=1e-12)


if __name__ == "__main__":
    main(sys.argv[1])
