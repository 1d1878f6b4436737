"""CS231n's ``cs231n/vis_utils.py``: lay a stack of images out on one grid (for ``imshow``)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError

__all__ = ["visualize_grid"]


def visualize_grid(Xs, ubound=255.0, padding=1):
    """Images side by side on a square grid, each rescaled to [0, ubound] on its own.

    Parameters
    ----------
    Xs : array (N, H, W, C), host NumPy (or anything ``np.asarray`` takes)
    ubound : float, the value each image's maximum is mapped to (its minimum goes to 0)
    padding : int, blank (zero) pixels between neighbouring images

    Returns
    -------
    grid : float64 array (G*H + (G-1)*padding, G*W + (G-1)*padding, C), G = ceil(sqrt(N)),
        filled row by row; a constant image shows as zeros (it has no range to stretch).
    """
    Xs = np.asarray(Xs, dtype=np.float64)
    if Xs.ndim != 4:
        raise ShapeError(f"visualize_grid takes images (N, H, W, C) but got shape {Xs.shape}; "
                         f"e.g. W1.reshape(32, 32, 3, -1).transpose(3, 0, 1, 2)")
    N, H, W, C = Xs.shape
    G = math.ceil(math.sqrt(N))
    pad = int(padding)
    grid = np.zeros((G * H + (G - 1) * pad, G * W + (G - 1) * pad, C))
    for k in range(N):
        r, c = divmod(k, G)
        img = Xs[k]
        lo, span = img.min(), img.max() - img.min()
        y0, x0 = r * (H + pad), c * (W + pad)
        grid[y0:y0 + H, x0:x0 + W] = ubound * (img - lo) / span if span > 0 else 0.0
    return grid
