"""``"winograd4"``: Winograd F(4x4, 3x3), 4x fewer multiplies than the direct convolution and a
larger float32 rounding error than F(2x2, 3x3) (bounds in tests/test_winograd.py).  The
algorithm is :mod:`.winograd`'s with output tiles of 4."""
from __future__ import annotations

from .layout import NCHW
from .winograd import backward, supports, winograd_forward

NAME = "winograd4"
LAYOUT = NCHW

__all__ = ["NAME", "LAYOUT", "supports", "forward", "backward"]


def forward(x, W, b, g):
    """F(4x4, 3x3) on geometry ``g``: see :func:`dualnet.conv.winograd.winograd_forward`."""
    return winograd_forward(x, W, b, g.pad, 4)
