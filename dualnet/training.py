"""Training: one step, one batch source, and the loops built on them.

- :func:`train_step` is the only place a training step is written: forward, backward,
  update; the loss and the number of correct predictions stay on the device.
- :class:`BatchSource` serves shuffled mini-batches of one dataset on one device: the
  whole set lives on the device when it fits in half its free memory (batches are then
  gathered there, with no host transfer), else each batch is moved as it is used.
- :class:`Trainer` runs epochs of steps; :func:`train_steps` runs a fixed number of steps (the
  book's iteration-based experiments).  Both, the bench and the scripts use the two pieces above.

The trainer is three pieces composed by :meth:`Trainer.fit`:

- the run state (:class:`dualnet.runstate.RunState`): the position (epoch, steps done in it),
  the history and every step's loss, the checkpoint written after every epoch, the
  interrupted one, and resuming from either;
- the interval reader (:class:`IntervalReader`): the steps' losses and correct counts stay on
  the device until the logging interval ends, then ONE host sync reads them back, they are
  combined over the ranks and checked for NaN/inf;
- the progress view (:class:`Progress`): the progress bar and the printed lines.

The communicator (:mod:`dualnet.distributed`) decides the rest: each rank's slice of a batch,
its weight in the means and the sums of counts over the ranks.  One process is
:class:`~dualnet.distributed.SelfComm`, whose slice is the whole batch, weights 1 and sums the
values themselves, so one code path serves one process and K.

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
import time

from . import functions as F
from .checks import check_labels
from .errors import ConfigError, ShapeError, TrainingDiverged
from .distributed import SelfComm
from .models import count_correct
from .runstate import DeferredSignals, Interrupted, RunState
from .seeds import SHUFFLE, batch_seed, epoch_seed, step_seed

__all__ = ["train_step", "BatchSource", "train_steps", "Trainer", "IntervalReader", "Progress",
           "TrainingDiverged", "epoch_seed", "step_seed", "Interrupted"]


def train_step(model, optimizer, x, t, reduce=None, micro_batch="auto"):
    """One step of mini-batch training on the model's device.

    ``reduce`` goes to :meth:`dualnet.optimizers.Optimizer.update`: data-parallel training
    (:mod:`dualnet.distributed`) all-reduces the flat gradients there.  ``micro_batch``
    ("auto", a size, or None) may run the batch as cache-sized micro-batches with the same
    loss, gradients and update to rounding (:mod:`dualnet.microbatch`; "auto" does on the host).

    Returns
    -------
    loss : 0-d device array   the batch's mean loss (with the weight-decay penalty)
    correct : 0-d device array   how many of the batch's predictions were right (training mode)

    Nothing is read back to the host: the caller decides when to sync.
    """
    loss, grads = model.gradient(x, t, train=True, micro_batch=micro_batch)
    optimizer.update(model.params, grads, reduce=reduce)
    return loss, count_correct(model.scores, t)


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

    def batch_len(self, i):
        """The number of samples in batch ``i`` of an epoch (the last one may be smaller)."""
        return min((i + 1) * self.batch_size, self.num_samples) - i * self.batch_size

    def rows(self, start, stop):
        """Samples ``start:stop`` in their stored order as device arrays (views when the data
        is on the device): the evaluation batches."""
        if self.on_device:
            return self.x[start:stop, ...], self.t[start:stop, ...]
        return self.batch(slice(start, stop))

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


class IntervalReader:
    """The steps of one epoch between two host syncs.

    Each step's loss and correct count stay on the device (:meth:`add` reads nothing); at the
    end of a logging interval :meth:`read` brings them back in ONE transfer, combines them
    over the ranks (the communicator's weighted sums: one process gets its own values) and
    checks the losses for NaN/inf.

    Parameters
    ----------
    device : Device
    comm : dualnet.distributed.Communicator
    every : int
        Steps per interval: :attr:`full` after that many.
    correct, seen : int
        The epoch's running totals before the first step here (a resumed position).

    Attributes
    ----------
    correct, seen : int
        Correct predictions and samples of the epoch's steps read so far, whole batches over
        all ranks (the running accuracy).
    """

    def __init__(self, device, comm, every, correct=0, seen=0):
        self.device, self.comm, self.every = device, comm, int(every)
        self.correct, self.seen = int(correct), int(seen)
        self._reset()

    def _reset(self):
        self._losses, self._weights, self._count, self._seen = [], [], None, 0

    def add(self, loss, correct, weight, n):
        """One step: its loss and correct count (0-d device arrays) on this rank's slice, which
        is the share ``weight`` of the step's batch of ``n`` samples."""
        self._losses.append(loss)
        self._weights.append(weight)
        self._count = correct if self._count is None else self._count + correct
        self._seen += n

    @property
    def pending(self):
        return len(self._losses)

    @property
    def full(self):
        return self.pending >= self.every

    def read(self, step, epoch):
        """The pending steps' losses (floats, whole batches); ``step`` is the 1-based global
        number of the last of them and ``epoch`` the 0-based epoch, for the error.

        Raises :class:`TrainingDiverged` naming the first step whose loss is NaN or infinite."""
        xp, losses = self.device.xp, self._losses
        # host sync: the interval's losses and its correct count, in one array
        with self.comm.guard("reading the losses back from the device"):
            count = xp.reshape(xp.astype(self._count, losses[0].dtype), (1,))
            vals = self.device.to_numpy(xp.concat([xp.stack(losses), count])).tolist()
        # every rank's share of each batch's mean, summed: the whole batch's mean (and count)
        vals = self.comm.allreduce_host([v * w for v, w in zip(vals[:-1], self._weights)] + vals[-1:])
        n_correct = int(round(vals.pop()))
        first = step - len(vals) + 1
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                raise TrainingDiverged(first + k, epoch + 1, v)
        self.correct += n_correct
        self.seen += self._seen
        self._reset()
        return vals


class Progress:
    """What a run shows: one progress bar per epoch and one printed line per epoch.

    Parameters
    ----------
    enabled : bool
        Show the bar (tqdm; nothing in redirected output).
    log : callable
        Prints a line.
    epochs : int
        The run's number of epochs, for "epoch 3/10".
    regression : bool
        Scores are mean losses, not accuracies.
    """

    def __init__(self, enabled, log, epochs, regression=False):
        self.enabled, self.log, self.epochs, self.regression = enabled, log, int(epochs), regression
        self.kind = "loss" if regression else "acc"
        self._bar = None

    def start(self, epoch, steps, start=0, seen=0):
        """A bar for epoch ``epoch`` of ``steps`` steps, ``start`` (with ``seen`` samples) done."""
        self._seen0 = seen
        if self.enabled:
            from tqdm import tqdm
            # disable=None: no bar frames in redirected output; the bar moves every step (no sync:
            # only its numbers wait for the interval's one read) and ends at 100%
            self._bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                             leave=False, dynamic_ncols=True, disable=None)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def step(self):
        if self._bar is not None:
            self._bar.update(1)

    def interval(self, loss, correct, seen, elapsed):
        """The numbers of the interval just read: last loss, running accuracy ``correct / seen``,
        images per second since the bar started."""
        if self._bar is not None:
            acc = {} if self.regression else {"acc": f"{correct / seen:.3f}"}
            self._bar.set_postfix(loss=f"{loss:.4f}", **acc,
                                  img_s=f"{(seen - self._seen0) / max(elapsed, 1e-9):.0f}")

    def close(self):
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()

    def epoch_done(self, epoch, loss, scores, elapsed, n, lr):
        """The epoch's line: last loss, ``scores`` {"train", "test"[, "val"]}, time, speed, lr."""
        kind, val = self.kind, scores.get("val")
        self.log(f"epoch {epoch + 1}/{self.epochs}: loss {loss:.4f}  "
                 f"train {kind} {scores['train']:.4f}  " + (f"val {kind} {val:.4f}  " if val is not None else "") +
                 f"test {kind} {scores['test']:.4f}  "
                 f"({elapsed:.1f} s, {n / max(elapsed, 1e-9):,.0f} images/s, lr {lr:.3g})")


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
    :meth:`restore` continues from exactly there.  The run's state is :attr:`state`
    (:class:`dualnet.runstate.RunState`); ``step``, ``history``, ``iter_loss``,
    ``start_epoch`` and ``start_step`` read it.
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
        if not self.comm.is_root:  # rank 0 alone logs and shows progress
            self.log, self.progress = (lambda *a, **k: None), False
        self.state = RunState(model, optimizer, out_dir, self.config, writes=self.comm.is_root)
        self._signals = DeferredSignals()
        self.device = model.device
        self._sources(data, batch_size, augment)
        self._warm = False
        self._dropout = any(hasattr(layer, "set_seed") for layer in getattr(model, "layers", ()))
        if not self.train.on_device:
            self.log(f"the dataset does not fit on {self.device.spec}: moving it batch by batch")

    def _sources(self, data, batch_size, augment):
        """The training, test and (when the data has one) validation sources: on the device all
        three, when they fit there together, or none."""
        model = self.model
        classes = model.output_shape[-1] if getattr(model, "output_shape", None) else None
        splits = [(data.x_train, data.t_train), (data.x_test, data.t_test)]
        if getattr(data, "x_val", None) is not None:
            splits.append((data.x_val, data.t_val))
        fits = BatchSource.fits(self.device, model.dtype, *splits)  # all three sets count
        self.train = BatchSource(data.x_train, data.t_train, self.device, model.dtype, batch_size,
                                 on_device=fits, num_classes=classes, what="training set", augment=augment)
        self.test = BatchSource(data.x_test, data.t_test, self.device, model.dtype, self.eval_batch,
                                on_device=fits, num_classes=classes, what="test set")
        self.val = None  # a validation split carved from the training data: scored every epoch
        if len(splits) == 3:
            self.val = BatchSource(data.x_val, data.t_val, self.device, model.dtype, self.eval_batch,
                                   on_device=fits, num_classes=classes, what="validation set")

    # -- the run state, as the attributes the callers read -------------------------------
    @property
    def on_device(self):
        return self.train.on_device

    @property
    def step(self):
        return self.state.step

    @property
    def history(self):
        return self.state.history

    @property
    def iter_loss(self):
        return self.state.iter_loss

    @property
    def start_epoch(self):
        return self.state.epoch

    @property
    def start_step(self):
        return self.state.epoch_step

    @property
    def interrupted_checkpoint(self):
        return self.state.interrupted_checkpoint

    def restore(self, meta, path="checkpoint"):
        """Continue from checkpoint metadata written by this trainer: at the same step of the
        same epoch, with the same history, losses and running-accuracy counts."""
        self.state.restore(meta, self.train.steps_per_epoch, path)

    # -- scores ----------------------------------------------------------------------
    def evaluate(self, source=None):
        """Accuracy on the test set (or on a :class:`BatchSource`), in batches; for a regression
        model its mean loss instead (:meth:`mean_loss`)."""
        src = source or self.test
        return self._score(src, src.num_samples)

    def _score(self, src, n):
        """The accuracy (a regression model: the mean loss) on the first ``n`` samples of ``src``."""
        return self.mean_loss(src, n) if self.regression else self._count(src, n) / n

    def mean_loss(self, src, n=None):
        """Mean loss (without the weight-decay penalty) over the first ``n`` samples of ``src``, in
        batches, in inference mode: one host read per rank, each rank summing its shard."""
        n = src.num_samples if n is None else min(int(n), src.num_samples)
        m = self.model

        def part(lo, hi):
            total = None
            for s in range(lo, hi, self.eval_batch):
                e = min(s + self.eval_batch, hi)
                xb, tb = src.rows(s, e)
                part = m.loss_layer.forward(m.predict(xb), tb) * (e - s)
                total = part if total is None else total + part
            return float(self.device.to_numpy(total))  # host sync: one read per evaluation

        with self.device.bind():
            return self.comm.shard_sum(n, part, "computing the mean loss") / n

    def _count(self, src, n):
        """Correct predictions on the first ``n`` samples of ``src``: each rank counts its shard
        (one host read), the counts are summed over the ranks."""
        m = self.model

        def part(lo, hi):
            correct = None
            for s in range(lo, hi, self.eval_batch):
                xb, tb = src.rows(s, min(s + self.eval_batch, hi))
                c = m.count_correct(xb, tb, self.eval_batch)
                correct = c if correct is None else correct + c
            return int(self.device.to_numpy(correct))  # host sync: one read per evaluation

        with self.device.bind():
            return int(round(self.comm.shard_sum(n, part, "counting correct predictions")))

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
        state = self.state
        view = Progress(self.progress, self.log, self.epochs, self.regression)
        try:
            with state.hold(), self._signals, self.device.bind():
                self.comm.sync_state(self.model, self.opt)  # rank 0's weights everywhere (no-op alone)
                for epoch in range(state.epoch, self.epochs):
                    elapsed, reader = self._epoch(epoch, view)
                    self.comm.average_buffers(self.model)  # batch-norm running statistics: the mean over the ranks
                    self._score_epoch(epoch, reader, elapsed, view)
                    state.end_epoch(epoch)
                    if self._stop_requested():
                        state.interrupt(self._signals.signum, epoch + 1, 0)
        finally:
            self._signals.signum = None
        return self.history

    def _stop_requested(self):
        """Whether a signal reached any rank (every rank asks after each step, so all stop after
        the same one); the note then holds the signal agreed on."""
        got = self.comm.agree_signal(self._signals.signum)
        if got is not None:
            self._signals.signum = got
        return got is not None

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

    def _step(self, xb, tb, n):
        """This rank's part of a step: ``xb`` is its slice of a batch of ``n`` (the whole batch in
        one process); its gradients count ``len(xb) / n`` in the all-reduce.  A rank with no
        samples in this batch still joins the all-reduce, with zero gradients, and applies the
        same update."""
        m, opt, dev = self.model, self.opt, self.device
        k = xb.shape[0]
        reduce = self.comm.reduce_hook(k, n)
        if k:
            return train_step(m, opt, xb, tb, reduce)
        xp = dev.xp
        opt.update(m.params, {key: xp.zeros_like(p) for key, p in m.params.items()}, reduce=reduce)
        return (xp.zeros((), dtype=dev.dtype(m.dtype), device=dev.array_device),
                xp.zeros((), dtype=dev.dtype("int64"), device=dev.array_device))

    def _epoch(self, epoch, view):
        """Train epoch ``epoch`` from the position in :attr:`state`; returns its seconds and the
        interval reader holding its running-accuracy counts.  A signal stops it after the step
        in which it came, with the position saved (:meth:`RunState.interrupt`)."""
        state, comm, src = self.state, self.comm, self.train
        if self.schedule is not None:
            self.opt.lr = self.schedule(epoch)
        start, steps = state.epoch_step, src.steps_per_epoch
        correct0, seen0, elapsed0 = state.partial if start else (0, 0, 0.0)
        reader = IntervalReader(self.device, comm, self.log_every, correct0, seen0)
        self._warm_up()
        with view.start(epoch, steps, start, seen0):
            self.device.synchronize()
            t0 = time.perf_counter()
            batches = src.epoch(epoch_seed(self.seed, epoch, SHUFFLE), start=start, shard=comm.shard)
            for i, (xb, tb) in enumerate(batches, start=start):
                if self._dropout:
                    self.model.set_seed(comm.rank_seed(step_seed(self.seed, epoch, i)))  # masks differ per rank
                n = src.batch_len(i)
                loss, c = self._step(xb, tb, n)
                state.step += 1
                reader.add(loss, c, comm.weight(xb.shape[0], n), n)
                stop = self._stop_requested() and i < steps - 1
                view.step()
                if reader.full or i == steps - 1 or stop:
                    state.iter_loss.extend(reader.read(state.step, epoch))
                    view.interval(state.iter_loss[-1], reader.correct, reader.seen, time.perf_counter() - t0)
                if stop:
                    view.close()
                    state.interrupt(self._signals.signum, epoch, i + 1,
                                    (reader.correct, reader.seen, elapsed0 + time.perf_counter() - t0))
            self.device.synchronize()
            elapsed = elapsed0 + time.perf_counter() - t0
        return elapsed, reader

    def _score_epoch(self, epoch, reader, elapsed, view):
        """Score the model after epoch ``epoch`` (train estimate, test, validation), record the
        epoch in the history and print its line."""
        src = self.train
        n, n_eval = src.num_samples, min(self.eval_train_samples, src.num_samples)
        scores = {"train": self._score(src, n_eval), "test": self.evaluate()}
        if self.val is not None:
            scores["val"] = self.evaluate(self.val)
        # a regression step's "correct" count means nothing
        running = None if self.regression else reader.correct / max(1, reader.seen)
        self.state.record(epoch, view.kind, scores, running, self.opt.lr, elapsed, n)
        view.epoch_done(epoch, self.iter_loss[-1], scores, elapsed, n, self.opt.lr)
