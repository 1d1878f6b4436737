"""Datasets as host NumPy arrays: digits (embedded), MNIST, Fashion-MNIST (IDX), CIFAR-10 (binary).

Every loader returns a :class:`Dataset` of float32 images scaled to [0, 1] (shape
(N, C, H, W), or (N, C*H*W) with ``flatten=True``) and int64 labels.  MNIST-style
files are looked up in ``data_dir``, then ``~/.cache/dualnet/<name>``, then Debian's
``/usr/share/datasets/<name>`` (package ``dataset-fashion-mnist``); missing files are
downloaded from the standard mirrors, checked by SHA-256 and cached.  Damaged files
raise :class:`DataError` naming the file and the problem; nothing half-written is kept.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, DataError, DualnetError
from .io import atomic_write

__all__ = ["Dataset", "DataError", "load_dataset", "DATASETS", "read_idx", "load_digits",
           "load_mnist", "load_cifar10", "fetch_file"]


@dataclass
class Dataset:
    """Train/test (and optional validation) split as host arrays.

    x_* : float32 (N, C, H, W) or (N, C*H*W);  t_* : int64 (N,) labels, or float32 (N, K) one-hot.
    """
    name: str
    x_train: np.ndarray
    t_train: np.ndarray
    x_test: np.ndarray
    t_test: np.ndarray
    num_classes: int
    x_val: np.ndarray | None = None
    t_val: np.ndarray | None = None
    source: str = ""
    classes: list = field(default_factory=list)

    @property
    def mirror_classes(self):
        """The classes whose left-right mirror images are still images of that class as the
        dataset draws them, so augmentation may flip them: clothes and objects, not digits,
        and not Fashion-MNIST's shoes (see :data:`MIRROR_CLASSES`)."""
        return MIRROR_CLASSES.get(self.name, ())

    @property
    def mirror_symmetric(self):
        """True when augmentation may mirror some classes (see :attr:`mirror_classes`)."""
        return bool(self.mirror_classes)

    @property
    def sample_shape(self):
        return tuple(self.x_train.shape[1:])

    def fingerprint(self):
        """A short digest of the splits (shapes, dtypes, labels and a sample of the images), so a
        resumed run can tell whether it has the data its checkpoint was trained on."""
        h = hashlib.sha256()
        for a in (self.x_train, self.t_train, self.x_test, self.t_test):
            step = max(1, a.shape[0] // 256)
            h.update(repr((tuple(a.shape), str(a.dtype))).encode())
            h.update(np.ascontiguousarray(a[::step]).tobytes())
        h.update(np.ascontiguousarray(self.t_train).tobytes())
        return h.hexdigest()[:20]

    def summary(self):
        s = f"{self.name}: train {self.x_train.shape[0]}, test {self.x_test.shape[0]}"
        if self.x_val is not None:
            s += f", validation {self.x_val.shape[0]}"
        return s + f", sample shape {self.sample_shape}, from {self.source}"


# --------------------------------------------------------------------------- file specs
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

# Accepted SHA-256 digests per file.  Fashion-MNIST: the upstream files, and Debian's
# package dataset-fashion-mnist (0.0~git20200523.55506a9-1), whose .gz files are
# recompressed (same images, other bytes).
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": {"440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"},
        "train-labels-idx1-ubyte.gz": {"3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"},
        "t10k-images-idx3-ubyte.gz": {"8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"},
        "t10k-labels-idx1-ubyte.gz": {"f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"},
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": {"3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                                       "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"},
        "train-labels-idx1-ubyte.gz": {"a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                                       "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"},
        "t10k-images-idx3-ubyte.gz": {"346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                                      "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"},
        "t10k-labels-idx1-ubyte.gz": {"67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                                      "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"},
    },
}

MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

MIRROR_CLASSES = {
    # Fashion-MNIST draws every sandal, sneaker and ankle boot (5, 7, 9) facing left: a mirrored
    # one is far from any test image (mean squared distance to the class mean, as drawn and
    # mirrored: sandal 40 / 56, sneaker 25 / 53, ankle boot 41 / 166) while the clothes and
    # bags change little (T-shirt 41 / 43, trouser 27 / 35, shirt 49 / 50).
    "fashion-mnist": (0, 1, 2, 3, 4, 6, 8),
    "cifar10": tuple(range(10)),   # photographs: left and right are alike in every class
}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cache_dir(name):
    return os.path.join(os.path.expanduser("~"), ".cache", "dualnet", name)


def system_dir(name):
    return os.path.join("/usr/share/datasets", name)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (optionally gzipped) into a NumPy array; raise DataError when damaged."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); delete it so it is fetched again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}; "
                        f"expected 0000 08 0N (unsigned bytes, N dimensions)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if len(raw) != expected:
        raise DataError(f"{path}: wrong length: header says shape {dims} ({expected} bytes) but the "
                        f"file has {len(raw)} bytes; the file is truncated or corrupt, delete it")
    try:
        return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    except ValueError as e:
        raise DataError(f"{path}: cannot read shape {dims} ({e}); the file is corrupt, delete it") from None


# --------------------------------------------------------------------------- downloads
def fetch_file(urls, dest, digests):
    """Download the first working URL to ``dest``, check SHA-256, and rename into place.

    A failed or mismatching download leaves nothing behind.  Returns ``dest``; raises
    DataError listing every URL tried.
    """
    errors = []
    for url in urls:
        tmp = dest + ".part"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                atomic_write(tmp, lambda f: _copy(r, f))
            got = sha256(tmp)
            if digests and got not in digests:
                raise DataError(f"checksum mismatch: got sha256 {got}")
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # network errors of every kind, and checksum failures
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError("download failed:\n  " + "\n  ".join(errors))


def _copy(src, dst):
    for block in iter(lambda: src.read(1 << 20), b""):
        dst.write(block)


def _find_mnist(name, data_dir, download):
    """Paths of the four IDX files of ``name``: first folder that has them all, else download."""
    candidates = [d for d in (data_dir, os.path.join(data_dir, name) if data_dir else None,
                              cache_dir(name), system_dir(name)) if d]
    user_dirs = candidates[:2] if data_dir else []
    if data_dir:
        data_dir = os.fspath(data_dir)
        if not os.path.isdir(data_dir):
            raise DataError(f"data_dir {data_dir} " + ("is a file" if os.path.exists(data_dir) else "does not exist")
                            + f"; pass the folder that holds the four {name} IDX .gz files "
                              f"({', '.join(MNIST_FILES)}), or leave data_dir out to use the cache "
                              f"or download", param="data_dir")
        for d in user_dirs:
            have = [f for f in MNIST_FILES if os.path.exists(os.path.join(d, f))]
            if have and len(have) < len(MNIST_FILES):
                missing = [f for f in MNIST_FILES if f not in have]
                raise DataError(f"{d} holds {', '.join(have)} but lacks {', '.join(missing)}; "
                                f"put all four {name} IDX .gz files there, or pass another data_dir",
                                param="data_dir")
    for d in candidates:
        paths = [os.path.join(d, f) for f in MNIST_FILES]
        if all(os.path.exists(p) for p in paths):
            # Files the user points at may be their own; the cache and Debian's must be the real ones.
            for p in paths if d not in user_dirs else ():
                got = sha256(p)
                known = SHA256[name][os.path.basename(p)]
                if got not in known:
                    raise DataError(f"{p}: checksum mismatch (sha256 {got}); the file is corrupt: "
                                    f"delete it so it is downloaded again")
            return paths, d
    tried = "\n  ".join(candidates)
    if not download:
        raise DataError(f"{name} not found; looked in:\n  {tried}\n"
                        f"Put the four IDX .gz files in a folder and pass it as data_dir"
                        + (", or install Debian's package: apt-get install dataset-fashion-mnist"
                           if name == "fashion-mnist" else ""), param="data_dir")
    dest = cache_dir(name)
    os.makedirs(dest, exist_ok=True)
    paths = []
    for f in MNIST_FILES:
        p = os.path.join(dest, f)
        if not os.path.exists(p):
            try:
                fetch_file([m + f for m in MIRRORS[name]], p, SHA256[name][f])
            except DataError as e:
                raise DataError(f"{name} not found; looked in:\n  {tried}\nand {e}\n"
                                f"Offline? Copy the IDX .gz files into one of those folders or pass "
                                f"their folder as data_dir" + (", or: apt-get install dataset-fashion-mnist"
                                                               if name == "fashion-mnist" else ""),
                                param="data_dir") from None
        paths.append(p)
    return paths, dest


# --------------------------------------------------------------------------- loaders
def _check_label_file(path, labels, num_classes):
    """Labels read from ``path`` must be integers in 0..num_classes-1 (a negative or too large
    label would become an all-zero one-hot row that silently contributes nothing)."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels have dtype {labels.dtype}; expected integer class indices "
                        f"(IDX type 0x08 unsigned bytes)")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{path}: label {lo if lo < 0 else hi} is out of range 0..{num_classes - 1}; "
                            f"the file is corrupt or not a {num_classes}-class label file")


def _finish(name, x_train, t_train, x_test, t_test, num_classes, source, normalize, flatten,
            one_hot, val_fraction, seed, classes=()):
    x_train = x_train.astype(np.float32)
    x_test = x_test.astype(np.float32)
    if normalize:
        scale = 1.0 / float(normalize) if not isinstance(normalize, bool) else 1.0 / 255.0
        x_train *= scale
        x_test *= scale
    if flatten:
        x_train = x_train.reshape(x_train.shape[0], -1)
        x_test = x_test.reshape(x_test.shape[0], -1)
    t_train = t_train.astype(np.int64)
    t_test = t_test.astype(np.int64)
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise DataError(f"{name} from {source}: the {'training' if x_train.shape[0] == 0 else 'test'} "
                        f"split is empty ({x_train.shape[0]} training, {x_test.shape[0]} test images)")
    x_val = t_val = None
    if val_fraction:
        if not 0 < val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}", param="val_fraction")
        perm = np.random.default_rng(seed).permutation(x_train.shape[0])
        n_val = int(round(val_fraction * x_train.shape[0]))
        if n_val < 1 or n_val >= x_train.shape[0]:
            n = x_train.shape[0]
            lo, hi = 1 / n, (n - 1) / n
            raise ConfigError(f"val_fraction={val_fraction} of the {n} training images leaves "
                              f"{n_val} for validation and {n - n_val} for training; both need at least "
                              f"one: pass a val_fraction between {lo:.2g} and {hi:.4g} (or 0 for none)",
                              param="val_fraction")
        x_val, t_val = x_train[perm[:n_val]], t_train[perm[:n_val]]
        x_train, t_train = x_train[perm[n_val:]], t_train[perm[n_val:]]
    if one_hot:
        eye = np.eye(num_classes, dtype=np.float32)
        t_train, t_test = eye[t_train], eye[t_test]
        t_val = eye[t_val] if t_val is not None else None
    return Dataset(name, x_train, t_train, x_test, t_test, num_classes, x_val, t_val, source, list(classes))


def load_digits(normalize=True, flatten=False, one_hot=False, val_fraction=0.0, seed=0, **_):
    """The bundled 8x8 digits (1797 images of the UCI optical-digits set, CC BY 4.0; see
    ``dualnet/datasets/README.md``), fixed split: 1497 train / 300 test."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets", "digits.npz")
    with np.load(path, allow_pickle=False) as z:
        x = z["images"].reshape(-1, 1, 8, 8)
        t = z["labels"]
    perm = np.random.default_rng(20240101).permutation(x.shape[0])  # fixed split, independent of seed
    tr, te = perm[:1497], perm[1497:]
    return _finish("digits", x[tr], t[tr], x[te], t[te], 10, "bundled (UCI optical digits, CC BY 4.0)",
                   16.0 if normalize else False, flatten, one_hot, val_fraction, seed,
                   [str(i) for i in range(10)])


def load_mnist(name="mnist", data_dir=None, normalize=True, flatten=False, one_hot=False,
               val_fraction=0.0, seed=0, download=True, **_):
    """MNIST or Fashion-MNIST from IDX .gz files (see the module docstring for the lookup)."""
    paths, where = _find_mnist(name, data_dir, download)
    xtr, ttr, xte, tte = (read_idx(p) for p in paths)
    for imgs, labels, pi, pl in ((xtr, ttr, paths[0], paths[1]), (xte, tte, paths[2], paths[3])):
        if imgs.ndim != 3 or labels.ndim != 1 or imgs.shape[0] != labels.shape[0]:
            raise DataError(f"{pi} has shape {imgs.shape} but {pl} has shape {labels.shape}; "
                            f"expected (N, 28, 28) images and (N,) labels of the same N")
        if imgs.shape[0] == 0:
            raise DataError(f"{pi} holds no images (shape {imgs.shape}); the file is empty or "
                            f"truncated: delete it or pass a data_dir with the real files", param="data_dir")
        _check_label_file(pl, labels, 10)
        if not np.all(np.isfinite(imgs)):
            raise DataError(f"{pi}: images hold NaN or inf; the file is corrupt, delete it")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{paths[0]} holds images of shape {xtr.shape[1:]} but {paths[2]} of shape "
                        f"{xte.shape[1:]}; the training and test images must have the same size")
    return _finish(name, xtr[:, None], ttr, xte[:, None], tte, 10, where, normalize, flatten,
                   one_hot, val_fraction, seed, FASHION_CLASSES if name == "fashion-mnist"
                   else [str(i) for i in range(10)])


CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_DIR = "cifar-10-batches-bin"


def _read_cifar_batch(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DataError(f"{path}: length {len(raw)} is not a multiple of the CIFAR-10 record size "
                        f"{CIFAR_RECORD}; the file is truncated or not a binary CIFAR-10 batch")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    _check_label_file(path, labels, 10)
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def _extract_cifar(tgz, dest, files):
    """Unpack the CIFAR-10 batches of ``tgz`` into ``dest`` (each file atomically); a damaged or
    truncated archive is a DataError naming it, and leaves no half-written batch."""
    class _Bad(Exception):
        pass

    def copy(src, f):
        try:
            block = src.read(1 << 20)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # reading the archive
            raise _Bad(e) from None
        while block:
            f.write(block)
            try:
                block = src.read(1 << 20)
            except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                raise _Bad(e) from None
    try:
        with tarfile.open(tgz) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and os.path.basename(m.name) in files]
            for m in members:
                src = tf.extractfile(m)
                atomic_write(os.path.join(dest, os.path.basename(m.name)), lambda f: copy(src, f))
    except DualnetError:
        raise  # a failed write (full disk, ...) names its own path
    except _Bad as e:
        raise DataError(f"{tgz}: damaged or truncated archive ({e}); delete it and download "
                        f"cifar-10-binary.tar.gz again", param="data_dir") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{tgz}: not a readable .tar.gz archive ({type(e).__name__}: {e}); delete it "
                        f"and download cifar-10-binary.tar.gz again", param="data_dir") from None


def load_cifar10(data_dir=None, normalize=True, flatten=False, one_hot=False, val_fraction=0.0,
                 seed=0, subtract_mean=False, **_):
    """CIFAR-10 from the official binary version (``cifar-10-batches-bin``), read without pickle.

    Looks in ``data_dir``, ``data_dir/cifar-10-batches-bin``, and the cache; also unpacks
    ``cifar-10-binary.tar.gz`` found there.  ``subtract_mean`` subtracts the training
    set's mean image from every split (CS231n's preprocessing).
    """
    candidates = []
    for base in (data_dir, cache_dir("cifar10")):
        if base:
            candidates += [base, os.path.join(base, CIFAR_DIR)]
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    found = None
    for d in candidates:
        if all(os.path.exists(os.path.join(d, f)) for f in files):
            found = d
            break
        tgz = os.path.join(d, "cifar-10-binary.tar.gz")
        if os.path.exists(tgz):
            dest = os.path.join(d, CIFAR_DIR)
            _extract_cifar(tgz, dest, files)
            if all(os.path.exists(os.path.join(dest, f)) for f in files):
                found = dest
                break
    if found is None:
        raise DataError("cifar10 not found; looked for data_batch_1..5.bin and test_batch.bin in:\n  "
                        + "\n  ".join(candidates or ["(no data_dir given)"])
                        + "\nDownload cifar-10-binary.tar.gz (the binary version) from the CIFAR-10 "
                          "page and pass its folder as data_dir", param="data_dir")
    parts = [_read_cifar_batch(os.path.join(found, f)) for f in files]
    xtr = np.concatenate([p[0] for p in parts[:5]])
    ttr = np.concatenate([p[1] for p in parts[:5]])
    ds = _finish("cifar10", xtr, ttr, parts[5][0], parts[5][1], 10, found, normalize, False,
                 one_hot, val_fraction, seed, CIFAR_CLASSES)
    if subtract_mean:
        mean = ds.x_train.mean(axis=0, keepdims=True)
        ds.x_train = ds.x_train - mean
        ds.x_test = ds.x_test - mean
        if ds.x_val is not None:
            ds.x_val = ds.x_val - mean
    if flatten:
        ds.x_train = ds.x_train.reshape(ds.x_train.shape[0], -1)
        ds.x_test = ds.x_test.reshape(ds.x_test.shape[0], -1)
        if ds.x_val is not None:
            ds.x_val = ds.x_val.reshape(ds.x_val.shape[0], -1)
    return ds


DATASETS = {
    "digits": load_digits,
    "mnist": lambda **kw: load_mnist("mnist", **kw),
    "fashion-mnist": lambda **kw: load_mnist("fashion-mnist", **kw),
    "cifar10": load_cifar10,
}


def load_dataset(name, **kwargs):
    """Load dataset ``name`` (one of :data:`DATASETS`); kwargs: data_dir, normalize, flatten,
    one_hot, val_fraction, seed, download, subtract_mean (CIFAR-10)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)
