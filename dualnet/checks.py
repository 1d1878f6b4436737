"""Checks shared by every public entry point that takes labels or a batch.

One function per kind of argument, so ``model.loss``, ``model.accuracy``, ``count_correct``,
:class:`dualnet.training.BatchSource` and the book's networks refuse the same inputs with the
same errors (a label that one call refuses is never silently counted by another).
"""
from __future__ import annotations

from .backend import namespace
from .errors import DataError, DTypeError, ShapeError

__all__ = ["check_labels", "check_batch"]


def check_batch(x, what="input"):
    """A batch must hold at least one sample: ``x`` of shape (N, ...) with N >= 1."""
    if len(x.shape) == 0 or x.shape[0] == 0:
        raise ShapeError(f"{what} has shape {tuple(x.shape)}: a batch of zero samples; pass at least "
                         f"one sample (N, ...)")


def check_labels(t, num_classes=None, n=None, what="labels", check_range=True):
    """Labels ``t``: (N,) integer class indices in ``0..num_classes-1``, or (N, K) one-hot floats.

    Parameters
    ----------
    t : array of any device
    num_classes : int, optional
        K; when given, one-hot rows must have K columns and (with ``check_range``) indices lie
        in range.
    n : int, optional
        The batch's sample count N that ``t`` must match.
    what : str
        What the labels belong to, for the message (``"labels"``, ``"training set labels"``).
    check_range : bool
        Read the labels' minimum and maximum: free on the host, a host sync on an accelerator
        (callers pass ``device.is_host``; accelerators check once where the data is placed).

    Raises
    ------
    DTypeError, ShapeError, DataError
    """
    xp = namespace(t)
    if t.ndim not in (1, 2):
        raise ShapeError(f"{what} have shape {tuple(t.shape)}; expected (N,) integer labels or (N, K) "
                         f"one-hot rows")
    if n is not None and t.shape[0] != n:
        raise ShapeError(f"{what} have shape {tuple(t.shape)} but the input has {n} samples; pass one "
                         f"label per sample")
    if t.ndim == 1:
        if not xp.isdtype(t.dtype, "integral"):
            raise DTypeError(f"{what} have dtype {t.dtype} but (N,) labels must be integer class indices; "
                             f"convert them with device.asarray(t, 'int64') (or t.astype('int64')), or "
                             f"pass (N, K) one-hot rows")
        if check_range and num_classes is not None and t.shape[0]:
            lo, hi = int(xp.min(t)), int(xp.max(t))
            if lo < 0 or hi >= num_classes:
                raise DataError(f"{what} hold {lo if lo < 0 else hi}, outside the model's {num_classes} "
                                f"classes (0..{num_classes - 1}); fix the labels or build the model with "
                                f"more classes (output_size > {hi})")
        return
    if not xp.isdtype(t.dtype, "real floating"):
        raise DTypeError(f"{what} of shape {tuple(t.shape)} are one-hot rows and must be floats, got "
                         f"{t.dtype}; pass (N,) integer labels or convert with t.astype('float32')")
    if num_classes is not None and t.shape[1] != num_classes:
        raise ShapeError(f"one-hot {what} have shape {tuple(t.shape)}: {t.shape[1]} columns but the model "
                         f"has {num_classes} classes; pass (N, {num_classes}) rows or (N,) integer labels")
