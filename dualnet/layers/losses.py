"""Loss layers: ``forward(scores, t)`` gives a batch's mean loss, ``backward()`` d loss / d scores."""
from __future__ import annotations

import math

from .. import functions as F
from ..backend import namespace
from ..checks import check_labels
from ..errors import ShapeError
from .base import _bind_compute


class Loss:
    """Base of loss layers: ``forward(scores, t)`` returns the mean loss (0-d array) of a batch
    against labels ``t``; ``backward(dout=1.0)`` returns d loss / d scores.  A loss has no
    parameters, so it is not a :class:`Layer` and has no ``train`` flag; it computes on the
    device of its scores."""

    classifies = True   # scores are class scores: accuracy means something
    per_sample = False
    """True when the loss is the mean over samples of each sample's loss, so that a batch's
    loss and gradient are its micro-batches' weighted by their share (:mod:`dualnet.microbatch`).
    False by default: a loss of your own that does not declare it keeps batches whole."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _bind_compute(cls)

    def spec(self):
        return {"type": type(self).__name__}

    def forward(self, x, t):
        raise NotImplementedError

    def backward(self, dout=1.0):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class SoftmaxWithLoss(Loss):
    """Softmax followed by mean cross-entropy; labels as integers (N,) or one-hot (N, K)."""
    per_sample = True

    def forward(self, x, t):
        # dtype and shapes only: the range costs a host sync on a device (the network checks it
        # where that is free)
        check_labels(t, x.shape[-1], x.shape[0], check_range=False)
        self.loss, self.y, self.t = F.softmax_cross_entropy(x, t)
        return self.loss

    def backward(self, dout=1.0):
        return (self.y - self.t) * (dout / self.y.shape[0])


class MeanSquaredError(Loss):
    """Regression: the output is the scores themselves (identity), the loss their mean squared
    error ``0.5 * sum((y - t)**2) / N`` against real-valued targets ``t`` (N, K) floats.

    There are no classes, so a model with this loss has no accuracy (it is refused)."""
    per_sample = True

    classifies = False

    def forward(self, x, t):
        xp = namespace(x)
        if not xp.isdtype(t.dtype, "real floating") or math.prod(t.shape) != math.prod(x.shape):
            raise ShapeError(f"regression targets have shape {tuple(t.shape)} and dtype {t.dtype} but the "
                             f"outputs have shape {tuple(x.shape)}: pass float targets of the same shape, "
                             f"e.g. t.reshape(N, {x.shape[-1]}) as float")
        self.y, self.t = x, t
        return F.mean_squared_error(x, t)

    def backward(self, dout=1.0):
        return F.d_mean_squared_error(self.y, self.t) * dout
