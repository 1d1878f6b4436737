"""The geometry of one convolution, computed once and shared by every method.

Output sizes are floored, as in the book, PyTorch and Keras: ``OH = (H + 2*pad - FH) // stride + 1``.
When the stride does not divide ``H + 2*pad - FH``, the last ``(H + 2*pad - FH) % stride`` rows of
the padded input are never reached by a window: they take no part in the output and get a zero
gradient.  Only a window larger than the padded input is an error.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, ShapeError
from ..functions import output_size

__all__ = ["ConvGeometry"]


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of a convolution of x (N, C, H, W) with W (FN, C, FH, FW) at ``stride``, ``pad``.

    Build it with :meth:`of`; ``OH``, ``OW`` are the (floored) output height and width.
    """

    N: int
    C: int
    H: int
    W: int
    FN: int
    FH: int
    FW: int
    stride: int
    pad: int
    OH: int
    OW: int

    @classmethod
    def of(cls, x_shape, W_shape, stride=1, pad=0):
        """The geometry of input shape ``x_shape`` and filter shape ``W_shape``; raises
        :class:`~dualnet.errors.ShapeError` when they do not fit together."""
        x_shape, W_shape = tuple(int(s) for s in x_shape), tuple(int(s) for s in W_shape)
        if len(x_shape) != 4:
            raise ShapeError(f"convolution expects input (N, C, H, W), got shape {x_shape}")
        if len(W_shape) != 4:
            raise ShapeError(f"convolution expects filters (FN, C, FH, FW), got shape {W_shape}")
        N, C, H, W = x_shape
        FN, C2, FH, FW = W_shape
        if C != C2:
            raise ShapeError(f"convolution: input has {C} channels (shape {x_shape}) but "
                             f"the filters expect {C2} (W shape {W_shape})")
        stride, pad = int(stride), int(pad)
        if stride < 1 or pad < 0:
            raise ConfigError(f"convolution: stride must be >= 1 and pad >= 0, got stride {stride}, pad {pad}")
        return cls(N, C, H, W, FN, FH, FW, stride, pad,
                   output_size(H, FH, stride, pad, "convolution"), output_size(W, FW, stride, pad, "convolution"))

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def W_shape(self):
        return (self.FN, self.C, self.FH, self.FW)

    @property
    def out_shape(self):
        return (self.N, self.FN, self.OH, self.OW)

    @property
    def K(self):
        """Rows of a column matrix: C*FH*FW, one per (channel, tap)."""
        return self.C * self.FH * self.FW

    @property
    def taps(self):
        """FH*FW, the filter offsets."""
        return self.FH * self.FW
