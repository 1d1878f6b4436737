"""The training loop: data on the device, batches drawn there, one host sync per logging interval.

The whole dataset is moved to the device once when it fits in half its memory
(otherwise each batch is moved as it is used).  Every epoch draws its shuffle
and dropout masks from generators seeded by (seed, epoch), so a resumed run
sees the same batches as an uninterrupted one.  Losses stay on the device and
are read back, all at once, every ``log_every`` steps: that one read is the
only host sync of a step, and it tells exactly which step first went non-finite.
"""
from __future__ import annotations

import math
import os
import time

from .checkpoint import save_checkpoint

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; ``step`` is the 1-based global step where it first did."""

    def __init__(self, step, epoch, value):
        self.step, self.epoch, self.value = step, epoch, value
        super().__init__(f"loss became {value} at step {step} (epoch {epoch}); "
                         f"lower the learning rate (--lr) or use float64")


def _epoch_seed(seed, epoch, stream):
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + stream) % (2 ** 32)


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
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
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
        self._to_device()

    # -- data placement --------------------------------------------------------------
    def _to_device(self):
        d, dev = self.data, self.device
        dt = dev.dtype(self.model.dtype)
        nbytes = sum(a.nbytes for a in (d.x_train, d.x_test, d.t_train, d.t_test))
        self.on_device = nbytes * (2 if self.model.dtype == "float64" else 1) < 0.5 * dev.total_memory()
        if self.on_device:
            self.X = dev.asarray(d.x_train, dt)
            self.T = dev.asarray(d.t_train)
            self.Xte = dev.asarray(d.x_test, dt)
            self.Tte = dev.asarray(d.t_test)
            n = min(self.eval_train_samples, d.x_train.shape[0])
            self.Xev, self.Tev = self.X[:n, ...], self.T[:n, ...]
        else:
            self.log(f"dataset ({nbytes / 2**30:.1f} GiB) does not fit on {dev.spec}: moving it batch by batch")

    def _batch(self, idx_dev, idx_host, xs, ts):
        if self.on_device:
            xp = self.device.xp
            return xp.take(xs, idx_dev, axis=0), xp.take(ts, idx_dev, axis=0)
        dt = self.device.dtype(self.model.dtype)
        return self.device.asarray(xs[idx_host], dt), self.device.asarray(ts[idx_host])

    def evaluate(self, x=None, t=None):
        """Accuracy on the test set (or on ``x``, ``t``), in batches."""
        if x is None:
            if self.on_device:
                x, t = self.Xte, self.Tte
            else:
                return self._evaluate_host(self.data.x_test, self.data.t_test)
        return self.model.accuracy(x, t, self.eval_batch)

    def _evaluate_host(self, xh, th):
        dev, dt = self.device, self.device.dtype(self.model.dtype)
        correct = 0
        for s in range(0, xh.shape[0], self.eval_batch):
            correct += int(dev.to_numpy(self.model.count_correct(
                dev.asarray(xh[s:s + self.eval_batch], dt), dev.asarray(th[s:s + self.eval_batch]))))
        return correct / xh.shape[0]

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
            for epoch in range(self.start_epoch, self.epochs):
                self._epoch(epoch)
                self._save(epoch + 1)
        except KeyboardInterrupt:
            path = self._save(epoch, "interrupted.npz", {"interrupted_in_epoch": epoch + 1})
            self.interrupted_checkpoint = path
            raise
        return self.history

    def _epoch(self, epoch):
        m, opt, dev = self.model, self.opt, self.device
        xp = dev.xp
        if self.schedule is not None:
            opt.lr = self.schedule(epoch)
        N, B = self.data.x_train.shape[0], self.batch_size
        steps = math.ceil(N / B)
        rng = dev.rng(_epoch_seed(self.seed, epoch, 0))
        perm = rng.permutation(N) if self.on_device else None
        perm_host = None if self.on_device else dev.to_numpy(rng.permutation(N))
        m.set_seed(_epoch_seed(self.seed, epoch, 1))

        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step", leave=False,
                       dynamic_ncols=True)
        pending, correct, seen = [], xp.zeros((), dtype=xp.int64, device=dev.array_device), 0
        seen_total, correct_total = 0, 0
        dev.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            sl = slice(i * B, min((i + 1) * B, N))
            xb, tb = self._batch(perm[sl] if perm is not None else None,
                                 perm_host[sl] if perm_host is not None else None,
                                 self.X if self.on_device else self.data.x_train,
                                 self.T if self.on_device else self.data.t_train)
            loss = m.loss(xb, tb, train=True)
            m.backward()
            opt.update(m.params, m.grads)
            self.step += 1
            pending.append(loss)
            tl = tb if tb.ndim == 1 else xp.argmax(tb, axis=1)
            correct = correct + xp.sum(xp.astype(xp.argmax(m.scores, axis=1) == tl, xp.int64))
            seen += xb.shape[0]
            if len(pending) == self.log_every or i == steps - 1:
                # The one host sync of the interval: losses and the running accuracy together.
                vals = dev.to_numpy(xp.stack(pending)).tolist()
                first_step = self.step - len(pending) + 1
                for k, v in enumerate(vals):
                    if not math.isfinite(v):
                        if bar:
                            bar.close()
                        raise TrainingDiverged(first_step + k, epoch + 1, v)
                self.iter_loss.extend(vals)
                correct_total += int(dev.to_numpy(correct))
                seen_total += seen
                pending, seen = [], 0
                correct = xp.zeros((), dtype=xp.int64, device=dev.array_device)
                if bar:
                    el = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{vals[-1]:.4f}", acc=f"{correct_total / seen_total:.3f}",
                                    img_s=f"{seen_total / el:.0f}")
                    bar.update(i + 1 - bar.n)
        dev.synchronize()
        elapsed = time.perf_counter() - t0
        if bar:
            bar.close()
        if self.on_device:
            train_acc = self.model.accuracy(self.Xev, self.Tev, self.eval_batch)
        else:
            n = min(self.eval_train_samples, N)
            train_acc = self._evaluate_host(self.data.x_train[:n], self.data.t_train[:n])
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
