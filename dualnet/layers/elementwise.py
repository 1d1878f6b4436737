"""Layers applied element by element, to input of any shape: the activations ``ReLU``,
``Sigmoid``, ``Tanh`` (which keep their input's memory order) and inverted ``Dropout``."""
from __future__ import annotations

from .. import functions as F
from ..backend import namespace
from ..errors import ConfigError
from .base import Layer


class ReLU(Layer):
    per_sample = True
    keeps_layout = True
    backward_state = ("out",)

    def forward(self, x, train=False):
        # One pass forward (an inference needs no more); the backward's mask comes from the
        # output, out > 0 exactly where x > 0, as a float 0/1 mask: a multiply by it is cheaper
        # than where() in NumPy, and the array API multiplies no booleans (measured against
        # a mask kept from the forward in docs/convolution.md, "Smaller choices").
        self.out = F.relu(x)
        return self.out

    def backward(self, dout):
        xp = namespace(dout)
        return dout * xp.astype(self.out > 0, dout.dtype)


class Sigmoid(Layer):
    per_sample = True
    keeps_layout = True
    backward_state = ("out",)

    def forward(self, x, train=False):
        self.out = F.sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * self.out * (1.0 - self.out)


class Tanh(Layer):
    per_sample = True
    keeps_layout = True
    backward_state = ("out",)

    def forward(self, x, train=False):
        self.out = F.tanh(x)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out * self.out)


class Dropout(Layer):
    """Inverted dropout: in training keep each unit with probability 1 - ratio and scale by
    1/(1 - ratio), so evaluation is the identity.  Masks are drawn on the layer's device by
    ``self.rng`` (seeded by ``seed``; :meth:`set_seed` re-seeds it)."""
    per_sample = True

    def __init__(self, ratio=0.5, **kw):
        if not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(f"dropout ratio must be in [0, 1), got {ratio}", param="dropout")
        self.ratio = float(ratio)
        super().__init__(**kw)
        self.set_seed(kw.get("seed", 0))

    def _kwargs(self):
        return {"ratio": self.ratio}

    def set_seed(self, seed):
        """Re-seed the device generator that draws the masks (training does this every step).

        The generator is made once per device and then only re-seeded: on CuPy a new generator
        is a cuRAND generator created, and later destroyed, per step."""
        self.seed = int(seed)
        if getattr(self, "_rng", None) is not None and self._rng_device is self._device:
            self._rng.reseed(self.seed)
        elif self._device is not None:  # built (a model re-seeds after building): make it now
            self._rng, self._rng_device = self._device.rng(self.seed), self._device
        else:
            self._rng = None  # made on first use, once the layer's device is resolved

    @property
    def rng(self):
        """The device generator of the masks (made on the layer's device at first use)."""
        if self._rng is None or self._rng_device is not self.device:
            self._rng, self._rng_device = self.device.rng(self.seed), self.device
        return self._rng

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        self.set_seed(self.seed)  # a generator of the new device, if it changed
        return self

    def forward(self, x, train=False):
        self.mask = None
        if not train or self.ratio == 0.0:
            return x
        self.mask = self.rng.uniform(tuple(x.shape), x.dtype) >= self.ratio
        return F.dropout(x, self.mask, self.ratio)

    def backward(self, dout):
        return dout if self.mask is None else F.dropout(dout, self.mask, self.ratio)
