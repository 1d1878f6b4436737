"""Every seed dualnet derives from a run's one seed, in one place.

A run has one integer seed.  Each random stream it needs -- an epoch's shuffle, a step's dropout
masks, a batch's augmentation, a dropout layer, a data-parallel rank -- gets its own seed from it
here, by mixing in the stream's coordinates with distinct odd multipliers and reducing modulo
2**32 (what every generator accepts).  The formulas are part of the exactness contract: a resumed
run recomputes the same seeds for the same position, so they must not change.
"""
from __future__ import annotations

MOD = 2 ** 32

# Which stream of an epoch (:func:`epoch_seed`).
SHUFFLE, DROPOUT = 0, 1


def epoch_seed(seed, epoch, stream):
    """The seed of one epoch's random stream (``SHUFFLE`` or ``DROPOUT``)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + stream) % MOD


def step_seed(seed, epoch, step):
    """The seed of the dropout masks of step ``step`` (0-based, within the epoch) of ``epoch``."""
    return (epoch_seed(seed, epoch, DROPOUT) * 1_000_033 + int(step) * 104_729) % MOD


def batch_seed(shuffle_seed, batch):
    """The seed of batch ``batch``'s augmentation in the epoch whose shuffle seed is ``shuffle_seed``."""
    return (int(shuffle_seed) * 1_000_003 + int(batch) * 7919 + 17) % MOD


def layer_seed(seed, index):
    """The seed of the dropout layer at position ``index`` of a network seeded ``seed``
    (each layer its own stream)."""
    return int(seed) * 1009 + int(index)


def rank_seed(seed, rank):
    """A data-parallel rank's seed: ``seed`` itself on rank 0, so one process draws what a
    single-process run draws."""
    return (int(seed) + int(rank) * 0x9E3779B1) % MOD


def trial_seed(seed, index):
    """The seed of trial or epoch ``index`` of a study seeded ``seed``."""
    return int(seed) * 1000 + int(index)


# The book's scripts seed NumPy-style global streams; each helper of dualnet.book draws from its own.
_BOOK_OFFSETS = {"shuffle": 7_777_777, "trainer": 1_000_003}


def book_seed(seed, stream):
    """The seed of the book layer's ``stream`` (``"shuffle"``: ``shuffle_dataset``; ``"trainer"``:
    the book's Trainer's batch draws) for the script's seed ``seed``."""
    return int(seed) + _BOOK_OFFSETS[stream]
