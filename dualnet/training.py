"""Training: one step, one batch source, and the loops built on them.

- :func:`train_step` is the only place a training step is written: forward, backward,
  update; the loss and the number of correct predictions stay on the device.
- :class:`BatchSource` serves shuffled mini-batches of one dataset on one device: the
  whole set lives on the device when it fits in half its free memory (batches are then
  gathered there, with no host transfer), else each batch is moved as it is used.
- :class:`Trainer` runs epochs of steps with one host sync per logging interval;
  :func:`train_steps` runs a fixed number of steps (the book's iteration-based
  experiments).  Both, the bench and the scripts use the two pieces above.

Every epoch draws its shuffle and dropout masks from generators seeded by (seed, epoch),
so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import time

from .checkpoint import save_checkpoint
from .errors import ConfigError, ShapeError, TrainingDiverged
from .models import count_correct

__all__ = ["train_step", "BatchSource", "train_steps", "Trainer", "TrainingDiverged", "epoch_seed"]


def train_step(model, optimizer, x, t):
    """One step of mini-batch training on the model's device.

    Returns
    -------
    loss : 0-d device array   the batch's mean loss (with the weight-decay penalty)
    correct : 0-d device array   how many of the batch's predictions were right (training mode)

    Nothing is read back to the host: the caller decides when to sync.
    """
    loss = model.loss(x, t, train=True)
    model.backward()
    optimizer.update(model.params, model.grads)
    return loss, count_correct(model.scores, t)


def epoch_seed(seed, epoch, stream):
    """The seed of one epoch's random stream (0: shuffle, 1: dropout masks)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + stream) % (2 ** 32)


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
    """

    def __init__(self, x, t, device, dtype, batch_size, on_device=None):
        if x.shape[0] != t.shape[0]:
            raise ShapeError(f"x has {x.shape[0]} samples but t has {t.shape[0]}")
        if x.shape[0] == 0:
            raise ShapeError("the training set is empty: x has shape "
                             f"{tuple(x.shape)}; pass at least one sample")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}",
                              param="batch_size")
        self.x_host, self.t_host, self.device, self.dtype = x, t, device, dtype
        itemsize = 8 if dtype == "float64" else 4
        nbytes = x.size * itemsize + t.nbytes
        self.on_device = nbytes < 0.5 * device.free_memory() if on_device is None else bool(on_device)
        if self.on_device:
            with device.bind():
                self.x = device.asarray(x, dtype)
                self.t = device.asarray(t)

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

    def epoch(self, seed, start=0):
        """The batches of one epoch in the order drawn by ``seed``, from batch ``start`` on
        (the last one may be smaller)."""
        perm = self.order(self.device.rng(seed))
        B, N = self.batch_size, self.num_samples
        for i in range(start, self.steps_per_epoch):
            yield self.batch(perm[i * B:min((i + 1) * B, N)])

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
        Where ``checkpoint.npz`` is written atomically after every epoch.
    log_every : int
        Steps between host syncs (progress-bar updates and the NaN check).
    eval_train_samples : int
        Train accuracy per epoch is measured in eval mode on this many training samples.
    """

    def __init__(self, model, optimizer, data, epochs=1, batch_size=100, schedule=None, out_dir=None,
                 log_every=50, progress=True, seed=0, eval_batch=1000, eval_train_samples=10000,
                 config=None, log=print):
        self.model, self.opt, self.data = model, optimizer, data
        self.epochs = int(epochs)
        self.schedule, self.out_dir = schedule, out_dir
        self.log_every, self.progress, self.seed = max(1, int(log_every)), progress, int(seed)
        self.eval_batch, self.eval_train_samples = int(eval_batch), int(eval_train_samples)
        self.config = config or {}
        self.log = log
        self.history = {"epoch": [], "train_acc": [], "test_acc": [], "running_acc": [], "lr": [],
                        "epoch_time_s": [], "images_per_s": []}
        self.iter_loss = []
        self.start_epoch = 0
        self.step = 0
        self.device = model.device
        self.train = BatchSource(data.x_train, data.t_train, self.device, model.dtype, batch_size)
        self.test = BatchSource(data.x_test, data.t_test, self.device, model.dtype, self.eval_batch,
                                on_device=self.train.on_device)
        if not self.train.on_device:
            self.log(f"the dataset does not fit on {self.device.spec}: moving it batch by batch")

    @property
    def on_device(self):
        return self.train.on_device

    def evaluate(self, source=None):
        """Accuracy on the test set (or on a :class:`BatchSource`), in batches."""
        src = source or self.test
        if src.on_device:
            return self.model.accuracy(src.x, src.t, self.eval_batch)
        correct = 0
        for s in range(0, src.num_samples, self.eval_batch):
            xb, tb = src.batch(slice(s, min(s + self.eval_batch, src.num_samples)))
            correct += int(self.device.to_numpy(self.model.count_correct(xb, tb, self.eval_batch)))
        return correct / src.num_samples

    # -- resume ------------------------------------------------------------------------
    def restore(self, meta):
        """Continue from checkpoint metadata written by this trainer."""
        self.start_epoch = int(meta.get("epoch", 0))
        self.step = int(meta.get("step", 0))
        self.history = meta.get("history", self.history)
        self.iter_loss = list(meta.get("iter_loss", []))

    def _save(self, epoch, name="checkpoint.npz", extra=None):
        if not self.out_dir:
            return None
        path = os.path.join(self.out_dir, name)
        meta = {"epoch": epoch, "step": self.step, "history": self.history, "iter_loss": self.iter_loss,
                "config": self.config, **(extra or {})}
        save_checkpoint(path, self.model, self.opt, meta)
        return path

    # -- the loop --------------------------------------------------------------------
    def fit(self):
        """Train from ``start_epoch`` to ``epochs``; returns the history dict.

        Raises
        ------
        TrainingDiverged
            On a NaN/inf loss; the last epoch's checkpoint is left untouched.
        KeyboardInterrupt
            After saving ``interrupted.npz`` beside the checkpoint.
        """
        epoch = self.start_epoch
        try:
            with self.device.bind():
                for epoch in range(self.start_epoch, self.epochs):
                    self._epoch(epoch)
                    self._save(epoch + 1)
        except KeyboardInterrupt:
            path = self._save(epoch, "interrupted.npz", {"interrupted_in_epoch": epoch + 1})
            self.interrupted_checkpoint = path
            raise
        return self.history

    def _epoch(self, epoch):
        m, opt, dev, src = self.model, self.opt, self.device, self.train
        xp = dev.xp
        if self.schedule is not None:
            opt.lr = self.schedule(epoch)
        N, steps = src.num_samples, src.steps_per_epoch
        m.set_seed(epoch_seed(self.seed, epoch, 1))

        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step", leave=False,
                       dynamic_ncols=True)
        pending, correct, seen = [], None, 0
        seen_total, correct_total = 0, 0
        dev.synchronize()
        t0 = time.perf_counter()
        for i, (xb, tb) in enumerate(src.epoch(epoch_seed(self.seed, epoch, 0))):
            loss, c = train_step(m, opt, xb, tb)
            self.step += 1
            pending.append(loss)
            correct = c if correct is None else correct + c
            seen += xb.shape[0]
            if len(pending) == self.log_every or i == steps - 1:
                # The one host sync of the interval: the losses and the correct count in one array.
                vals = dev.to_numpy(xp.concat([xp.stack(pending),
                                               xp.reshape(xp.astype(correct, pending[0].dtype), (1,))]))
                vals = vals.tolist()
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
                    bar.set_postfix(loss=f"{vals[-1]:.4f}", acc=f"{correct_total / seen_total:.3f}",
                                    img_s=f"{seen_total / el:.0f}")
                    bar.update(i + 1 - bar.n)
        dev.synchronize()
        elapsed = time.perf_counter() - t0
        if bar:
            bar.close()
        xe, te = src.head(min(self.eval_train_samples, N))
        train_acc = m.accuracy(xe, te, self.eval_batch)
        test_acc = self.evaluate()
        h = self.history
        h["epoch"].append(epoch + 1)
        h["train_acc"].append(train_acc)
        h["test_acc"].append(test_acc)
        h["running_acc"].append(correct_total / max(1, seen_total))
        h["lr"].append(opt.lr)
        h["epoch_time_s"].append(elapsed)
        h["images_per_s"].append(N / elapsed)
        self.log(f"epoch {epoch + 1}/{self.epochs}: loss {self.iter_loss[-1]:.4f}  "
                 f"train acc {train_acc:.4f}  test acc {test_acc:.4f}  "
                 f"({elapsed:.1f} s, {N / elapsed:,.0f} images/s, lr {opt.lr:.3g})")
