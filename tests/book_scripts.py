"""Helpers of tests/test_book.py: learnable IDX data in the real MNIST format, and the book's
chapter 4-8 training and experiment scripts with only their imports swapped to ``dualnet.book``
(sizes cut down so each runs in about a second).

Each script is the book's loop as a reader would write it: NumPy on the host for batch
sampling, the book's class and function names for everything else.  The tests run them as
source text (``exec``) or as real files in a subprocess and read the variables they leave.
"""

import numpy as np

# The book's module paths; a script may import from these (behind ``dualnet.book.``) only.
BOOK_MODULES = {"dataset.mnist", "common.layers", "common.functions", "common.gradient",
                "common.optimizer", "common.util", "common.trainer", "common.multi_layer_net",
                "common.multi_layer_net_extend", "two_layer_net", "simple_convnet", "deep_convnet",
                "ch04.two_layer_net"}

# The import lines of the book's chapter 5-8 scripts (matplotlib's left out: the scripts here do
# not plot), as its repository has them.  optimizer_compare_mnist.py imports no numpy: its
# ``np.random.choice`` comes through ``from common.optimizer import *``.
BOOK_IMPORTS = {
    "CH5_GRADIENT_CHECK": ["import sys, os", "import numpy as np", "from dataset.mnist import load_mnist",
                           "from two_layer_net import TwoLayerNet"],
    "CH5_TRAIN_NEURALNET": ["import sys, os", "import numpy as np", "from dataset.mnist import load_mnist",
                            "from two_layer_net import TwoLayerNet"],
    "CH6_OPTIMIZER_COMPARE_NAIVE": ["import sys, os", "import numpy as np",
                                    "from collections import OrderedDict", "from common.optimizer import *"],
    "CH6_OPTIMIZER_COMPARE_MNIST": ["import os", "import sys", "from dataset.mnist import load_mnist",
                                    "from common.util import smooth_curve",
                                    "from common.multi_layer_net import MultiLayerNet",
                                    "from common.optimizer import *"],
    "CH6_WEIGHT_INIT_COMPARE": ["import os", "import sys", "import numpy as np",
                                "from dataset.mnist import load_mnist", "from common.util import smooth_curve",
                                "from common.multi_layer_net import MultiLayerNet",
                                "from common.optimizer import SGD"],
    "CH6_BATCH_NORM_TEST": ["import sys, os", "import numpy as np", "from dataset.mnist import load_mnist",
                            "from common.multi_layer_net_extend import MultiLayerNetExtend",
                            "from common.optimizer import SGD, Adam"],
    "CH6_OVERFIT_WEIGHT_DECAY": ["import os", "import sys", "import numpy as np",
                                 "from dataset.mnist import load_mnist",
                                 "from common.multi_layer_net import MultiLayerNet",
                                 "from common.optimizer import SGD"],
    "CH6_OVERFIT_DROPOUT": ["import os", "import sys", "import numpy as np",
                            "from dataset.mnist import load_mnist",
                            "from common.multi_layer_net_extend import MultiLayerNetExtend",
                            "from common.trainer import Trainer"],
    "CH6_HYPERPARAMETER_OPTIMIZATION": ["import sys, os", "import numpy as np",
                                        "from dataset.mnist import load_mnist",
                                        "from common.multi_layer_net import MultiLayerNet",
                                        "from common.util import shuffle_dataset",
                                        "from common.trainer import Trainer"],
    "CH7_TRAIN_CONVNET": ["import sys, os", "import numpy as np", "from dataset.mnist import load_mnist",
                          "from simple_convnet import SimpleConvNet", "from common.trainer import Trainer"],
    "CH8_TRAIN_DEEPNET": ["import sys, os", "import numpy as np", "from dataset.mnist import load_mnist",
                          "from deep_convnet import DeepConvNet", "from common.trainer import Trainer"],
}

# What ``from <module> import *`` gives a script in the book (it defines no __all__, so every
# public module-level name, its own imports included).  dataset.mnist's url_base, dataset_dir,
# save_file, download_mnist and init_mnist are left out: they name the book's download site and
# its mnist.pkl cache, which dualnet (IDX files, no pickle) does not have.
_FUNCTIONS = ["identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu", "relu_grad",
              "softmax", "sum_squared_error", "cross_entropy_error", "softmax_loss", "np"]
_LAYERS = _FUNCTIONS + ["im2col", "col2im", "Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout",
                        "BatchNormalization", "Convolution", "Pooling"]
_NET = _LAYERS + ["OrderedDict", "os", "sys"]
_OPTIMIZERS = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "np"]
BOOK_EXPORTS = {
    "common.functions": _FUNCTIONS,
    "common.gradient": ["np", "numerical_gradient", "numerical_gradient_2d"],
    "common.util": ["np", "smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im"],
    "common.optimizer": _OPTIMIZERS,
    "common.layers": _LAYERS,
    "common.trainer": _OPTIMIZERS + ["Trainer", "os", "sys"],
    "common.multi_layer_net": _NET + ["MultiLayerNet", "numerical_gradient"],
    "common.multi_layer_net_extend": _NET + ["MultiLayerNetExtend", "numerical_gradient"],
    "dataset.mnist": ["np", "os", "gzip", "pickle", "urllib", "load_mnist", "key_file", "train_num",
                      "test_num", "img_dim", "img_size"],
    "two_layer_net": _NET + ["TwoLayerNet", "numerical_gradient"],
    "simple_convnet": _NET + ["SimpleConvNet", "numerical_gradient", "pickle"],
    "deep_convnet": _NET + ["DeepConvNet", "pickle"],
    "ch04.two_layer_net": _FUNCTIONS + ["TwoLayerNet", "numerical_gradient", "os", "sys"],
}

# Ten blob centres on a 4 x 3 grid of the 28 x 28 image, one per class.
CENTRES = [(5 + 6 * (k // 3), 6 + 8 * (k % 3)) for k in range(10)]


def blob_images(n, seed):
    """``n`` learnable 28x28 uint8 images and their labels: class k is a bright Gaussian blob
    at centre k (jittered by up to 1 pixel) over faint noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:28, 0:28]
    imgs = np.empty((n, 28, 28))
    for i, k in enumerate(labels):
        cy, cx = CENTRES[k]
        cy, cx = cy + rng.integers(-1, 2), cx + rng.integers(-1, 2)
        imgs[i] = 220 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5 ** 2))
    imgs += rng.uniform(0, 35, imgs.shape)
    return np.clip(imgs, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_blob_mnist(folder, write_idx, n_train=600, n_test=200, seed=0):
    """The four MNIST IDX .gz files of blob images in ``folder`` (a pathlib.Path)."""
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ttr = blob_images(n_train, seed)
    xte, tte = blob_images(n_test, seed + 1)
    for name, a in (("train-images-idx3-ubyte.gz", xtr), ("train-labels-idx1-ubyte.gz", ttr),
                    ("t10k-images-idx3-ubyte.gz", xte), ("t10k-labels-idx1-ubyte.gz", tte)):
        write_idx(str(folder / name), a)
    return (xtr, ttr), (xte, tte)


# ------------------------------------------------------------------------- chapter 4
CH4_TRAIN_NEURALNET = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.ch04.two_layer_net import TwoLayerNet

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)
network = TwoLayerNet(input_size=784, hidden_size=50, output_size=10)

iters_num = 40
train_size = x_train.shape[0]
batch_size = 100
learning_rate = 2.0

train_loss_list = []
train_acc_list = []
test_acc_list = []
iter_per_epoch = max(train_size / batch_size, 1)

for i in range(iters_num):
    batch_mask = np.random.choice(train_size, batch_size)
    x_batch = x_train[batch_mask]
    t_batch = t_train[batch_mask]

    grad = network.gradient(x_batch, t_batch)

    for key in ('W1', 'b1', 'W2', 'b2'):
        network.params[key] -= learning_rate * grad[key]

    loss = network.loss(x_batch, t_batch)
    train_loss_list.append(loss)

    if i % iter_per_epoch == 0:
        train_acc = network.accuracy(x_train, t_train)
        test_acc = network.accuracy(x_test, t_test)
        train_acc_list.append(train_acc)
        test_acc_list.append(test_acc)
        print("train acc, test acc | " + str(train_acc) + ", " + str(test_acc))
'''

CH4_NUMERICAL_GRADIENT_STEPS = '''
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.ch04.two_layer_net import TwoLayerNet

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)
network = TwoLayerNet(input_size=784, hidden_size=1, output_size=10, weight_init_std=0.1)
x_batch, t_batch = x_train[:8], t_train[:8]
learning_rate = 0.5

loss_list = [network.loss(x_batch, t_batch)]
for i in range(1):
    grad = network.numerical_gradient(x_batch, t_batch)
    for key in ('W1', 'b1', 'W2', 'b2'):
        network.params[key] -= learning_rate * grad[key]
    loss_list.append(network.loss(x_batch, t_batch))
print(loss_list)
'''

# ------------------------------------------------------------------------- chapter 5
CH5_GRADIENT_CHECK = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.two_layer_net import TwoLayerNet

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)
network = TwoLayerNet(input_size=784, hidden_size=2, output_size=10, weight_init_std=0.1)

x_batch = x_train[:3]
t_batch = t_train[:3]

grad_numerical = network.numerical_gradient(x_batch, t_batch)
grad_backprop = network.gradient(x_batch, t_batch)

diffs = {}
for key in grad_numerical.keys():
    diff = np.average( np.abs(grad_backprop[key] - grad_numerical[key]) )
    diffs[key] = float(diff)
    print(key + ":" + str(diff))
'''

CH5_TRAIN_NEURALNET = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.two_layer_net import TwoLayerNet

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)

network = TwoLayerNet(input_size=784, hidden_size=50, output_size=10)

iters_num = 40
train_size = x_train.shape[0]
batch_size = 100
learning_rate = 0.5

train_loss_list = []
train_acc_list = []
test_acc_list = []

iter_per_epoch = max(train_size / batch_size, 1)

for i in range(iters_num):
    batch_mask = np.random.choice(train_size, batch_size)
    x_batch = x_train[batch_mask]
    t_batch = t_train[batch_mask]

    grad = network.gradient(x_batch, t_batch)

    for key in ('W1', 'b1', 'W2', 'b2'):
        network.params[key] -= learning_rate * grad[key]

    loss = network.loss(x_batch, t_batch)
    train_loss_list.append(loss)

    if i % iter_per_epoch == 0:
        train_acc = network.accuracy(x_train, t_train)
        test_acc = network.accuracy(x_test, t_test)
        train_acc_list.append(train_acc)
        test_acc_list.append(test_acc)
        print(train_acc, test_acc)
'''

# ------------------------------------------------------------------------- chapter 6
CH6_OPTIMIZER_COMPARE_NAIVE = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from collections import OrderedDict
from dualnet.book.common.optimizer import *


def f(x, y):
    return x**2 / 20.0 + y**2


def df(x, y):
    return x / 10.0, 2.0*y

init_pos = (-7.0, 2.0)
params = {}
params['x'], params['y'] = init_pos[0], init_pos[1]
grads = {}
grads['x'], grads['y'] = 0, 0

optimizers = OrderedDict()
optimizers["SGD"] = SGD(lr=0.95)
optimizers["Momentum"] = Momentum(lr=0.1)
optimizers["AdaGrad"] = AdaGrad(lr=1.5)
optimizers["Adam"] = Adam(lr=0.3)

paths = {}
for key in optimizers:
    optimizer = optimizers[key]
    x_history = []
    y_history = []
    params['x'], params['y'] = init_pos[0], init_pos[1]

    for i in range(30):
        x_history.append(params['x'])
        y_history.append(params['y'])

        grads['x'], grads['y'] = df(params['x'], params['y'])
        optimizer.update(params, grads)
    paths[key] = (x_history, y_history, params['x'], params['y'])
'''

CH6_OPTIMIZER_COMPARE_MNIST = '''
import os
import sys
sys.path.append(os.pardir)
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.common.util import smooth_curve
from dualnet.book.common.multi_layer_net import MultiLayerNet
from dualnet.book.common.optimizer import *

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)

train_size = x_train.shape[0]
batch_size = 64
max_iterations = 20

optimizers = {}
optimizers['SGD'] = SGD()
optimizers['Momentum'] = Momentum()
optimizers['AdaGrad'] = AdaGrad()
optimizers['Adam'] = Adam()

networks = {}
train_loss = {}
for key in optimizers.keys():
    networks[key] = MultiLayerNet(
        input_size=784, hidden_size_list=[20, 20],
        output_size=10)
    train_loss[key] = []

for i in range(max_iterations):
    batch_mask = np.random.choice(train_size, batch_size)
    x_batch = x_train[batch_mask]
    t_batch = t_train[batch_mask]

    for key in optimizers.keys():
        grads = networks[key].gradient(x_batch, t_batch)
        optimizers[key].update(networks[key].params, grads)

        loss = networks[key].loss(x_batch, t_batch)
        train_loss[key].append(loss)

    if i % 10 == 0:
        print( "===========" + "iteration:" + str(i) + "===========")
        for key in optimizers.keys():
            loss = networks[key].loss(x_batch, t_batch)
            print(key + ":" + str(loss))

smoothed = {key: smooth_curve(train_loss[key]) for key in optimizers.keys()}
'''

CH6_WEIGHT_INIT_COMPARE = '''
import os
import sys
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.common.util import smooth_curve
from dualnet.book.common.multi_layer_net import MultiLayerNet
from dualnet.book.common.optimizer import SGD

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)

train_size = x_train.shape[0]
batch_size = 64
max_iterations = 30

weight_init_types = {'std=0.01': 0.01, 'Xavier': 'sigmoid', 'He': 'relu'}
optimizer = SGD(lr=0.1)

networks = {}
train_loss = {}
for key, weight_type in weight_init_types.items():
    networks[key] = MultiLayerNet(input_size=784, hidden_size_list=[20, 20, 20, 20],
                                  output_size=10, weight_init_std=weight_type)
    train_loss[key] = []

for i in range(max_iterations):
    batch_mask = np.random.choice(train_size, batch_size)
    x_batch = x_train[batch_mask]
    t_batch = t_train[batch_mask]

    for key in weight_init_types.keys():
        grads = networks[key].gradient(x_batch, t_batch)
        optimizer.update(networks[key].params, grads)

        loss = networks[key].loss(x_batch, t_batch)
        train_loss[key].append(loss)
'''

CH6_BATCH_NORM_TEST = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.common.multi_layer_net_extend import MultiLayerNetExtend
from dualnet.book.common.optimizer import SGD, Adam

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)

x_train = x_train[:300]
t_train = t_train[:300]

max_epochs = 10
train_size = x_train.shape[0]
batch_size = 100
learning_rate = 0.3


def __train(weight_init_std):
    bn_network = MultiLayerNetExtend(input_size=784, hidden_size_list=[30, 30, 30], output_size=10,
                                    weight_init_std=weight_init_std, use_batchnorm=True)
    network = MultiLayerNetExtend(input_size=784, hidden_size_list=[30, 30, 30], output_size=10,
                                weight_init_std=weight_init_std)
    optimizer = SGD(lr=learning_rate)

    train_acc_list = []
    bn_train_acc_list = []

    iter_per_epoch = max(train_size / batch_size, 1)
    epoch_cnt = 0

    for i in range(1000000000):
        batch_mask = np.random.choice(train_size, batch_size)
        x_batch = x_train[batch_mask]
        t_batch = t_train[batch_mask]

        for _network in (bn_network, network):
            grads = _network.gradient(x_batch, t_batch)
            optimizer.update(_network.params, grads)

        if i % iter_per_epoch == 0:
            train_acc = network.accuracy(x_train, t_train)
            bn_train_acc = bn_network.accuracy(x_train, t_train)
            train_acc_list.append(train_acc)
            bn_train_acc_list.append(bn_train_acc)

            print("epoch:" + str(epoch_cnt) + " | " + str(train_acc) + " - " + str(bn_train_acc))

            epoch_cnt += 1
            if epoch_cnt >= max_epochs:
                break

    return train_acc_list, bn_train_acc_list


weight_scale_list = np.logspace(0, -4, num=16)[[12]]
results = {}
for i, w in enumerate(weight_scale_list):
    print( "============== " + str(i+1) + "/16" + " ==============")
    train_acc_list, bn_train_acc_list = __train(w)
    results[float(w)] = (train_acc_list, bn_train_acc_list)
'''

CH6_OVERFIT_WEIGHT_DECAY = '''
import os
import sys
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.common.multi_layer_net import MultiLayerNet
from dualnet.book.common.optimizer import SGD

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)
x_train = x_train[:300]
t_train = t_train[:300]

weight_decay_lambda = 0.1

network = MultiLayerNet(input_size=784, hidden_size_list=[50, 50, 50, 50, 50, 50], output_size=10,
                        weight_decay_lambda=weight_decay_lambda)
optimizer = SGD(lr=0.05)

max_epochs = 8
train_size = x_train.shape[0]
batch_size = 100

train_loss_list = []
train_acc_list = []
test_acc_list = []

iter_per_epoch = max(train_size / batch_size, 1)
epoch_cnt = 0

for i in range(1000000000):
    batch_mask = np.random.choice(train_size, batch_size)
    x_batch = x_train[batch_mask]
    t_batch = t_train[batch_mask]

    grads = network.gradient(x_batch, t_batch)
    optimizer.update(network.params, grads)

    if i % iter_per_epoch == 0:
        train_acc = network.accuracy(x_train, t_train)
        test_acc = network.accuracy(x_test, t_test)
        train_acc_list.append(train_acc)
        test_acc_list.append(test_acc)

        print("epoch:" + str(epoch_cnt) + ", train acc:" + str(train_acc) + ", test acc:" + str(test_acc))

        epoch_cnt += 1
        if epoch_cnt >= max_epochs:
            break
'''

CH6_OVERFIT_DROPOUT = '''
import os
import sys
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.common.multi_layer_net_extend import MultiLayerNetExtend
from dualnet.book.common.trainer import Trainer

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)
x_train = x_train[:300]
t_train = t_train[:300]

use_dropout = True
dropout_ratio = 0.2

network = MultiLayerNetExtend(input_size=784, hidden_size_list=[50, 50, 50, 50, 50, 50],
                              output_size=10, use_dropout=use_dropout, dropout_ration=dropout_ratio)
trainer = Trainer(network, x_train, t_train, x_test, t_test,
                  epochs=8, mini_batch_size=100,
                  optimizer='sgd', optimizer_param={'lr': 0.05}, verbose=True)
trainer.train()

train_acc_list, test_acc_list = trainer.train_acc_list, trainer.test_acc_list
'''

CH6_HYPERPARAMETER_OPTIMIZATION = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.common.multi_layer_net import MultiLayerNet
from dualnet.book.common.util import shuffle_dataset
from dualnet.book.common.trainer import Trainer

(x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)

x_train = x_train[:500]
t_train = t_train[:500]

validation_rate = 0.20
validation_num = int(x_train.shape[0] * validation_rate)
x_train, t_train = shuffle_dataset(x_train, t_train)
x_val = x_train[:validation_num]
t_val = t_train[:validation_num]
x_train = x_train[validation_num:]
t_train = t_train[validation_num:]


def __train(lr, weight_decay, epocs=4):
    network = MultiLayerNet(input_size=784, hidden_size_list=[30, 30],
                            output_size=10, weight_decay_lambda=weight_decay)
    trainer = Trainer(network, x_train, t_train, x_val, t_val,
                      epochs=epocs, mini_batch_size=100,
                      optimizer='sgd', optimizer_param={'lr': lr}, verbose=False)
    trainer.train()

    return trainer.test_acc_list, trainer.train_acc_list


optimization_trial = 4
results_val = {}
results_train = {}
for _ in range(optimization_trial):
    weight_decay = 10 ** np.random.uniform(-8, -4)
    lr = 10 ** np.random.uniform(-2, -0.5)

    val_acc_list, train_acc_list = __train(lr, weight_decay)
    print("val acc:" + str(val_acc_list[-1]) + " | lr:" + str(lr) + ", weight decay:" + str(weight_decay))
    key = "lr:" + str(lr) + ", weight decay:" + str(weight_decay)
    results_val[key] = val_acc_list
    results_train[key] = train_acc_list

best = sorted(results_val.items(), key=lambda x: x[1][-1], reverse=True)
'''

# ------------------------------------------------------------------------- chapters 7 and 8
CH7_TRAIN_CONVNET = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.simple_convnet import SimpleConvNet
from dualnet.book.common.trainer import Trainer

(x_train, t_train), (x_test, t_test) = load_mnist(flatten=False)

x_train, t_train = x_train[:300], t_train[:300]
x_test, t_test = x_test[:100], t_test[:100]

max_epochs = 4

network = SimpleConvNet(input_dim=(1,28,28),
                        conv_param = {'filter_num': 8, 'filter_size': 5, 'pad': 0, 'stride': 1},
                        hidden_size=30, output_size=10, weight_init_std=0.01)

trainer = Trainer(network, x_train, t_train, x_test, t_test,
                  epochs=max_epochs, mini_batch_size=50,
                  optimizer='Adam', optimizer_param={'lr': 0.01},
                  evaluate_sample_num_per_epoch=100)
trainer.train()

network.save_params("params.pkl")
print("Saved Network Parameters!")
'''

CH8_TRAIN_DEEPNET = '''
import sys, os
sys.path.append(os.pardir)
import numpy as np
from dualnet.book.dataset.mnist import load_mnist
from dualnet.book.deep_convnet import DeepConvNet
from dualnet.book.common.trainer import Trainer

(x_train, t_train), (x_test, t_test) = load_mnist(flatten=False)
x_train, t_train = x_train[:40], t_train[:40]
x_test, t_test = x_test[:20], t_test[:20]

network = DeepConvNet()
trainer = Trainer(network, x_train, t_train, x_test, t_test,
                  epochs=1, mini_batch_size=20,
                  optimizer='Adam', optimizer_param={'lr':0.001},
                  evaluate_sample_num_per_epoch=20)
trainer.train()

network.save_params("deep_convnet_params.pkl")
print("Saved Network Parameters!")
'''

SCRIPTS = {name: text for name, text in globals().items() if name.startswith("CH")}
