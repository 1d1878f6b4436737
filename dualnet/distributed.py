"""Data-parallel training over MPI: ``mpiexec -n K dualnet train ...``.

Each of the K processes (ranks) holds a whole copy of the model on its own device and
trains on its own slice of every global batch; one all-reduce per step averages the
gradients, so every rank applies the same update and the copies stay identical.

How a step is shared
    Every rank draws the same shuffle from the shared seed and takes its contiguous slice
    of each global batch (``--batch-size`` is the global batch): rank r of K gets samples
    ``[n*r//K, n*(r+1)//K)`` of a batch of n, so a last partial batch and a batch size that
    K does not divide are split as evenly as they can be, and a rank may get none.  Each rank's
    loss is the mean over its slice; it scales its gradients by ``local_n / n`` and the
    all-reduce sums them, which is the mean over the whole batch: the single-process update,
    up to the order of the floating-point sums.  The model's backward leaves all gradients
    in one flat buffer, which the optimizer hands to the all-reduce
    (:meth:`dualnet.optimizers.Optimizer.update`'s ``reduce`` hook), so a step is ONE
    all-reduce of one buffer.

Where the all-reduce runs
    On a CUDA device, on the GPU through NCCL (the device's :meth:`~dualnet.backend.Device.
    collectives`; MPI only hands NCCL its unique id), queued on the stream with no host wait.
    On the CPU (and the simulated device), from host memory through MPI's ``Allreduce``, by an
    object with NCCL's interface (on the CPU the host array is the gradient buffer itself: no
    copy), so :class:`MPIComm` has one path for both.  A CUDA-aware MPI could
    take the CuPy buffer directly (mpi4py passes device pointers through
    ``__cuda_array_interface__``), which would drop NCCL and the unique-id exchange but
    make the reduce a host-blocking call; dualnet does not rely on one.

What is and is not synchronised
    Synchronised: the initial weights, buffers and optimizer state (broadcast from rank 0
    when training starts; every rank still reads ``--resume``, so on several hosts the
    checkpoint must be on a shared file system), every step's gradients, the
    stop decision after a signal, the losses and running accuracy that are logged, and the
    batch-norm running statistics (averaged over the ranks at the end of every epoch, before
    evaluation and the checkpoint).  Not synchronised: dropout masks (each rank draws its own,
    seeded by rank: :meth:`Communicator.rank_seed`) and batch-norm's batch statistics in
    training, which are each rank's own slice's (there is no ``--sync-bn``: with small
    slices, batch norm sees noisier statistics than a single process would).

Who writes
    Rank 0 alone writes checkpoints, metrics, plots and logs (:attr:`Communicator.is_root`).

When a rank dies or hangs
    Every collective, and MPI's own start-up (MPI_Init, which waits for every rank to start),
    runs under a watchdog: when no answer comes within ``timeout`` seconds
    (``DUALNET_DIST_TIMEOUT``, default 300), the waiting rank prints one line naming itself
    and what it waited for, and exits with :data:`EXIT_RANK_LOST` (4) without touching any
    file (checkpoints are written atomically: the last good one stays whole).  MPICH's
    ``mpiexec`` also ends the whole job as soon as one rank dies (``-disable-auto-cleanup``
    leaves that to the watchdog).  A bad ``DUALNET_DIST_TIMEOUT`` is reported by rank 0 alone.
    An MPI error raised by a collective becomes a
    :class:`RankLost` with the same message.  A Python error on one rank (a checkpoint that
    cannot be written, a bug) is printed by that rank, which then aborts the job
    (:meth:`Communicator.abort`) so the others do not wait for it.

Signals
    ``mpiexec`` forwards Ctrl-C and SIGTERM to every rank; a signal that reaches one rank
    only is shared at the end of the step (one tiny host all-reduce per step), so all ranks
    stop after the same step, rank 0 saves ``interrupted.npz`` and every rank exits with
    128 + the signal.
"""
from __future__ import annotations

import array
import contextlib
import ctypes
import json
import os
import socket
import sys
import threading
import time
import zlib

from .backend import CPUDevice, CUDADevice, Device, cuda_device, cuda_status, get_device
from .errors import DeviceError, DualnetError
from .seeds import rank_seed

__all__ = ["Communicator", "SelfComm", "MPIComm", "init", "launch_info", "DistributedError", "RankLost",
           "EXIT_RANK_LOST", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0
EXIT_RANK_LOST = 4

# Environment variables that launchers set in every process they start: (rank, size) names.
_LAUNCHERS = (("PMI_RANK", "PMI_SIZE", "MPICH/Intel MPI (Hydra)"),
              ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI"),
              ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MVAPICH2"),
              ("PMIX_RANK", None, "PMIx"))


class DistributedError(DualnetError, RuntimeError):
    """Data-parallel training cannot start: no mpi4py under mpiexec, an mpiexec of another MPI
    than mpi4py's, a device that ranks cannot share.  The message says which and the fix."""


class RankLost(DistributedError):
    """Another rank died, hangs, or MPI failed during a collective; this rank stops."""

    exit_code = EXIT_RANK_LOST


def launch_info(env=None):
    """``(rank, size, launcher)`` when this process was started by an MPI launcher, else None."""
    env = os.environ if env is None else env
    for rank_var, size_var, name in _LAUNCHERS:
        if rank_var in env:
            try:
                rank = int(env[rank_var])
                size = int(env[size_var]) if size_var and size_var in env else None
            except ValueError:
                continue
            return rank, size, name
    return None


def _timeout(timeout):
    """Seconds a collective may wait: ``timeout``, else ``DUALNET_DIST_TIMEOUT``, else 300."""
    source = "timeout"
    if timeout is None:
        raw = os.environ.get("DUALNET_DIST_TIMEOUT")
        if raw is None:
            return DEFAULT_TIMEOUT
        source = f"DUALNET_DIST_TIMEOUT={raw!r}"
        try:
            timeout = float(raw)
        except ValueError:
            raise DistributedError(f"{source} is not a number of seconds; set it to a number > 0, "
                                   f"e.g. 300") from None
    timeout = float(timeout)
    if not timeout > 0:
        raise DistributedError(f"{source}: the collective timeout must be a number of seconds > 0, "
                               f"got {timeout:g}; set it to e.g. 300")
    return timeout


# --------------------------------------------------------------------------- the interface
class Communicator:
    """What the training loop asks of the processes that train together.

    Attributes
    ----------
    rank, size : int          this process and how many there are
    local_rank, local_size : int   the same among the processes on this host
    device : Device or None   this rank's device (set by :func:`init` or :meth:`setup`)
    """

    rank, size, local_rank, local_size = 0, 1, 0, 1
    device = None
    backend = "self"

    @property
    def is_root(self):
        """True on rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1

    def describe(self):
        return f"rank {self.rank} of {self.size}"

    def setup(self, device):
        """Use ``device`` for this rank's collectives; returns it."""
        self.device = get_device(device)
        return self.device

    # -- sharding ------------------------------------------------------------------
    def shard(self, n):
        """This rank's contiguous part ``(start, stop)`` of ``n`` items (sizes differ by <= 1)."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def weight(self, local_n, global_n):
        """This rank's share of a batch of ``global_n`` samples of which it holds ``local_n``: its
        weight in the batch's mean (1 for a single process)."""
        return local_n / global_n

    def rank_seed(self, seed):
        """A per-rank seed (dropout masks): ``seed`` itself on rank 0, so one process draws
        what a single-process run draws."""
        return rank_seed(seed, self.rank)

    # -- the gradient all-reduce -------------------------------------------------------
    def reduce_hook(self, local_n, global_n):
        """The ``reduce`` argument of :meth:`Optimizer.update` for a step in which this rank
        trained on ``local_n`` of the ``global_n`` samples (None for a single process)."""
        w = self.weight(local_n, global_n)
        return lambda flat: self.allreduce_mean(flat, w)

    def allreduce_mean(self, flat, weight=None):
        """The mean of ``flat`` (one 1-D device array) over the ranks, weighted by each rank's
        ``weight`` (the weights sum to 1; default 1/size): sum over ranks of weight * flat.

        ONE all-reduce; may work in place on ``flat`` (pass a buffer the caller owns: the
        optimizer passes the model's flat gradient buffer, made afresh by every backward)."""
        return flat

    # -- host-side agreement (small, once per step or per logging interval) -------------
    def allreduce_host(self, values, op="sum"):
        """Element-wise ``op`` ("sum", "max", "min") of a list of floats over the ranks."""
        return [float(v) for v in values]

    def agree_signal(self, signum):
        """The signal any rank received (the largest number when several), or None: every rank
        calls this after each step, so all stop after the same one."""
        return signum

    def shard_sum(self, n, part, what):
        """The sum over the ranks of ``part(start, stop)``, a host number each rank computes on its
        shard of ``range(n)`` (0 for an empty shard): the one way counts and losses are totalled,
        for one process and K.  ``what`` names the work for the watchdog."""
        lo, hi = self.shard(n)
        with self.guard(what):
            mine = part(lo, hi) if hi > lo else 0
        return self.allreduce_host([mine])[0]

    def count(self, model, x, t, batch_size=1000):
        """Correct predictions of ``model`` on device arrays ``x``, ``t``, summed over the ranks'
        shards (an int, the same on every rank)."""
        def part(lo, hi):  # host sync: one read of this rank's count
            return int(model.device.to_numpy(model.count_correct(x[lo:hi, ...], t[lo:hi, ...], batch_size)))
        return int(round(self.shard_sum(x.shape[0], part, "counting correct predictions")))

    # -- state --------------------------------------------------------------------
    def sync_state(self, model, optimizer=None):
        """Give every rank rank 0's parameters, buffers and optimizer state."""

    def average_buffers(self, model):
        """Average the model's buffers (batch-norm running statistics) over the ranks."""

    # -- liveness ------------------------------------------------------------------
    def guard(self, what):
        """A context in which waiting longer than the timeout ends this rank (see the module
        docstring); wrap device syncs that wait on collectives in flight."""
        return contextlib.nullcontext()

    def allgather_host(self, values):
        """Every rank's list of floats (all of the same length), by rank: ``[[...], [...], ...]``."""
        return [[float(v) for v in values]]

    def check_same(self, settings):
        """Require every rank to run with the same ``settings`` (a dict of JSON-able values: the
        run's configuration, the data's fingerprint); else raise :class:`DistributedError`,
        the same on every rank, naming the first setting that differs."""
        keys = sorted(settings)
        mine = [float(zlib.crc32(json.dumps([k, settings[k]], sort_keys=True, default=str).encode()))
                for k in keys]
        n = [float(len(mine))]
        if self.allreduce_host(n, "min") != self.allreduce_host(n, "max"):
            err = DistributedError(f"the ranks compare {len(mine)} settings on rank {self.rank} but another "
                                   f"number on another rank: every rank must run the same dualnet")
            err.agreed = True
            raise err
        rows = self.allgather_host(mine)
        for i, k in enumerate(keys):
            other = [r for r, row in enumerate(rows) if row[i] != rows[0][i]]
            if other:
                err = DistributedError(
                    f"the ranks were started with different settings: {k} differs between rank 0 and "
                    f"rank{'s' if len(other) > 1 else ''} {', '.join(map(str, other))}"
                    f"{f' (this rank has {settings[k]!r})' if self.rank in other or self.rank == 0 else ''}; "
                    f"start every rank with the same flags, environment and data")
                err.agreed = True  # every rank raises it: rank 0 alone prints it, no rank aborts
                raise err

    def barrier(self, what="waiting for the other ranks"):
        pass

    def idle_barrier(self, what="waiting for the other ranks"):
        """A barrier that sleeps instead of spinning (MPI's blocking calls keep a core busy):
        for ranks that wait while another works alone."""

    def abort(self, code=1):
        """End every rank of the job (after this rank has said why)."""
        sys.exit(code)

    def close(self):
        pass

    def __repr__(self):
        return f"{type(self).__name__}({self.describe()})"


class SelfComm(Communicator):
    """One process: every collective is the identity, so training code has a single path (its
    shard is the whole range, its weights 1, its sums the values themselves)."""

    def __init__(self, device=None):
        if device is not None:
            self.setup(device)

    def reduce_hook(self, local_n, global_n):
        return None   # nothing to reduce: the optimizer skips the hook


# --------------------------------------------------------------------------- MPI
class _Watchdog:
    """One daemon thread that ends the process when a guarded wait outlives ``timeout``.

    ``arm(what)`` / ``disarm()`` are two attribute writes, cheap enough for every step; the
    thread looks every ``timeout / 20`` seconds (at most 1 s)."""

    def __init__(self, timeout, expire):
        self.timeout, self._expire = float(timeout), expire
        self._deadline, self._what = 0.0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dualnet-collective-watchdog", daemon=True)
        self._thread.start()

    def arm(self, what):
        self._deadline = time.monotonic() + self.timeout  # written before _what: see _run
        self._what = what

    def disarm(self):
        self._what = None

    def _run(self):
        period = min(1.0, max(0.02, self.timeout / 20))
        while not self._stop.wait(period):
            what = self._what
            if what is not None and time.monotonic() > self._deadline:
                self._expire(what)

    def close(self):
        self._stop.set()


def _mpi_module(watch):
    """mpi4py's ``MPI`` module, with MPI initialised while ``watch`` is armed.

    mpi4py initialises MPI inside ``from mpi4py import MPI``, holding the GIL, so a watchdog
    thread could not run while MPI_Init waits for a rank that never comes.  Here the import
    does not initialise; MPI_Init_thread is called through ctypes, which releases the GIL."""
    try:
        import mpi4py
    except ImportError as e:
        raise DistributedError(f"data-parallel training needs mpi4py ({e}); pip install 'dualnet[mpi]' "
                               f"and launch with the mpiexec it installs") from None
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = True   # still finalised at exit, as when mpi4py initialises
    from mpi4py import MPI
    if MPI.Is_initialized():
        return MPI
    watch.arm("starting MPI (waiting for every rank to start)")
    try:
        try:
            init_thread = ctypes.CDLL(MPI.__file__).MPI_Init_thread
        except (OSError, AttributeError):  # no symbol to call: mpi4py's own call (unguarded)
            init_thread = None
        if init_thread is None:
            MPI.Init_thread()
        else:
            provided = ctypes.c_int(0)
            err = init_thread(None, None, ctypes.c_int(MPI.THREAD_MULTIPLE), ctypes.byref(provided))
            if err != 0:
                raise DistributedError(f"MPI_Init_thread failed (MPI error code {err}); check that "
                                       f"mpiexec belongs to mpi4py's MPI")
    finally:
        watch.disarm()
    for c in (MPI.COMM_SELF, MPI.COMM_WORLD):  # errors raise MPI.Exception, as mpi4py's default
        c.Set_errhandler(MPI.ERRORS_RETURN)
    return MPI


class MPIComm(Communicator):
    """The ranks of an MPI job (mpi4py), with NCCL on CUDA devices.

    Parameters
    ----------
    mpi_comm : mpi4py communicator, default ``MPI.COMM_WORLD``
    timeout : float, optional
        Seconds a collective may wait for the other ranks (default ``DUALNET_DIST_TIMEOUT`` or
        300).
    """

    backend = "mpi"

    def __init__(self, mpi_comm=None, timeout=None):
        self.timeout = _timeout(timeout)
        # Until MPI answers, the launcher's variables say who this is (for the watchdog's line).
        info = launch_info()
        self.rank, self.size = (info[0], info[1] or 0) if info else (0, 0)
        self.host = socket.gethostname()
        self._coll = None          # the collectives on device arrays (set up with the device)
        self.reduce_backend = None
        self.allreduce_calls, self.allreduce_s, self.allreduce_bytes = 0, 0.0, 0
        # The watchdog exists before MPI does: a rank lost before or during start-up (MPI_Init,
        # the split by host) ends this one like a rank lost in training.
        self._watch = _Watchdog(self.timeout, self._expired)
        try:
            self._start(mpi_comm)
        except BaseException:
            self._watch.close()
            raise

    def _start(self, mpi_comm):
        MPI = self._MPI = _mpi_module(self._watch)
        self._comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        node = self._call("starting MPI (grouping the ranks by host)", self._comm.Split_type,
                          MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.host = MPI.Get_processor_name() or self.host

    def describe(self):
        return (f"rank {self.rank} of {self.size} (local rank {self.local_rank} of {self.local_size} "
                f"on {self.host})")

    # -- failure ---------------------------------------------------------------------
    def _lost_message(self, what):
        return (f"rank {self.rank} of {self.size} ({self.host}): no answer from the other ranks for "
                f"{self.timeout:g} s while {what}: another rank has died or hangs; stopping this rank "
                f"(checkpoints are written atomically: the last good one is kept; "
                f"DUALNET_DIST_TIMEOUT sets the wait)")

    def _expired(self, what):
        # Runs in the watchdog thread while the main thread is stuck inside MPI or on the device:
        # say why, and leave without running any Python cleanup (which could wait on MPI again).
        try:
            sys.stderr.write(f"dualnet: error: {self._lost_message(what)}\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_RANK_LOST)

    @contextlib.contextmanager
    def guard(self, what):
        self._watch.arm(what)
        try:
            yield
        except self._MPI.Exception as e:
            raise RankLost(f"rank {self.rank} of {self.size} ({self.host}): MPI failed while {what}: "
                           f"{e.Get_error_string()}; another rank has probably died") from None
        finally:
            self._watch.disarm()

    def _call(self, what, fn, *args, **kw):
        with self.guard(what):
            return fn(*args, **kw)

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(int(code))

    def close(self):
        if self._coll is not None:
            self._coll.close()
            self._coll = None
        self._watch.close()

    # -- device ------------------------------------------------------------------------
    def setup(self, device):
        """Use ``device`` for this rank's collectives: NCCL when the device offers it, else MPI
        from host memory.  Collective: every rank calls it."""
        device = get_device(device)
        if self.device is not None and device == self.device:
            return device
        if self._coll is not None:
            self._coll.close()
        self.device, self._coll = device, None
        h = 1.0 if device.is_host else 0.0
        most, least = self.allreduce_host([h, -h], "max")
        if most != -least:
            raise DistributedError(f"rank {self.rank} trains on {device.spec} but other ranks use another kind "
                                   f"of device; give every rank the same --device")
        with self.guard("connecting the devices (NCCL)"):
            coll = device.collectives(self.rank, self.size, self._bcast_bytes)
        if coll is None:  # the device has no collectives of its own: MPI, through host memory
            self._coll = _HostCollectives(self._MPI, self._comm, self.rank, device)
            self.reduce_backend = "MPI from host memory"
        else:
            self._coll, self.reduce_backend = coll, f"{coll.name} on the device"
        return device

    def _bcast_bytes(self, data):
        MPI = self._MPI
        n = array.array("q", [len(data) if self.rank == 0 else 0])
        self._call("broadcasting a connection id", self._comm.Bcast, [n, MPI.INT64_T], root=0)
        buf = bytearray(data) if self.rank == 0 else bytearray(n[0])
        self._call("broadcasting a connection id", self._comm.Bcast, [buf, MPI.BYTE], root=0)
        return bytes(buf)

    # -- collectives -----------------------------------------------------------------
    def allreduce_mean(self, flat, weight=None):
        w = 1.0 / self.size if weight is None else float(weight)
        t0 = time.perf_counter()
        if w != 1.0:
            flat *= w
        self._call(f"all-reducing the gradients ({self._coll.name})", self._coll.allreduce_sum_, flat)
        self.allreduce_calls += 1
        self.allreduce_s += time.perf_counter() - t0
        self.allreduce_bytes += int(getattr(flat, "nbytes", 0))
        return flat

    def allreduce_host(self, values, op="sum"):
        MPI = self._MPI
        buf = array.array("d", [float(v) for v in values])
        if not buf:
            return []
        mop = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        self._call("exchanging losses and flags", self._comm.Allreduce, MPI.IN_PLACE, [buf, MPI.DOUBLE], op=mop)
        return list(buf)

    def agree_signal(self, signum):
        got = int(self.allreduce_host([float(signum or 0)], "max")[0])
        return got or None

    def allgather_host(self, values):
        MPI = self._MPI
        mine = array.array("d", [float(v) for v in values])
        out = array.array("d", [0.0] * (len(mine) * self.size))
        self._call("gathering results", self._comm.Allgather, [mine, MPI.DOUBLE], [out, MPI.DOUBLE])
        k = len(mine)
        return [list(out[r * k:(r + 1) * k]) for r in range(self.size)]

    def barrier(self, what="waiting for the other ranks"):
        self._call(what, self._comm.Barrier)

    def idle_barrier(self, what="waiting for the other ranks"):
        with self.guard(what):
            req = self._comm.Ibarrier()
            while not req.Test():
                time.sleep(0.002)

    # -- state ---------------------------------------------------------------------------
    def _arrays(self, model, optimizer=None):
        out = [("param " + k, v) for k, v in model.params.items()]
        out += [("buffer " + k, v) for k, v in model.buffers.items()]
        if optimizer is not None:
            out += [("optimizer " + k, v) for k, v in sorted(optimizer.state_dict()[1].items())]
        return out

    def sync_state(self, model, optimizer=None):
        """Broadcast rank 0's parameters, buffers and optimizer state (and step count) to every
        rank, after checking that all ranks hold the same set of arrays."""
        arrays = self._arrays(model, optimizer)
        sig = [float(len(arrays)), float(sum(int(a.size) for _, a in arrays))]
        lo, hi = self.allreduce_host(sig, "min"), self.allreduce_host(sig, "max")
        if lo != hi:
            raise DistributedError(f"rank {self.rank} holds {int(sig[0])} arrays of {int(sig[1])} numbers but "
                                   f"another rank holds a different model or optimizer state; give every rank "
                                   f"the same flags (and the same --resume checkpoint)")
        for name, a in arrays:
            self._call(f"broadcasting {name}", self._coll.bcast_, a, 0)
        if optimizer is not None:
            optimizer.t = int(self._bcast_scalar(optimizer.t))
        with self.guard(f"broadcasting rank 0's state ({self._coll.name})"):
            model.device.synchronize()

    def _bcast_scalar(self, v):
        buf = array.array("d", [float(v)])
        self._call("broadcasting the step count", self._comm.Bcast, [buf, self._MPI.DOUBLE], root=0)
        return buf[0]

    def average_buffers(self, model):
        for name, b in model.buffers.items():
            b *= 1.0 / self.size
            self._call(f"averaging buffer {name}", self._coll.allreduce_sum_, b)


class _HostCollectives:
    """MPI's collectives on the device arrays of a device without its own (the CPU, the simulated
    device), with the interface of the device collectives (NCCL's: :meth:`dualnet.backend.Device.
    collectives`): in place on a device array, through host memory.  The array is copied to the
    host, MPI works on the copy, the result is copied back; on the CPU the host array is the
    device array itself, so nothing is copied.  ``MPI``, ``comm``: mpi4py's module and communicator."""

    name = "MPI"

    def __init__(self, MPI, comm, rank, device):
        self._MPI, self._comm, self._rank, self._device = MPI, comm, rank, device

    def _back(self, a, h):
        if h is not a:   # a copy (not on the CPU): write the result back into the device array
            a[...] = self._device.asarray(h)
        return a

    def allreduce_sum_(self, a):
        h = self._device.to_numpy(a)
        self._comm.Allreduce(self._MPI.IN_PLACE, h, op=self._MPI.SUM)
        return self._back(a, h)

    def bcast_(self, a, root=0):
        h = self._device.to_numpy(a)
        self._comm.Bcast(h, root=int(root))
        return a if self._rank == root else self._back(a, h)

    def close(self):
        pass


# --------------------------------------------------------------------------- entry point
def _limit_host_threads(comm, device):
    """K processes on one host each start a BLAS pool of all cores: give each its share,
    unless the user chose (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS)."""
    if not device.is_host or comm.local_size < 2:
        return None
    if any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
        return None
    n = max(1, (os.cpu_count() or 1) // comm.local_size)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
    except Exception:  # threadpoolctl cannot see this BLAS: leave it
        return None
    return n


def init(device="auto", timeout=None, env=None):
    """The communicator of this process, with its device set up.

    Under an MPI launcher (``mpiexec -n K``: detected from ``PMI_RANK`` / ``OMPI_COMM_WORLD_RANK``
    and the like) with K > 1: an :class:`MPIComm` whose device is picked per rank by
    :func:`rank_device` (``cuda:<local rank>`` for ``cuda`` and ``auto`` when
    there are GPUs enough, the CPU otherwise).  Otherwise a :class:`SelfComm` on
    ``get_device(device)``.  mpi4py is imported only under a launcher.

    Raises
    ------
    DistributedError
        mpi4py missing under a launcher, or an ``mpiexec`` that belongs to another MPI than
        the one mpi4py loaded (each process would train alone).
    """
    info = launch_info(env)
    if info is None or info[1] == 1:
        return SelfComm(device)
    rank, size, launcher = info
    try:
        timeout = _timeout(timeout)
    except DistributedError as e:
        e.quiet = rank != 0  # every rank reads the same setting: rank 0 alone says what is wrong
        raise
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise DistributedError(f"this process was started by an MPI launcher ({launcher}, rank {rank}"
                               f"{'' if size is None else f' of {size}'}) but mpi4py is not installed; "
                               f"pip install 'dualnet[mpi]' (mpi4py and MPICH) and launch with its "
                               f"{os.path.join(os.path.dirname(sys.executable), 'mpiexec')}") from None
    comm = MPIComm(timeout=timeout)
    if comm.size == 1 and (size or 1) > 1:
        from mpi4py import MPI
        lib = MPI.Get_library_version().strip().splitlines()[0]
        raise DistributedError(f"{launcher}'s launcher started {size} processes but mpi4py's MPI ({lib}) sees "
                               f"this one alone: the mpiexec does not belong to that MPI; launch with "
                               f"{os.path.join(os.path.dirname(sys.executable), 'mpiexec')}")
    if comm.size == 1:
        comm.close()
        return SelfComm(device)
    try:
        dev = rank_device(device, comm.local_rank, comm.local_size)
    except DeviceError as e:
        raise DeviceError(f"rank {comm.rank} ({comm.host}): {e}", param=e.param) from None
    comm.threads = _limit_host_threads(comm, dev)
    comm.setup(dev)
    return comm


# --------------------------------------------------------------------------- one device per process
def rank_device(spec, local_rank, local_size):
    """The device of one process of a data-parallel job: ``local_rank`` of the ``local_size``
    processes on this host.

    ``"cuda"`` gives each process its own GPU, ``cuda:<local_rank>`` (a DeviceError when the
    host has fewer GPUs than processes); ``"auto"`` does the same when CUDA is usable and
    there are enough GPUs, else the CPU (``reason`` says why); ``"cuda:N"`` is refused when
    several processes share the host (they would share GPU N, which NCCL forbids); the CPU
    and the simulated devices are the same for every process.
    """
    if isinstance(spec, Device):
        return spec
    s = str(spec).strip().lower()
    kind, _, num = s.partition(":")
    local_rank, local_size = int(local_rank), int(local_size)
    if kind not in ("cuda", "auto") or local_size < 1:
        return get_device(spec)
    if num:
        if local_size > 1:
            raise DeviceError(f"device {spec!r} would put all {local_size} processes of this host on one GPU; "
                              f"pass --device cuda to give each process its own (cuda:<local rank>)",
                              param="device")
        return get_device(spec)
    # Each rank probes only the GPU it will use: its local rank's.
    st = cuda_status(index=local_rank)
    n = len(st["devices"])
    if kind == "auto":
        if local_size > n and n:
            return CPUDevice(reason=f"auto: using the CPU because {local_size} processes run on this host "
                                    f"but it has {n} GPU(s); launch at most {n} per host to use them")
        if not st["available"]:
            return CPUDevice(reason=f"auto: using the CPU because {st['reason']}")
        return CUDADevice(local_rank, reason=f"auto: GPU {local_rank} of this host for local rank {local_rank}")
    if n and local_size > n:
        raise DeviceError(f"{local_size} processes run on this host but it has {n} GPU(s) "
                          f"(cuda:0..cuda:{n - 1}); launch at most {n} per host (mpiexec -ppn {n}) or "
                          f"use --device cpu", param="device")
    return cuda_device(spec, local_rank)
