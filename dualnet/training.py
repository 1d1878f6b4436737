"""Training: one step, one batch source, and the loops built on them.

- :func:`train_step` is the only place a training step is written: forward, backward,
  update; the loss and the number of correct predictions stay on the device.
- :class:`BatchSource` serves shuffled mini-batches of one dataset on one device: the
  whole set lives on the device when it fits in half its free memory (batches are then
  gathered there, with no host transfer), else each batch is moved as it is used.
- :class:`Trainer` runs epochs of steps with one host sync per logging interval;
  :func:`train_steps` runs a fixed number of steps (the book's iteration-based
  experiments).  Both, the bench and the scripts use the two pieces above.

Every epoch draws its shuffle from a generator seeded by (seed, epoch), and every step
re-seeds the dropout masks from (seed, epoch, step), so the position alone (epoch, steps
done in it) determines what comes next: a run interrupted anywhere and resumed from its
checkpoint gives the same weights, losses and history as an uninterrupted one.

SIGINT (Ctrl-C) and SIGTERM during :meth:`Trainer.fit` are deferred to the end of the
current step (or of the checkpoint being written): the trainer then saves
``interrupted.npz`` with its exact position and raises :class:`Interrupted` (a
KeyboardInterrupt).  Further signals during that save are ignored, so the file is whole.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time

from . import functions as F
from .checkpoint import save_checkpoint
from .checks import check_labels
from .errors import CheckpointError, ConfigError, ShapeError, TrainingDiverged
from .io import RunDir, WriteError
from .distributed import SelfComm
from .models import count_correct
from .seeds import SHUFFLE, batch_seed, epoch_seed, step_seed

__all__ = ["train_step", "BatchSource", "train_steps", "Trainer", "TrainingDiverged", "epoch_seed",
           "step_seed", "Interrupted"]


def train_step(model, optimizer, x, t, reduce=None):
    """One step of mini-batch training on the model's device.

    ``reduce`` goes to :meth:`dualnet.optimizers.Optimizer.update`: data-parallel training
    (:mod:`dualnet.distributed`) all-reduces the flat gradients there.

    Returns
    -------
    loss : 0-d device array   the batch's mean loss (with the weight-decay penalty)
    correct : 0-d device array   how many of the batch's predictions were right (training mode)

    Nothing is read back to the host: the caller decides when to sync.
    """
    loss = model.loss(x, t, train=True)
    model.backward()
    optimizer.update(model.params, model.grads, reduce=reduce)
    return loss, count_correct(model.scores, t)


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (SIGINT or SIGTERM) after its position was saved.

    ``signum`` is the signal; ``checkpoint`` the file saved (None without a run directory);
    ``exit_code`` is 128 + signum (130 for SIGINT, 143 for SIGTERM), as a shell reports it.
    """

    def __init__(self, signum, checkpoint=None, position=None):
        self.signum = int(signum)
        self.checkpoint, self.position = checkpoint, position
        super().__init__(self.signal_name)

    @property
    def signal_name(self):
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self):
        return 128 + self.signum


class _DeferSignals:
    """Within the block, SIGINT and SIGTERM only note themselves (``signum``: the first one);
    the trainer looks at the note where stopping loses nothing.  Only in the main thread, and
    a signal the process ignores stays ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._old = {}

    def _note(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                old = signal.getsignal(s)
                if old is signal.SIG_IGN:
                    continue
                signal.signal(s, self._note)
                self._old[s] = old
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._old = {}


class BatchSource:
    """Shuffled mini-batches of ``(x, t)`` (host arrays) on ``device``.

    Parameters
    ----------
    x : host array (N, ...);  t : host array (N,) or (N, K)
    device : Device
    dtype : {"float32", "float64"}   dtype of ``x`` on the device
    batch_size : int
    on_device : bool, optional
        Keep the whole set on the device; by default when it takes less than half of the
        device's free memory.
    num_classes : int, optional
        When given, the labels are checked once, here on the host, to lie in
        ``0..num_classes-1`` (a label out of range would silently add nothing to the loss;
        checking it per step on the device would cost a host sync per step).
    what : str
        The split's name in error messages.
    """

    def __init__(self, x, t, device, dtype, batch_size, on_device=None, num_classes=None,
                 what="training set", augment=None):
        if x.shape[0] != t.shape[0]:
            raise ShapeError(f"x has {x.shape[0]} samples but t has {t.shape[0]}")
        if x.shape[0] == 0:
            raise ShapeError(f"the {what} is empty: x has shape "
                             f"{tuple(x.shape)}; pass at least one sample")
        # host labels: the range check is free here, once (a per-step check on a device would sync)
        check_labels(t, num_classes, x.shape[0], f"{what} labels", check_range=hasattr(t.dtype, "kind"))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}",
                              param="batch_size")
        self.x_host, self.t_host, self.device, self.dtype = x, t, device, dtype
        self.augment, self._aug_rng = None, None
        if augment:
            shift, flip = augment
            if x.ndim != 4:
                raise ShapeError(f"augmentation shifts and flips images (N, C, H, W), but the {what} "
                                 f"has shape {tuple(x.shape)}; load it with flatten=False", param="augment")
            if isinstance(flip, bool) or not flip:
                flip = bool(flip)
            else:   # the classes that may be mirrored: a 0/1 flag per class, looked up per image
                classes = [int(c) for c in flip]
                K = int(num_classes) if num_classes is not None else max(classes, default=-1) + 1
                if t.ndim != 1 or any(not 0 <= c < K for c in classes):
                    raise ConfigError(f"mirror classes {classes} need integer labels 0..{K - 1}",
                                      param="augment")
                with device.bind():
                    flip = device.asarray([k in classes for k in range(K)])
            self.augment = (int(shift), flip)
        self.on_device = BatchSource.fits(device, dtype, (x, t)) if on_device is None else bool(on_device)
        if self.on_device:
            with device.bind():
                self.x = device.asarray(x, dtype)
                self.t = device.asarray(t)

    @staticmethod
    def fits(device, dtype, *splits):
        """Whether the host splits ``(x, t), ...`` together, ``x`` in ``dtype``, take less than half
        of ``device``'s free memory (what :class:`Trainer` asks before placing its three sets)."""
        itemsize = 8 if dtype == "float64" else 4
        nbytes = sum(x.size * itemsize + t.nbytes for x, t in splits)
        return nbytes < 0.5 * device.free_memory()

    @property
    def num_samples(self):
        return self.x_host.shape[0]

    @property
    def steps_per_epoch(self):
        return math.ceil(self.num_samples / self.batch_size)

    def head(self, n):
        """The first ``n`` samples as device arrays (for a training-accuracy estimate)."""
        if self.on_device:
            return self.x[:n, ...], self.t[:n, ...]
        return self.device.asarray(self.x_host[:n], self.dtype), self.device.asarray(self.t_host[:n])

    def order(self, rng):
        """A shuffle of the samples drawn with ``rng`` (on the device when the data is there)."""
        perm = rng.permutation(self.num_samples)
        return perm if self.on_device else self.device.to_numpy(perm)

    def batch(self, idx):
        """The samples at ``idx`` (a slice of :meth:`order`'s result) as device arrays."""
        if self.on_device:
            xp = self.device.xp
            return xp.take(self.x, idx, axis=0), xp.take(self.t, idx, axis=0)
        return self.device.asarray(self.x_host[idx], self.dtype), self.device.asarray(self.t_host[idx])

    def epoch(self, seed, start=0, shard=None):
        """The batches of one epoch in the order drawn by ``seed``, from batch ``start`` on
        (the last one may be smaller).  ``shard(n) -> (lo, hi)``: only that part of each batch
        of n (a data-parallel rank's slice; it may be empty)."""
        perm = self.order(self.device.rng(seed))
        B, N = self.batch_size, self.num_samples
        for i in range(start, self.steps_per_epoch):
            a, b = i * B, min((i + 1) * B, N)
            lo, hi = shard(b - a) if shard is not None else (0, b - a)
            xb, tb = self.batch(perm[a + lo:a + hi])
            if self.augment is not None:
                xb = self._augmented(xb, tb, batch_seed(seed, i), b - a, lo)
            yield xb, tb

    def _augmented(self, xb, tb, seed, n, lo):
        """``xb`` shifted by up to ``shift`` pixels (and mirrored, where allowed), drawn on the device
        from a generator seeded by (epoch seed, batch): the same images for the same position,
        whichever rank holds which slice of the batch and whether or not the run was resumed.
        ``flip`` is True (any image), False, or a per-class flag array indexed by the labels ``tb``."""
        shift, flip = self.augment
        xp = self.device.xp
        if self._aug_rng is None:   # one generator, re-seeded per batch (cheap; a new one is not on CuPy)
            self._aug_rng = self.device.rng(seed)
        else:
            self._aug_rng.reseed(seed)
        u = self._aug_rng.uniform((3, n), xb.dtype)[:, lo:lo + xb.shape[0]]
        k = 2 * shift + 1
        dy = xp.astype(xp.floor(u[0, :] * k), xp.int64) - shift
        dx = xp.astype(xp.floor(u[1, :] * k), xp.int64) - shift
        if flip is True:
            mirror = u[2, :] < 0.5
        elif flip is False:
            mirror = u[2, :] < 0
        else:
            mirror = (u[2, :] < 0.5) & xp.take(flip, tb, axis=0)
        return F.shift_flip(xb, dy, dx, mirror, shift)

    def stream(self, seed, on_epoch=None):
        """Full batches forever: each pass over the data draws a new shuffle from one generator
        seeded by ``seed``; an incomplete last batch is dropped.  ``on_epoch(k)`` is called
        before each pass k >= 1."""
        rng = self.device.rng(seed)
        B, N = self.batch_size, self.num_samples
        if B > N:
            raise ConfigError(f"batch_size {B} is larger than the {N} samples", param="batch_size")
        k = 0
        while True:
            perm = self.order(rng)
            if k and on_epoch is not None:
                on_epoch(k)
            for s in range(0, N - B + 1, B):
                yield self.batch(perm[s:s + B])
            k += 1


def train_steps(model, optimizer, source, iters, seed=0, schedule=None):
    """Train for ``iters`` mini-batches of ``source`` (a :class:`BatchSource`); returns the
    per-step losses as floats, read back once at the end.

    ``schedule(k)`` (e.g. :class:`dualnet.optimizers.LRSchedule`) sets the learning rate
    before each further pass k over the data.
    """
    dev = model.device
    on_epoch = None if schedule is None else (lambda k: setattr(optimizer, "lr", schedule(k)))
    losses = []
    with dev.bind():
        batches = source.stream(seed, on_epoch)
        for _ in range(iters):
            xb, tb = next(batches)
            losses.append(train_step(model, optimizer, xb, tb)[0])
        return dev.to_numpy(dev.xp.stack(losses)).tolist() if losses else []


class Trainer:
    """Train ``model`` with ``optimizer`` on a :class:`dualnet.data.Dataset`.

    Parameters
    ----------
    schedule : callable epoch -> lr, optional
        Learning rate per 0-based epoch (:class:`dualnet.optimizers.LRSchedule`).
    out_dir : str, optional
        Where ``checkpoint.npz`` is written atomically after every epoch.  :meth:`fit` holds
        the folder (:class:`dualnet.io.RunDir`: checked writable, locked against a second run).
    log_every : int
        Steps between host syncs (progress-bar updates and the NaN check).
    eval_train_samples : int
        Train accuracy per epoch is measured in eval mode on this many training samples.
    comm : dualnet.distributed.Communicator, optional
        Data-parallel training (``mpiexec -n K``): every rank trains on its slice of each
        batch (``batch_size`` is the global batch), one all-reduce per step averages the
        gradients, evaluation is sharded, and rank 0 alone logs and writes the run directory.
        Default: one process (:class:`dualnet.distributed.SelfComm`).
    augment : (shift, flip), optional
        Training batches shifted by up to ``shift`` pixels and mirrored left-right at random
        (the book's chapter-8 augmentation): ``flip`` is True (any image), False, or the classes
        that may be mirrored (:attr:`dualnet.data.Dataset.mirror_classes`).  Drawn on the device
        per (seed, epoch, batch), so a resumed run sees the same images; never for evaluation.

    A checkpoint's ``meta`` records the position: ``epoch`` (epochs completed), ``epoch_step``
    (steps done in the next one), ``step`` (steps in all), the history, every step's loss, and
    for a position inside an epoch the running-accuracy counts so far (``partial``).
    :meth:`restore` continues from exactly there.
    """

    def __init__(self, model, optimizer, data, epochs=1, batch_size=100, schedule=None, out_dir=None,
                 log_every=50, progress=True, seed=0, eval_batch=1000, eval_train_samples=10000,
                 config=None, log=print, comm=None, augment=None):
        self.model, self.opt, self.data = model, optimizer, data
        # A regression model (its loss has no classes) is scored by its mean loss, not accuracy:
        # the history then has train_loss / test_loss / val_loss where a classifier has *_acc.
        self.regression = not getattr(getattr(model, "loss_layer", None), "classifies", True)
        self.epochs = int(epochs)
        self.schedule, self.out_dir = schedule, out_dir
        self.log_every, self.progress, self.seed = max(1, int(log_every)), progress, int(seed)
        self.eval_batch, self.eval_train_samples = int(eval_batch), int(eval_train_samples)
        self.config = config or {}
        self.log = log
        self.comm = comm if comm is not None else SelfComm(model.device)
        if self.comm.device != model.device:
            self.comm.setup(model.device)
        if self.regression and self.comm.distributed:
            raise ConfigError("data-parallel training scores a model by counting correct predictions "
                              "over the ranks, which a regression model has none of; train it in one "
                              "process (without mpiexec)")
        if not self.comm.is_root:  # rank 0 alone logs and shows progress
            self.log, self.progress = (lambda *a, **k: None), False
        self.history = {"epoch": [], "train_acc": [], "test_acc": [], "running_acc": [], "lr": [],
                        "epoch_time_s": [], "images_per_s": []}
        self.iter_loss = []
        self.start_epoch = 0
        self.start_step = 0          # steps already done in epoch ``start_epoch``
        self._partial = (0, 0, 0.0)  # (correct, seen, seconds) of those steps
        self.step = 0
        self.interrupted_checkpoint = None
        self._signals = _DeferSignals()
        self.device = model.device
        classes = model.output_shape[-1] if getattr(model, "output_shape", None) else None
        splits = [(data.x_train, data.t_train), (data.x_test, data.t_test)]
        if getattr(data, "x_val", None) is not None:
            splits.append((data.x_val, data.t_val))
        fits = BatchSource.fits(self.device, model.dtype, *splits)  # all three sets count
        self.train = BatchSource(data.x_train, data.t_train, self.device, model.dtype, batch_size,
                                 on_device=fits, num_classes=classes, what="training set", augment=augment)
        self._warm = False
        self.test = BatchSource(data.x_test, data.t_test, self.device, model.dtype, self.eval_batch,
                                on_device=self.train.on_device, num_classes=classes, what="test set")
        self.val = None  # a validation split carved from the training data: scored every epoch
        if getattr(data, "x_val", None) is not None:
            self.val = BatchSource(data.x_val, data.t_val, self.device, model.dtype, self.eval_batch,
                                   on_device=self.train.on_device, num_classes=classes,
                                   what="validation set")
        self._dropout = any(hasattr(layer, "set_seed") for layer in getattr(model, "layers", ()))
        if not self.train.on_device:
            self.log(f"the dataset does not fit on {self.device.spec}: moving it batch by batch")

    @property
    def on_device(self):
        return self.train.on_device

    def evaluate(self, source=None):
        """Accuracy on the test set (or on a :class:`BatchSource`), in batches; for a regression
        model its mean loss instead (:meth:`mean_loss`)."""
        src = source or self.test
        if self.regression:
            return self.mean_loss(src)
        if self.comm.distributed:
            return self._count(src, src.num_samples) / src.num_samples
        if src.on_device:
            return self.model.accuracy(src.x, src.t, self.eval_batch)
        correct = 0
        for s in range(0, src.num_samples, self.eval_batch):
            xb, tb = src.batch(slice(s, min(s + self.eval_batch, src.num_samples)))
            correct += int(self.device.to_numpy(self.model.count_correct(xb, tb, self.eval_batch)))
        return correct / src.num_samples

    def mean_loss(self, src, n=None):
        """Mean loss (without the weight-decay penalty) over the first ``n`` samples of ``src``, in
        batches, in inference mode: one host read."""
        n = src.num_samples if n is None else min(int(n), src.num_samples)
        m, total = self.model, None
        with self.device.bind():
            for s in range(0, n, self.eval_batch):
                e = min(s + self.eval_batch, n)
                xb, tb = (src.x[s:e, ...], src.t[s:e, ...]) if src.on_device else src.batch(slice(s, e))
                part = m.loss_layer.forward(m.predict(xb), tb) * (e - s)
                total = part if total is None else total + part
            return float(self.device.to_numpy(total)) / n

    def _count(self, src, n):
        """Correct predictions on the first ``n`` samples of ``src``: each rank counts its shard,
        the counts are summed over the ranks."""
        if src.on_device:
            return self.comm.count(self.model, src.x[:n, ...], src.t[:n, ...], self.eval_batch)
        lo, hi = self.comm.shard(n)
        correct = 0
        with self.comm.guard("counting correct predictions"):
            for s in range(lo, hi, self.eval_batch):
                xb, tb = src.batch(slice(s, min(s + self.eval_batch, hi)))
                correct += int(self.device.to_numpy(self.model.count_correct(xb, tb, self.eval_batch)))
        return int(round(self.comm.allreduce_host([correct])[0]))

    def _shared_step(self, xb, tb, n):
        """This rank's part of a data-parallel step: ``xb`` is its slice of a batch of ``n``;
        its gradients count ``len(xb) / n`` in the all-reduce.  A rank with no samples in this
        batch still joins the all-reduce, with zero gradients, and applies the same update."""
        m, opt, dev = self.model, self.opt, self.device
        k = xb.shape[0]
        reduce = self.comm.reduce_hook(k, n)
        if k:
            return train_step(m, opt, xb, tb, reduce=reduce)
        xp = dev.xp
        opt.update(m.params, {key: xp.zeros_like(p) for key, p in m.params.items()}, reduce=reduce)
        return (xp.zeros((), dtype=dev.dtype(m.dtype), device=dev.array_device),
                xp.zeros((), dtype=dev.dtype("int64"), device=dev.array_device))

    # -- resume ------------------------------------------------------------------------
    def restore(self, meta, path="checkpoint"):
        """Continue from checkpoint metadata written by this trainer: at the same step of the
        same epoch, with the same history, losses and running-accuracy counts."""
        def bad(why):
            return CheckpointError(f"{path}: {why}; it cannot be resumed by this run "
                                   f"(resume from the run's checkpoint.npz instead)")
        epoch, k = int(meta.get("epoch", 0)), int(meta.get("epoch_step", 0))
        step = int(meta.get("step", 0))
        if not 0 <= k < self.train.steps_per_epoch:
            raise bad(f"its position (step {k} of epoch {epoch + 1}) is outside an epoch of "
                      f"{self.train.steps_per_epoch} steps")
        iter_loss = list(meta.get("iter_loss", []))
        if len(iter_loss) != step:
            raise bad(f"it records {len(iter_loss)} losses for {step} steps")
        self.start_epoch, self.start_step, self.step = epoch, k, step
        self.history = meta.get("history", self.history)
        self.iter_loss = iter_loss
        p = meta.get("partial") or {}
        self._partial = (int(p.get("correct", 0)), int(p.get("seen", 0)), float(p.get("elapsed_s", 0.0)))

    def _save(self, epoch, name="checkpoint.npz", extra=None):
        if not self.out_dir:
            return None
        path = os.path.join(self.out_dir, name)
        if not self.comm.is_root:  # rank 0 alone writes; the others name its file
            return path
        meta = {"epoch": epoch, "epoch_step": 0, "step": self.step, "history": self.history,
                "iter_loss": self.iter_loss, "config": self.config, **(extra or {})}
        try:
            save_checkpoint(path, self.model, self.opt, meta)
        except WriteError as e:
            last = os.path.join(self.out_dir, "checkpoint.npz")
            kept = (f"; the last good checkpoint {last} is intact" if os.path.exists(last)
                    else "; no checkpoint was written yet")
            raise WriteError(f"{e}{kept} (out_dir={self.out_dir!r})", param="out_dir",
                             errno_=e.errno_) from None
        return path

    def _interrupt(self, epoch, k, partial=None):
        """Save the position (``k`` steps done in ``epoch``) to interrupted.npz and stop."""
        extra = {"epoch_step": k, "signal": Interrupted(self._signals.signum).signal_name}
        if partial is not None:
            correct, seen, elapsed = partial
            extra["partial"] = {"correct": correct, "seen": seen, "elapsed_s": elapsed}
        path = self._save(epoch, "interrupted.npz", extra)
        self.interrupted_checkpoint = path
        raise Interrupted(self._signals.signum, path, {"epoch": epoch, "epoch_step": k, "step": self.step})

    # -- the loop --------------------------------------------------------------------
    def fit(self):
        """Train from the restored position (``start_epoch``, ``start_step``) to ``epochs``;
        returns the history dict.

        Raises
        ------
        TrainingDiverged
            On a NaN/inf loss; the last epoch's checkpoint is left untouched.
        Interrupted
            (a KeyboardInterrupt) on SIGINT or SIGTERM, after the current step (or checkpoint
            write) has finished and ``interrupted.npz`` holds the exact position.
        dualnet.io.WriteError
            When a checkpoint cannot be written; the last good one is kept.
        """
        run_dir = RunDir(self.out_dir) if self.out_dir and self.comm.is_root else None
        try:
            if run_dir is not None:
                run_dir.acquire()
            with self._signals, self.device.bind():
                self.comm.sync_state(self.model, self.opt)  # rank 0's weights everywhere (no-op alone)
                for epoch in range(self.start_epoch, self.epochs):
                    self._epoch(epoch, self.start_step if epoch == self.start_epoch else 0)
                    self._save(epoch + 1)
                    self.start_epoch, self.start_step, self._partial = epoch + 1, 0, (0, 0, 0.0)
                    if self.out_dir and self.comm.is_root:  # the epoch's checkpoint supersedes an interrupted position
                        stale = os.path.join(self.out_dir, "interrupted.npz")
                        if os.path.exists(stale):
                            try:
                                os.unlink(stale)
                            except OSError:
                                pass
                    got = self.comm.agree_signal(self._signals.signum)  # a signal on any rank
                    if got is not None:
                        self._signals.signum = got
                        self._interrupt(epoch + 1, 0)
        finally:
            if run_dir is not None:
                run_dir.release()
            self._signals.signum = None
        return self.history

    def _warm_up(self):
        """Once per process, before the first timed epoch: one forward and backward pass on a
        batch, so the epoch's time leaves out what a GPU does once (compiling kernels, growing
        the memory pool).  Nothing is updated: the batch-norm running statistics are put back."""
        if self._warm:
            return
        self._warm = True
        m, src = self.model, self.train
        xb, tb = src.head(min(src.batch_size, src.num_samples))
        saved = [(v, self.device.xp.asarray(v, copy=True)) for v in m.buffers.values()]
        m.loss(xb, tb, train=True)
        m.backward()
        for v, old in saved:
            v[...] = old
        self.device.synchronize()

    def _epoch(self, epoch, start=0):
        m, opt, dev, src = self.model, self.opt, self.device, self.train
        xp = dev.xp
        if self.schedule is not None:
            opt.lr = self.schedule(epoch)
        N, steps = src.num_samples, src.steps_per_epoch
        sig = self._signals

        bar = None
        if self.progress:
            from tqdm import tqdm
            # disable=None: no bar frames in redirected output; the bar moves every step (no sync:
            # only its numbers wait for the interval's one read) and ends at 100%
            bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                       leave=False, dynamic_ncols=True, disable=None)
        pending, correct, seen = [], None, 0
        correct_total, seen_total, elapsed0 = self._partial if start else (0, 0, 0.0)
        self._warm_up()
        dev.synchronize()
        t0 = time.perf_counter()
        comm = self.comm
        shard, weights = (comm.shard if comm.distributed else None), []
        for i, (xb, tb) in enumerate(src.epoch(epoch_seed(self.seed, epoch, SHUFFLE), start=start, shard=shard),
                                     start=start):
            if self._dropout:
                m.set_seed(comm.rank_seed(step_seed(self.seed, epoch, i)))  # masks differ per rank
            if shard is None:
                loss, c = train_step(m, opt, xb, tb)
                seen += xb.shape[0]
            else:
                n = min((i + 1) * src.batch_size, N) - i * src.batch_size
                loss, c = self._shared_step(xb, tb, n)
                weights.append(xb.shape[0] / n)
                seen += n
            self.step += 1
            pending.append(loss)
            correct = c if correct is None else correct + c
            got = comm.agree_signal(sig.signum)  # every rank stops after the same step
            if got is not None:
                sig.signum = got
            stop = got is not None and i < steps - 1
            if bar:
                bar.update(1)
            if len(pending) == self.log_every or i == steps - 1 or stop:
                # The one host sync of the interval: the losses and the correct count in one array.
                with comm.guard("reading the losses back from the device"):
                    vals = dev.to_numpy(xp.concat([xp.stack(pending),
                                                   xp.reshape(xp.astype(correct, pending[0].dtype), (1,))]))
                vals = vals.tolist()
                if shard is not None:  # the whole batch's losses and count: weighted sums over the ranks
                    vals = comm.allreduce_host([v * w for v, w in zip(vals[:-1], weights)] + vals[-1:])
                    weights = []
                n_correct = int(round(vals.pop()))
                first_step = self.step - len(pending) + 1
                for k, v in enumerate(vals):
                    if not math.isfinite(v):
                        if bar:
                            bar.close()
                        raise TrainingDiverged(first_step + k, epoch + 1, v)
                self.iter_loss.extend(vals)
                correct_total += n_correct
                seen_total += seen
                pending, seen, correct = [], 0, None
                if bar:
                    el = time.perf_counter() - t0
                    acc = {} if self.regression else {"acc": f"{correct_total / seen_total:.3f}"}
                    bar.set_postfix(loss=f"{vals[-1]:.4f}", **acc,
                                    img_s=f"{(seen_total - (self._partial[1] if start else 0)) / max(el, 1e-9):.0f}")
            if stop:
                if bar:
                    bar.close()
                self._interrupt(epoch, i + 1, (correct_total, seen_total,
                                               elapsed0 + time.perf_counter() - t0))
        dev.synchronize()
        elapsed = elapsed0 + time.perf_counter() - t0
        if bar:
            bar.close()
        comm.average_buffers(m)  # batch-norm running statistics: the mean over the ranks
        n_eval = min(self.eval_train_samples, N)
        if comm.distributed:
            train_acc = self._count(src, n_eval) / n_eval
        elif self.regression:
            train_acc = self.mean_loss(src, n_eval)
        else:
            xe, te = src.head(n_eval)
            train_acc = m.accuracy(xe, te, self.eval_batch)
        test_acc = self.evaluate()
        val_acc = self.evaluate(self.val) if self.val is not None else None
        h = self.history
        h["epoch"].append(epoch + 1)
        kind = "loss" if self.regression else "acc"
        h.setdefault(f"train_{kind}", []).append(train_acc)
        h.setdefault(f"test_{kind}", []).append(test_acc)
        if val_acc is not None:
            h.setdefault(f"val_{kind}", []).append(val_acc)
        if not self.regression:  # a regression step's "correct" count means nothing
            h["running_acc"].append(correct_total / max(1, seen_total))
        h["lr"].append(opt.lr)
        h["epoch_time_s"].append(elapsed)
        h["images_per_s"].append(N / max(elapsed, 1e-9))
        self.log(f"epoch {epoch + 1}/{self.epochs}: loss {self.iter_loss[-1]:.4f}  "
                 f"train {kind} {train_acc:.4f}  " + (f"val {kind} {val_acc:.4f}  " if val_acc is not None else "") +
                 f"test {kind} {test_acc:.4f}  "
                 f"({elapsed:.1f} s, {N / max(elapsed, 1e-9):,.0f} images/s, lr {opt.lr:.3g})")
