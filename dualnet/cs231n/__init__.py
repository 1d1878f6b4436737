"""Stanford CS231n's assignment-1 modules on dualnet, on any device.

The two-layer-net notebook (``two_layer_net.ipynb``) runs with only its four import lines
changed::

    from cs231n.classifiers.neural_net import TwoLayerNet
        ->  from dualnet.cs231n.classifiers.neural_net import TwoLayerNet
    from cs231n.gradient_check import eval_numerical_gradient
        ->  from dualnet.cs231n.gradient_check import eval_numerical_gradient
    from cs231n.data_utils import load_CIFAR10
        ->  from dualnet.cs231n.data_utils import load_CIFAR10
    from cs231n.vis_utils import visualize_grid
        ->  from dualnet.cs231n.vis_utils import visualize_grid

Same names, arguments, defaults and numbers as the course's (the toy model seeded with
``np.random.seed(0)`` gives the published scores and loss); the code is dualnet's own.

The device comes from ``DUALNET_DEVICE`` (``cpu`` by default, ``cuda``, ``sim``, ... as in
:mod:`dualnet.book`; ``DUALNET_DTYPE=float32`` trains in single precision).  What the notebook
gets back -- losses, gradients, scores, predictions, ``net.params[...]`` -- is host NumPy (float64
where it is a float), because the notebook applies NumPy to it; see
:class:`~dualnet.cs231n.classifiers.neural_net.TwoLayerNet` for what crossing costs and where.
"""
