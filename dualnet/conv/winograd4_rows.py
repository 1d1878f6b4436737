"""``"winograd4_rows"``: Winograd F(4x4, 3x3) a block of tiles at a time, for a CPU's caches:
:mod:`.winograd_rows` with output tiles of 4 (4x fewer multiplies than the direct convolution,
the float32 error of :mod:`.winograd4`, bounds in tests/test_winograd.py)."""
from __future__ import annotations

from .layout import CHWN
from .winograd_rows import backward, blocked_forward, supports

NAME = "winograd4_rows"
LAYOUT = CHWN

__all__ = ["NAME", "LAYOUT", "supports", "forward", "backward"]


def forward(x, W, b, g):
    """F(4x4, 3x3) on geometry ``g``: see :func:`dualnet.conv.winograd_rows.blocked_forward`."""
    return blocked_forward(x, W, b, g, 4)
