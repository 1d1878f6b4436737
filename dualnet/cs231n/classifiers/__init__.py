"""CS231n's ``cs231n.classifiers``: the two-layer net (``neural_net.TwoLayerNet``)."""
from .neural_net import TwoLayerNet

__all__ = ["TwoLayerNet"]
