"""Interleaved timing of contenders with the devices' own timers (the bench and the layer scripts).

Every benchmark of dualnet measures the same way: it warms up first; it brackets each call
between a device timer's ``start()`` and ``stop()`` (``dualnet.backend.Device.timer``:
``stop`` waits for the device before it reads the clock, CUDA events on a GPU); it runs the
contenders interleaved, one call of each in turn, so that drifts of the machine (load, clock
speed, caches) hit them all alike; and it reports the median and the inter-quartile range.

A contender is one call (``fn()``) or a chain of stages timed apart, each given what the one
before it returned (a forward that returns its saved state, then the backward that takes it).
"""
from __future__ import annotations

import math

__all__ = ["SPREAD_WARN", "time_interleaved", "time_stages", "time_steps", "quartiles", "spread", "summarize"]

SPREAD_WARN = 0.10  # an IQR above this fraction of the median is reported as unstable


def _run_stages(timer_factory, stages):
    """Run ``stages`` in order, each timed by its own timer; milliseconds per stage."""
    ms, state = [], None
    for i, stage in enumerate(stages):
        t = timer_factory()
        t.start()
        state = stage() if i == 0 else stage(state)
        ms.append(t.stop())
    return ms


def time_stages(contenders, steps=20, warmup=3, time_budget=None, max_steps=None):
    """Time each contender's chain of stages, one chain of each contender in turn.

    Parameters
    ----------
    contenders : dict name -> (timer_factory, stages)
        ``timer_factory()`` gives a timer with ``start()`` and ``stop() -> ms`` that waits
        for the device before it reads the clock (``device.timer``).  ``stages`` is a
        sequence of callables: the first takes nothing, each further one takes what the
        stage before it returned.
    steps : int
        Timed rounds at least (3 at the least even when the budget runs out).
    warmup : int
        Untimed rounds first.
    time_budget : float, optional
        Seconds of timed calls, all contenders together.  Past ``steps`` rounds, rounds go on
        while any contender's IQR (of its whole chain) exceeds ``SPREAD_WARN`` of its median,
        until ``max_steps`` or the budget.
    max_steps : int, optional
        The most rounds (default 3 * steps); ``max_steps=steps`` times exactly ``steps``.

    Returns
    -------
    dict name -> list (one per stage) of lists of float : milliseconds per call.
    """
    for _ in range(warmup):
        for tf, stages in contenders.values():
            _run_stages(tf, stages)
    times = {k: [[] for _ in stages] for k, (_, stages) in contenders.items()}
    spent = 0.0
    max_steps = max_steps or 3 * max(3, steps)
    for n in range(1, max_steps + 1):
        for k, (tf, stages) in contenders.items():
            for lst, ms in zip(times[k], _run_stages(tf, stages)):
                lst.append(ms)
                spent += ms / 1e3
        if n >= 3 and time_budget is not None and spent > time_budget:
            break
        if n >= steps and all(spread([sum(r) for r in zip(*v)]) <= SPREAD_WARN for v in times.values()):
            break
    return times


def time_interleaved(contenders, steps=20, warmup=3, time_budget=None, max_steps=None):
    """Time each contender's calls, one call of each in turn (:func:`time_stages` with one stage).

    ``contenders`` is a dict name -> ``(timer_factory, fn)``; returns name -> list of float,
    the milliseconds of each timed call.
    """
    staged = {k: (tf, (fn,)) for k, (tf, fn) in contenders.items()}
    return {k: v[0] for k, v in time_stages(staged, steps, warmup, time_budget, max_steps).items()}


def time_steps(timer_factory, fn, steps=20, warmup=3, time_budget=None, max_steps=None):
    """Time ``fn()`` per call (see :func:`time_interleaved`, with one contender)."""
    return time_interleaved({"fn": (timer_factory, fn)}, steps, warmup, time_budget, max_steps)["fn"]


def quartiles(times_ms):
    """(first quartile, median, third quartile), interpolated linearly between the sorted
    values (NumPy's default percentile); host floats, so no array library is needed."""
    v = sorted(float(t) for t in times_ms)
    if not v:
        raise ValueError("quartiles of no measurement")

    def at(q):
        pos = q * (len(v) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return at(0.25), at(0.5), at(0.75)


def spread(times_ms):
    """Inter-quartile range of ``times_ms`` as a fraction of its median (0 for a zero median)."""
    q1, med, q3 = quartiles(times_ms)
    return (q3 - q1) / med if med > 0 else 0.0


def summarize(times_ms, batch):
    """Median and IQR of per-call milliseconds, and images per second at ``batch`` per call."""
    q1, med, q3 = quartiles(times_ms)
    return {"step_ms_median": float(med), "step_ms_iqr": float(q3 - q1), "images_per_s": float(batch / med * 1e3),
            "steps": len(times_ms), "unstable": bool(q3 - q1 > SPREAD_WARN * med)}
