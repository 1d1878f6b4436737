"""A PyTorch twin of a dualnet :class:`~dualnet.models.Sequential`, derived from its layers.

The bench times PyTorch on the same network (``--compare-torch``) and the tests check
dualnet's values against it; deriving the twin from the layers keeps the two from drifting
apart, where a hand-typed table could.  PyTorch is optional: callers pass the ``torch`` module.
"""
from __future__ import annotations

import math

__all__ = ["torch_twin"]


def torch_twin(torch, model, copy_weights=False):
    """``torch.nn.Sequential`` computing what ``model`` computes (softmax left to the loss).

    Parameters
    ----------
    torch : module
        The imported ``torch``.
    model : dualnet.models.Sequential
    copy_weights : bool
        Copy the parameters and batch-norm statistics (as float64 on the host, then the
        caller's ``.to(...)``); otherwise PyTorch's own initialization.

    Raises
    ------
    ValueError
        For a layer the twin does not know.
    """
    mods, shape = [], tuple(model.input_shape)
    for layer in model.layers:
        mods.append(_module(torch, layer, shape))
        shape = layer.output_shape(shape)
    net = torch.nn.Sequential(*mods).double()
    if copy_weights:
        with torch.no_grad():
            for layer, mod in zip(model.layers, mods):
                _copy(torch, model.device, layer, mod)
    return net


def _module(torch, layer, shape):
    """The ``torch.nn`` module of one dualnet layer whose per-sample input has ``shape``."""
    nn, name = torch.nn, type(layer).__name__
    simple = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Flatten": nn.Flatten}
    if name in simple:
        return simple[name]()
    if name == "Affine":  # dualnet's Affine flattens (C, H, W) samples itself; torch's Linear does not
        linear = nn.Linear(layer.in_features, layer.out_features)
        return linear if len(shape) == 1 else nn.Sequential(nn.Flatten(), linear)
    if name == "Convolution":
        return nn.Conv2d(layer.C, layer.FN, (layer.FH, layer.FW), layer.stride, layer.pad)
    if name == "MaxPooling" and getattr(layer, "same", False):
        rows, cols, top, left = layer._same_geometry(shape[1], shape[2])
        # F.pad's order is (left, right, top, bottom); a negative amount crops
        pad = (left, cols - shape[2] - left, top, rows - shape[1] - top)
        return nn.Sequential(nn.ConstantPad2d(pad, -math.inf),
                             nn.MaxPool2d((layer.PH, layer.PW), layer.stride))
    if name == "MaxPooling":
        return nn.MaxPool2d((layer.PH, layer.PW), layer.stride, layer.pad)
    if name == "BatchNormalization":
        bn = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return bn(layer.D, eps=layer.eps, momentum=1.0 - layer.momentum)  # torch weighs the batch
    if name == "Dropout":
        return nn.Dropout(layer.ratio)
    if name == "Resize":
        return nn.Upsample(size=(layer.height, layer.width), mode="bilinear", align_corners=False)
    raise ValueError(f"no PyTorch twin for layer {name}")


def _copy(torch, device, layer, mod):
    """Copy ``layer``'s parameters and buffers into ``mod`` (W transposed for a Linear)."""
    host = {k: torch.from_numpy(device.to_numpy(v).astype("float64"))
            for k, v in {**layer.params, **layer.buffers}.items()}
    name = type(layer).__name__
    if name == "Affine":
        mod = mod[-1] if isinstance(mod, torch.nn.Sequential) else mod   # after its Flatten
        mod.weight.copy_(host["W"].T)
        mod.bias.copy_(host["b"])
    elif name == "Convolution":
        mod.weight.copy_(host["W"])
        mod.bias.copy_(host["b"])
    elif name == "BatchNormalization":
        mod.weight.copy_(host["gamma"])
        mod.bias.copy_(host["beta"])
        mod.running_mean.copy_(host["running_mean"])
        mod.running_var.copy_(host["running_var"])
