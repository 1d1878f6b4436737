"""Layers on (N, C, H, W) maps: ``Convolution`` (its methods are :mod:`dualnet.conv`),
``MaxPooling``, ``AvgPooling`` and the bilinear ``Resize``."""
from __future__ import annotations

import math

from .. import conv, functions as F
from ..backend import array_device, namespace
from ..errors import ConfigError, ShapeError
from .base import Layer, check_size


# --------------------------------------------------------------------------- convolution
class Convolution(Layer):
    """2-D convolution.

    W : (FN, C, FH, FW);  b : (FN,);  x : (N, C, H, W) -> out : (N, FN, OH, OW)

    ``method`` picks the algorithm (one of :func:`dualnet.conv.method_names`, default
    ``"auto"``: :func:`dualnet.conv.choose` for the input's geometry and the layer's device);
    ``"im2col"`` is the book's, the reference every other method is tested against.
    It is not part of :meth:`spec`: a checkpoint loads into any method.  Output sizes are
    floored (see :class:`dualnet.conv.ConvGeometry`).
    """

    roles = {"W": "weight", "b": "bias"}
    per_sample = True
    backward_state = ("saved",)   # the method's columns, grids or Winograd's V

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, method=None, **kw):
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        self.C, self.FN, self.FH, self.FW = (check_size(v, f"Convolution {n}") for v, n in (
            (in_channels, "in_channels"), (out_channels, "out_channels"), (k[0], "kernel height"),
            (k[1], "kernel width")))
        self.stride, self.pad = check_size(stride, "Convolution stride"), check_size(pad, "Convolution pad", 0)
        self.method = method or "auto"
        if self.method not in conv.method_names():
            raise ConfigError(f"unknown convolution method {method!r}; choose one of "
                              f"{', '.join(conv.method_names())}", param="method")
        super().__init__(**kw)

    def _kwargs(self):
        return {"in_channels": self.C, "out_channels": self.FN, "kernel_size": [self.FH, self.FW],
                "stride": self.stride, "pad": self.pad}

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.C:
            raise ShapeError(f"Convolution expects input (C={self.C}, H, W) per sample but gets {shape}")
        g = conv.ConvGeometry.of((1, *shape), (self.FN, self.C, self.FH, self.FW), self.stride, self.pad)
        conv.resolve(self.method, g)   # an explicit method that cannot run this geometry fails here
        return (self.FN, g.OH, g.OW)

    def param_specs(self):
        return {"W": self._spec("W", (self.FN, self.C, self.FH, self.FW), "normal", self.C * self.FH * self.FW),
                "b": self._spec("b", (self.FN,), "zeros")}

    def forward(self, x, train=False):
        # "auto" chooses by geometry and by whether the device is the host or launch-bound
        out, self.saved = conv.conv2d(x, self.params["W"], self.params["b"], self.stride, self.pad,
                                      self.method, host=self.device.is_host)
        return out

    def backward(self, dout):
        dx, self.grads["W"], self.grads["b"] = conv.conv2d_backward(
            dout, self.saved, self.params["W"], self.need_dx)
        return dx


# --------------------------------------------------------------------------- pooling
class _Pooling(Layer):
    per_sample = True

    def __init__(self, pool_h, pool_w=None, stride=None, pad=0, **kw):
        self.PH = check_size(pool_h, "pooling pool_h")
        self.PW = check_size(pool_w if pool_w is not None else pool_h, "pooling pool_w")
        self.stride = check_size(stride if stride is not None else self.PH, "pooling stride")
        self.pad = check_size(pad, "pooling pad", 0)
        super().__init__(**kw)

    def _kwargs(self):
        return {"pool_h": self.PH, "pool_w": self.PW, "stride": self.stride, "pad": self.pad}

    def output_shape(self, shape):
        """Floored output size, as in :class:`Convolution`."""
        if len(shape) != 3:
            raise ShapeError(f"{type(self).__name__} expects (C, H, W) per sample but gets {shape}")
        return (shape[0], F.output_size(shape[1], self.PH, self.stride, self.pad, "pooling"),
                F.output_size(shape[2], self.PW, self.stride, self.pad, "pooling"))


class MaxPooling(_Pooling):
    """Max over PH x PW windows per channel: (N, C, H, W) -> (N, C, OH, OW).

    ``pad="same"`` is Keras' ``padding='same'``: OH = ceil(H / stride), and the input is padded
    by max((OH - 1) * stride + PH - H, 0) rows in all, half on top and the odd one at the
    bottom (columns likewise, the odd one on the right), with -inf so padded cells never win.
    """
    backward_state = ("ctx",)

    def __init__(self, pool_h, pool_w=None, stride=None, pad=0, **kw):
        self.same = pad == "same"
        super().__init__(pool_h, pool_w, stride, 0 if self.same else pad, **kw)

    def _kwargs(self):
        return {**super()._kwargs(), **({"pad": "same"} if self.same else {})}

    def output_shape(self, shape):
        if not self.same:
            return super().output_shape(shape)
        if len(shape) != 3:
            raise ShapeError(f"MaxPooling expects (C, H, W) per sample but gets {shape}")
        return (shape[0], -(-shape[1] // self.stride), -(-shape[2] // self.stride))

    def _same_geometry(self, H, W):
        """(rows, cols, top, left): the padded size whose windows give ceil(H / stride) outputs
        exactly, and where the input sits in it (a negative total crops the unreached tail)."""
        rows = (-(-H // self.stride) - 1) * self.stride + self.PH
        cols = (-(-W // self.stride) - 1) * self.stride + self.PW
        return rows, cols, max(rows - H, 0) // 2, max(cols - W, 0) // 2

    @property
    def keeps_layout(self):
        return self.pad == 0 and not self.same   # a padded input is a new array in C order

    def forward(self, x, train=False):
        if not self.same:
            out, self.ctx = F.max_pool2d(x, self.PH, self.PW, self.stride, self.pad, record=train)
            return out
        N, C, H, W = x.shape
        rows, cols, top, left = self._same_geometry(H, W)
        self.x_shape, self.offset = tuple(x.shape), (top, left)
        xpad = _place(x, (N, C, rows, cols), top, left, -math.inf)
        out, self.ctx = F.max_pool2d(xpad, self.PH, self.PW, self.stride, 0, record=train)
        return out

    def backward(self, dout):
        dx = F.max_pool2d_backward(dout, self.ctx)
        if not self.same:
            return dx
        top, left = self.offset
        return _place(dx, self.x_shape, -top, -left, 0.0)  # the padding's gradient is dropped


def _place(a, shape, top, left, fill):
    """``a`` (N, C, H, W) inside a new array of ``shape`` filled with ``fill``, its first row at
    ``top`` and first column at ``left`` (negative: ``a`` starts above/left, cut off there)."""
    H, W, OH, OW = a.shape[2], a.shape[3], shape[2], shape[3]
    if (top, left) == (0, 0) and (H, W) == (OH, OW):
        return a
    xp = namespace(a)
    out = xp.full(shape, fill, dtype=a.dtype, device=array_device(a))
    r0, r1 = max(top, 0), min(top + H, OH)   # rows of ``out`` that ``a`` covers
    c0, c1 = max(left, 0), min(left + W, OW)
    out[:, :, r0:r1, c0:c1] = a[:, :, r0 - top:r1 - top, c0 - left:c1 - left]
    return out


class AvgPooling(_Pooling):
    """Mean over PH x PW windows per channel: (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return F.avg_pool2d(x, self.PH, self.PW, self.stride, self.pad)

    def backward(self, dout):
        return F.avg_pool2d_backward(dout, self.x_shape, self.PH, self.PW, self.stride, self.pad)


# --------------------------------------------------------------------------- resize
class Resize(Layer):
    """Bilinear resize of (N, C, H, W) maps to (N, C, height, width), as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres, edges clamped).

    Resizing is linear in x, one matrix per axis: out = Rh @ x @ Rwᵀ with Rh (height, H) and
    Rw (width, W), so backward is dx = Rhᵀ @ dout @ Rw -- two batched matmuls each way, no
    scatter.  It lets a network built for large images (AlexNet) train on small ones.
    """
    per_sample = True

    def __init__(self, height, width=None, **kw):
        self.height, self.width = int(height), int(width if width is not None else height)
        self._mats = {}
        super().__init__(**kw)

    def _kwargs(self):
        return {"height": self.height, "width": self.width}

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ShapeError(f"Resize expects (C, H, W) per sample but gets {shape}")
        return (shape[0], self.height, self.width)

    def _matrix(self, n_out, n_in, like):
        """(n_out, n_in) interpolation weights on the device and dtype of ``like`` (cached)."""
        key = (n_out, n_in, str(like.dtype), str(array_device(like)))
        if key not in self._mats:
            rows, scale = [], n_in / n_out
            for o in range(n_out):
                src = max((o + 0.5) * scale - 0.5, 0.0)
                i0 = min(int(src), n_in - 1)
                i1, frac = min(i0 + 1, n_in - 1), src - i0
                row = [0.0] * n_in
                row[i0] += 1.0 - frac
                row[i1] += frac
                rows.append(row)
            xp = namespace(like)
            self._mats[key] = xp.asarray(rows, dtype=like.dtype, device=array_device(like))
        return self._mats[key]

    def forward(self, x, train=False):
        xp = namespace(x)
        self.Rh = self._matrix(self.height, x.shape[2], x)
        self.Rw = self._matrix(self.width, x.shape[3], x)
        return xp.matmul(xp.matmul(self.Rh, x), xp.matrix_transpose(self.Rw))

    def backward(self, dout):
        xp = namespace(dout)
        return xp.matmul(xp.matmul(xp.matrix_transpose(self.Rh), dout), self.Rw)
