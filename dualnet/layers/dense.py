"""Layers on flat features: ``Flatten`` (N, ...) -> (N, D) and ``Affine`` (x @ W + b)."""
from __future__ import annotations

import math

from ..backend import namespace
from ..conv.layout import CHWN, layout_of
from ..errors import ShapeError
from .base import Layer, check_size


class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""
    per_sample = True

    def output_shape(self, shape):
        return (math.prod(shape),)

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return namespace(x).reshape(x, (x.shape[0], -1))

    def backward(self, dout):
        return namespace(dout).reshape(dout, self.x_shape)


class Affine(Layer):
    """out = x @ W + b, with x of any rank flattened to (N, in_features) and dx restored.

    W : (in_features, out_features);  b : (out_features,)
    """

    roles = {"W": "weight", "b": "bias"}
    per_sample = True
    backward_state = ("x2",)

    def __init__(self, in_features, out_features, **kw):
        self.in_features = check_size(in_features, "Affine in_features")
        self.out_features = check_size(out_features, "Affine out_features")
        super().__init__(**kw)

    def _kwargs(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    def output_shape(self, shape):
        n = math.prod(shape)
        if n != self.in_features:
            raise ShapeError(f"Affine expects {self.in_features} input features but gets input of "
                             f"shape {shape} ({n} features)")
        return (self.out_features,)

    def param_specs(self):
        return {"W": self._spec("W", (self.in_features, self.out_features), "normal", self.in_features),
                "b": self._spec("b", (self.out_features,), "zeros")}

    def forward(self, x, train=False):
        xp = namespace(x)
        W, b = self.params["W"], self.params["b"]
        self.x_shape = x.shape
        # x may be a batch-innermost map (dualnet.conv.layout): merging its (C, H, W) axes is a
        # view in either memory order, and matmul takes the transposed (N, D) matrix as it is
        x2 = xp.reshape(x, (x.shape[0], -1))
        if x2.shape[1] != W.shape[0]:
            raise ShapeError(f"Affine: input of shape {tuple(x.shape)} has {x2.shape[1]} features "
                             f"but W has shape {tuple(W.shape)} (expects {W.shape[0]})")
        self.x2 = x2
        self.batch_innermost = layout_of(x) == CHWN
        return xp.matmul(x2, W) + b

    def backward(self, dout):
        xp = namespace(dout)
        W = self.params["W"]
        self.grads["W"] = xp.matmul(xp.matrix_transpose(self.x2), dout)
        self.grads["b"] = xp.sum(dout, axis=0)
        if not self.need_dx:
            return None
        if self.batch_innermost:
            # dx as the transpose of W @ dout^T, a C-order (D, N): the input's batch-innermost
            # order again, so the ReLU and pooling before this layer work on operands of one
            # memory order (else each of their operations walks one operand across its strides)
            dx = xp.matrix_transpose(xp.matmul(W, xp.matrix_transpose(dout)))
        else:
            dx = xp.matmul(dout, xp.matrix_transpose(W))
        return xp.reshape(dx, self.x_shape)
