"""A training run's state: where it is, what it has recorded, and the files that keep both.

The position is (``epoch``: epochs completed, ``epoch_step``: steps done in the next one); with
the seeds it alone determines what comes next (every epoch's shuffle is drawn from (seed,
epoch), every step's dropout masks from (seed, epoch, step)), so a run saved at any position
and restored from it continues exactly.  :class:`RunState` holds the position, the history
(one entry per epoch), every step's loss and, for a position inside an epoch, the running
accuracy counts of the steps done in it; it writes ``checkpoint.npz`` after every epoch and
``interrupted.npz`` when a signal stops the run, and reads a checkpoint's ``meta`` back.

Signals: :class:`DeferredSignals` turns SIGINT and SIGTERM into a note that the training loop
reads where stopping loses nothing; :meth:`RunState.interrupt` then saves the position and
raises :class:`Interrupted`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from .checkpoint import save_checkpoint
from .errors import CheckpointError
from .io import RunDir, WriteError

__all__ = ["RunState", "Interrupted", "DeferredSignals"]

CHECKPOINT, INTERRUPTED = "checkpoint.npz", "interrupted.npz"


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


class DeferredSignals:
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


def new_history():
    """The lists every run's history has (a regression run adds ``*_loss`` instead of filling
    the ``*_acc`` ones)."""
    return {"epoch": [], "train_acc": [], "test_acc": [], "running_acc": [], "lr": [],
            "epoch_time_s": [], "images_per_s": []}


class RunState:
    """The position, history and losses of one run, and the checkpoint files that keep them.

    Parameters
    ----------
    model, optimizer
        What a checkpoint saves besides the state.
    out_dir : str or None
        The run directory; None writes nothing.
    config : dict
        The run's settings, saved in every checkpoint's ``meta``.
    writes : bool
        Whether this process writes the files (rank 0 of a data-parallel job; the others name
        rank 0's file).

    Attributes
    ----------
    epoch : int          epochs completed: the epoch trained next
    epoch_step : int     steps already done in that epoch
    partial : (int, int, float)   (correct, seen, seconds) of those steps, for the running accuracy
    step : int           steps done in all
    history : dict of lists   one entry per completed epoch
    iter_loss : list of float   every step's loss
    interrupted_checkpoint : str or None   the file the last interrupt saved
    """

    def __init__(self, model, optimizer, out_dir=None, config=None, writes=True):
        self.model, self.opt, self.out_dir = model, optimizer, out_dir
        self.config, self.writes = config or {}, bool(writes)
        self.epoch, self.epoch_step, self.partial = 0, 0, (0, 0, 0.0)
        self.step = 0
        self.history = new_history()
        self.iter_loss = []
        self.interrupted_checkpoint = None

    # -- resume --------------------------------------------------------------------
    def restore(self, meta, steps_per_epoch, path="checkpoint"):
        """Take the position, history, losses and running-accuracy counts of checkpoint
        ``meta`` (written by :meth:`save`) for a run of ``steps_per_epoch`` steps per epoch."""
        def bad(why):
            return CheckpointError(f"{path}: {why}; it cannot be resumed by this run "
                                   f"(resume from the run's checkpoint.npz instead)")
        epoch, k = int(meta.get("epoch", 0)), int(meta.get("epoch_step", 0))
        step = int(meta.get("step", 0))
        if not 0 <= k < steps_per_epoch:
            raise bad(f"its position (step {k} of epoch {epoch + 1}) is outside an epoch of "
                      f"{steps_per_epoch} steps")
        iter_loss = list(meta.get("iter_loss", []))
        if len(iter_loss) != step:
            raise bad(f"it records {len(iter_loss)} losses for {step} steps")
        self.epoch, self.epoch_step, self.step = epoch, k, step
        self.history = meta.get("history", self.history)
        self.iter_loss = iter_loss
        p = meta.get("partial") or {}
        self.partial = (int(p.get("correct", 0)), int(p.get("seen", 0)), float(p.get("elapsed_s", 0.0)))

    # -- files ---------------------------------------------------------------------
    def hold(self):
        """The run directory, checked and locked for the block (:class:`dualnet.io.RunDir`),
        when this process writes one."""
        if self.out_dir and self.writes:
            return RunDir(self.out_dir)
        return contextlib.nullcontext()

    def save(self, epoch, name=CHECKPOINT, extra=None):
        """Write ``name`` in the run directory (atomically) with ``epoch`` epochs completed;
        returns its path (None without a run directory)."""
        if not self.out_dir:
            return None
        path = os.path.join(self.out_dir, name)
        if not self.writes:  # rank 0 alone writes; the others name its file
            return path
        meta = {"epoch": epoch, "epoch_step": 0, "step": self.step, "history": self.history,
                "iter_loss": self.iter_loss, "config": self.config, **(extra or {})}
        try:
            save_checkpoint(path, self.model, self.opt, meta)
        except WriteError as e:
            last = os.path.join(self.out_dir, CHECKPOINT)
            kept = (f"; the last good checkpoint {last} is intact" if os.path.exists(last)
                    else "; no checkpoint was written yet")
            raise WriteError(f"{e}{kept} (out_dir={self.out_dir!r})", param="out_dir",
                             errno_=e.errno_) from None
        return path

    def end_epoch(self, epoch):
        """Epoch ``epoch`` is done: save its checkpoint and move the position to the next one;
        that checkpoint supersedes an interrupted position."""
        self.save(epoch + 1)
        self.epoch, self.epoch_step, self.partial = epoch + 1, 0, (0, 0, 0.0)
        if self.out_dir and self.writes:
            stale = os.path.join(self.out_dir, INTERRUPTED)
            if os.path.exists(stale):
                try:
                    os.unlink(stale)
                except OSError:
                    pass

    def interrupt(self, signum, epoch, k, partial=None):
        """Stop at ``k`` steps into ``epoch`` (``partial``: their (correct, seen, seconds)): save
        the position to interrupted.npz, then raise :class:`Interrupted`."""
        extra = {"epoch_step": k, "signal": Interrupted(signum).signal_name}
        if partial is not None:
            correct, seen, elapsed = partial
            extra["partial"] = {"correct": correct, "seen": seen, "elapsed_s": elapsed}
        path = self.save(epoch, INTERRUPTED, extra)
        self.interrupted_checkpoint = path
        # the position in memory is the one saved: this state continues from there too
        self.epoch, self.epoch_step, self.partial = epoch, k, partial or (0, 0, 0.0)
        raise Interrupted(signum, path, {"epoch": epoch, "epoch_step": k, "step": self.step})

    # -- history -------------------------------------------------------------------
    def record(self, epoch, kind, scores, running_acc, lr, elapsed, n):
        """Add epoch ``epoch``'s entry: ``scores`` {"train": .., "test": .., "val": ..} (each
        split's accuracy or, ``kind`` "loss", mean loss), the running accuracy of its training
        steps (None for a regression run), the learning rate, its seconds and ``n`` images."""
        h = self.history
        h["epoch"].append(epoch + 1)
        for split, v in scores.items():
            h.setdefault(f"{split}_{kind}", []).append(v)
        if running_acc is not None:
            h["running_acc"].append(running_acc)
        h["lr"].append(lr)
        h["epoch_time_s"].append(elapsed)
        h["images_per_s"].append(n / max(elapsed, 1e-9))
