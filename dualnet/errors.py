"""Errors a user can cause, in one family.

Every error that bad input, a missing file or an unusable device can cause is a
:class:`DualnetError`: its message names both sides of the mismatch and the fix, in
terms of the Python argument (``lr=``, ``device=``, ``data_dir=``).  ``param``, when
set, names that argument, so the command line can add its flag.  ``exit_code`` is
what the ``dualnet`` command exits with.  Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

__all__ = ["DualnetError", "ConfigError", "SettingError", "ShapeError", "DTypeError", "DeviceError",
           "DataError", "CheckpointError", "TrainingDiverged"]


class DualnetError(Exception):
    """Base of the errors a user can cause; ``param`` names the argument at fault, if one is."""

    exit_code = 2

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


class ConfigError(DualnetError, ValueError):
    """An argument has a value the library cannot use (unknown name, out of range)."""


class SettingError(ConfigError):
    """A run setting that cannot be used as given, in a message a front end can word with its own
    names for the settings (the command line: its flags).

    ``compose(name)`` writes the message, calling ``name(setting)`` wherever it names a setting:
    ``str(error)`` names them as the library does (``batch_size``), :meth:`render` as the caller
    passes (``--batch-size``).  ``param`` is the setting at fault.
    """

    def __init__(self, compose, param=None):
        super().__init__(compose(str), param=param)
        self.compose = compose

    def render(self, name):
        """The message with every setting it names written as ``name(setting)``."""
        return self.compose(name)


class ShapeError(DualnetError, ValueError):
    """Arrays or layers whose shapes do not fit together; the message names both shapes."""


class DTypeError(DualnetError, TypeError):
    """An array of the wrong dtype; the message names both dtypes and the conversion."""


class DeviceError(DualnetError, RuntimeError):
    """A device that cannot be used, or an array on another device than the model's."""


class DataError(DualnetError, RuntimeError):
    """Data is missing or damaged; the message lists what was tried and how to fix it."""


class CheckpointError(DualnetError, ValueError):
    """A checkpoint cannot be read or does not fit; the message names the file and the problem."""


class TrainingDiverged(DualnetError, RuntimeError):
    """The loss became NaN or infinite; ``step`` is the 1-based global step where it first did."""

    exit_code = 3

    def __init__(self, step, epoch, value):
        self.step, self.epoch, self.value = step, epoch, value
        super().__init__(f"loss became {value} at step {step} (epoch {epoch}); "
                         f"lower the learning rate or use dtype='float64'", param="lr")
