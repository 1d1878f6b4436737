"""Micro-batches: a batch run through a network in cache-sized parts, with the whole batch's result.

A CPU step is fastest while what it writes in the forward and reads back in the backward stays
in the cache.  DeepConvNet's layer outputs take 325 KiB per image in float32; a step holds about
three times that (Winograd's transformed inputs, the gradients), so at batch 64 the step stays in
this machine's cache and at batch 256 it streams from memory, and each image costs more: one
thread, medians of interleaved steps, 161 ms as one batch of 256 and 138 ms as four
micro-batches of 64 (docs/convolution.md, "Micro-batches", has the table and its command,
scripts/micro_batch_sizes.py).

A micro-batched step is the whole batch's step, to rounding:

- every layer's output for a sample depends on that sample alone (``Layer.per_sample``; batch
  normalization in training does not qualify, so a network with it is never split), and the loss
  is a mean over samples, so the batch's loss and gradients are the micro-batches' weighted by
  their share of the batch (the weight-decay term, in each of them, sums back to one);
- dropout draws each micro-batch's masks in turn from the same generator: on the host (NumPy)
  the very masks of one draw for the whole batch;
- the scores (N, K) of all micro-batches are put together, so accuracy counts the whole batch.

Only the order of the sums differs (the float64 test in tests/test_microbatch.py compares them).
``"auto"`` splits only on the host, where the cache is the cost: a GPU pays per launch, and more
micro-batches are more launches.
"""
from __future__ import annotations

import numbers

from .errors import ConfigError

__all__ = ["MICRO_BATCH_BYTES", "check", "size", "parts", "gradient", "predict"]

MICRO_BATCH_BYTES = 24 << 20
"""The layer outputs of one micro-batch, at most about (the whole step's working set is some
three times this; measured in docs/convolution.md: DeepConvNet splits 256 into 4 x 64 and 100
into 2 x 50, SimpleConvNet 256 into 2 x 128 and leaves 100 whole)."""


def check(micro_batch):
    """``micro_batch`` as given ("auto", None) or as an int >= 0; raises ConfigError otherwise."""
    if micro_batch is None or (isinstance(micro_batch, str) and micro_batch == "auto"):
        return micro_batch
    if isinstance(micro_batch, numbers.Integral) and not isinstance(micro_batch, bool) and micro_batch >= 0:
        return int(micro_batch)
    raise ConfigError(f"micro_batch must be 'auto', a positive integer, 0 or None, got {micro_batch!r}",
                      param="micro_batch")


def size(model, n, train, micro_batch="auto"):
    """Samples per micro-batch (the largest part) when ``model`` runs a batch of ``n``.

    Parameters
    ----------
    model : Sequential
    n : int
    train : bool   a training forward (a layer or loss that is not ``per_sample`` then keeps it whole)
    micro_batch : "auto", int or None
        ``"auto"``: on the host, micro-batches of at most :data:`MICRO_BATCH_BYTES` of layer
        outputs; elsewhere the whole batch.  An int: at most that many samples per micro-batch,
        on any device.  None or 0: the whole batch.  The parts differ by at most one sample.
    """
    micro_batch = check(micro_batch)
    if not micro_batch:
        return n
    if train and not all(getattr(l, "per_sample", False) for l in (*model.layers, model.loss_layer)):
        return n
    if micro_batch == "auto":
        if not model.device.is_host:
            return n
        per_sample = model.sample_values * (8 if model.dtype == "float64" else 4)
        limit = max(1, MICRO_BATCH_BYTES // max(1, per_sample))
    else:
        limit = micro_batch
    return n if n <= limit else -(-n // -(-n // limit))   # 256 by at most 75: 4 of 64


def parts(n, m):
    """[(start, stop)] of the ceil(n / m) micro-batches of a batch of n, as equal as can be
    (10 by at most 3: 2, 3, 2, 3)."""
    k = -(-n // m)
    return [(i * n // k, (i + 1) * n // k) for i in range(k)]


def gradient(model, x, t, train, m):
    """The batch's mean loss and gradients as micro-batches of ``m`` samples (see the module
    docstring); the model's ``grads`` and ``scores`` are then the whole batch's.

    Returns (loss, grads) as :meth:`dualnet.models.Sequential.gradient`.
    """
    xp, n = model.device.xp, x.shape[0]
    loss = G = None
    scores = []
    try:
        for s, e in parts(n, m):
            w = (e - s) / n
            part = model.loss(x[s:e, ...], t[s:e, ...], train) * w
            model.backward()
            loss = part if loss is None else loss + part
            if model._grad_flat is not None:
                g = model._grad_flat * w
                G = g if G is None else G + g
            scores.append(model.scores)
    finally:
        # the layers hold the last part's state: a backward() now would be that part's alone
        model._backward_ready = False
    model.scores = xp.concat(scores, axis=0)
    if G is not None:
        model._set_grads(G)
    return loss, model.grads


def predict(model, x, m):
    """Scores of an evaluation forward (``train=False``) as micro-batches of ``m``, put together."""
    xp = model.device.xp
    return xp.concat([model._forward(x[s:e, ...], False) for s, e in parts(x.shape[0], m)], axis=0)
