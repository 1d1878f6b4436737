"""Run under ``mpiexec -n K`` (or alone, for the one-process reference): train SimpleConvNet on
the digits for some epochs with the Trainer and save every rank's final weights.

Usage: python tests/dist_train.py OUT_DIR [--dtype float32] [--epochs 1] [--batch-size 100]
           [--device cpu] [--timeout 30] [--kill-rank R --kill-step S] [--signal-rank R --signal-step S]
           [--stop-rank R --stop-step S]

Writes OUT_DIR/run (the Trainer's run directory: rank 0's checkpoint) and
OUT_DIR/weights-<size>-<rank>.npz (np.savez: no pickle).  ``--kill-step S`` makes rank R kill
itself with SIGKILL at its S-th optimizer update; ``--signal-step S`` makes it send itself
SIGTERM there; ``--stop-step S`` makes it stop itself with SIGSTOP (a hung rank).
"""
import argparse
import os
import signal
import sys

import numpy as np

from dualnet.data import load_dataset
from dualnet.distributed import init
from dualnet.models import SimpleConvNet
from dualnet.optimizers import Adam
from dualnet.training import Interrupted, Trainer


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-step", type=int, default=-1)
    ap.add_argument("--signal-rank", type=int, default=-1)
    ap.add_argument("--signal-step", type=int, default=-1)
    ap.add_argument("--stop-rank", type=int, default=-1)
    ap.add_argument("--stop-step", type=int, default=-1)
    a = ap.parse_args(argv)
    comm = init(a.device, timeout=a.timeout)
    dev = comm.device
    data = load_dataset("digits")
    net = SimpleConvNet((1, 8, 8), filter_size=3, pad=1, device=dev, dtype=a.dtype, seed=0)
    opt = Adam(0.003)
    if comm.rank in (a.kill_rank, a.signal_rank, a.stop_rank):
        update, calls = opt.update, [0]

        def hooked(params, grads, reduce=None):
            calls[0] += 1
            if comm.rank == a.kill_rank and calls[0] == a.kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if comm.rank == a.signal_rank and calls[0] == a.signal_step:
                os.kill(os.getpid(), signal.SIGTERM)
            if comm.rank == a.stop_rank and calls[0] == a.stop_step:
                os.kill(os.getpid(), signal.SIGSTOP)
            return update(params, grads, reduce=reduce)
        opt.update = hooked
    tr = Trainer(net, opt, data, epochs=a.epochs, batch_size=a.batch_size, out_dir=os.path.join(a.out, "run"),
                 progress=False, seed=0, comm=comm, log=print)
    code = 0
    try:
        tr.fit()
    except Interrupted as e:
        print(f"rank {comm.rank}: interrupted by {e.signal_name} at step {tr.step}: {e.checkpoint}", flush=True)
        code = e.exit_code
    np.savez(os.path.join(a.out, f"weights-{comm.size}-{comm.rank}.npz"),
             **{k: dev.to_numpy(v) for k, v in net.params.items()})
    if comm.is_root:
        print(f"test accuracy {tr.history['test_acc'][-1] if tr.history['test_acc'] else None} "
              f"steps {tr.step}", flush=True)
    comm.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
