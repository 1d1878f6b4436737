"""Checkpoints: parameters, buffers and optimizer state in one ``.npz``, no pickle.

The model's configuration and training metadata travel as a JSON string in the
``meta`` entry, so ``np.load(path, allow_pickle=False)`` reads everything.  Arrays
are copied to the host before saving, so a checkpoint trained on CUDA loads on a
CPU-only machine.  Files are written to a temporary name in the same folder and
renamed over the target, so a crash never leaves a half-written checkpoint.

A checkpoint is checked before anything is built from it: the JSON document's
structure (meta, model configuration, optimizer scalars), then every stored array's
name, shape, dtype and finiteness against what the configuration implies, so a
tampered configuration cannot make the loader allocate more than the file holds.
Every problem is a :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import errno
import json
import math
import numbers
import os
import stat
import zipfile

import numpy as np

from .errors import CheckpointError, DualnetError
from .io import atomic_write
from .layers import LAYERS
from .models import model_from_config

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "read_archive", "CheckpointError"]

FORMAT = "dualnet-checkpoint-1"
MAX_DIM = 2 ** 31  # no configured size may exceed this, whatever the file holds


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Save ``model`` (and ``optimizer`` state) to ``path`` (.npz) atomically.

    Parameters
    ----------
    meta : dict, optional
        JSON-ready training metadata (epoch, history, ...), returned by :func:`load_checkpoint`.

    Raises :class:`dualnet.io.WriteError` when the file cannot be written (the old one is kept).
    """
    dev = model.device
    arrays = {k: dev.to_numpy(v) for k, v in model.state().items()}
    doc = {"format": FORMAT, "model": model.config, "meta": meta or {}, "optimizer": None}
    if optimizer is not None:
        scalars, opt_arrays = optimizer.state_dict()
        doc["optimizer"] = scalars
        arrays.update({f"opt/{k}": dev.to_numpy(v) for k, v in opt_arrays.items()})
    arrays["meta"] = np.array(json.dumps(doc))
    atomic_write(path, lambda f: np.savez(f, **arrays))


# --------------------------------------------------------------------------- checks
def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class _Checker:
    def __init__(self, path):
        self.path = path

    def fail(self, why):
        return CheckpointError(f"checkpoint {self.path} is damaged or not a dualnet checkpoint: {why}; "
                               f"use another checkpoint (or retrain)")

    def obj(self, v, what):
        if not isinstance(v, dict):
            raise self.fail(f"{what} is {type(v).__name__} {_short(v)}, expected a JSON object")
        return v

    def int(self, v, what, lo=0, hi=MAX_DIM):
        if not _is_int(v) or not lo <= v < hi:
            raise self.fail(f"{what} is {_short(v)}, expected an integer in [{lo}, {hi})")
        return int(v)

    def num(self, v, what, finite=True):
        if not _is_num(v) or (finite and not math.isfinite(v)):
            raise self.fail(f"{what} is {_short(v)}, expected a finite number")
        return float(v)


def _short(v):
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


# The only words a layer's spec may hold besides numbers: MaxPooling's Keras-style pad="same".
_SPEC_WORDS = {"pad": ("same",)}


def _check_doc(c, doc):
    """The JSON document's structure: format, model configuration, meta, optimizer scalars."""
    c.obj(doc, "its metadata")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {c.path} has format {_short(doc.get('format'))}, expected {FORMAT!r}")
    model = c.obj(doc.get("model"), "the model configuration ('model')")
    _check_layer_specs(c, model)
    _check_model_settings(c, model)
    _check_meta(c, c.obj(doc.get("meta", {}), "'meta'"))
    if doc.get("optimizer") is not None:
        _check_optimizer_state(c, c.obj(doc["optimizer"], "the optimizer state"))


def _check_layer_specs(c, model):
    """Every layer's spec and the loss's: a known type, and only numbers (or sizes, or the words
    of ``_SPEC_WORDS``) in range -- a model is rebuilt from them before any array is read."""
    layers = model.get("layers")
    if not isinstance(layers, list) or not layers:
        raise c.fail(f"the model configuration has no list of layers (layers: {_short(layers)})")
    for i, spec in enumerate(layers + [model.get("loss")]):
        what = f"layer {i}" if i < len(layers) else "the loss"
        c.obj(spec, what)
        if spec.get("type") not in LAYERS:
            raise c.fail(f"{what} has type {_short(spec.get('type'))}; known: {', '.join(sorted(LAYERS))}")
        for k, v in spec.items():
            if v in _SPEC_WORDS.get(k, ()):
                continue
            if k != "type" and not (_is_num(v) or (isinstance(v, list) and all(_is_int(e) for e in v))):
                raise c.fail(f"{what} ({spec['type']}) has {k}={_short(v)}, expected a number")
            for e in (v if isinstance(v, list) else [v]):
                if _is_int(e):
                    c.int(e, f"{what} ({spec['type']}) {k}")
                elif _is_num(e):
                    c.num(e, f"{what} ({spec['type']}) {k}")


def _check_model_settings(c, model):
    """The model configuration besides its layers: input shape, dtype, seed, regularization,
    weight init and the named model's keyword arguments."""
    shape = model.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise c.fail(f"input_shape is {_short(shape)}, expected a list of sizes")
    for s in shape:
        c.int(s, "an input_shape entry", 1)
    if model.get("dtype") not in ("float32", "float64"):
        raise c.fail(f"dtype is {_short(model.get('dtype'))}, expected 'float32' or 'float64'")
    c.int(model.get("seed", 0), "the model seed", 0, 2 ** 63)
    wd = c.num(model.get("weight_decay", 0.0), "weight_decay")
    if wd < 0:
        raise c.fail(f"weight_decay is {wd}, expected >= 0")
    if model.get("regularization", "l2") not in ("l2", "l1"):
        raise c.fail(f"regularization is {_short(model.get('regularization'))}, expected 'l2' or 'l1'")
    wi = model.get("weight_init")
    if not (wi is None or wi in ("he", "xavier") or (_is_num(wi) and math.isfinite(wi) and wi > 0)):
        raise c.fail(f"weight_init is {_short(wi)}")
    if model.get("model_kwargs") is not None:
        c.obj(model["model_kwargs"], "model_kwargs")


def _check_meta(c, meta):
    """Training metadata: position counters, the run's config, history, and a partial epoch."""
    for k in ("epoch", "epoch_step", "step"):
        if k in meta:
            c.int(meta[k], f"meta {k}", 0, 2 ** 63)
    for k in ("config", "history", "partial"):
        if k in meta and meta[k] is not None:
            c.obj(meta[k], f"meta {k}")
    if "history" in meta:
        for k, v in meta["history"].items():
            if not isinstance(v, list) or not all(_is_num(e) for e in v):
                raise c.fail(f"history {k!r} is {_short(v)}, expected a list of numbers")
    if "iter_loss" in meta:
        v = meta["iter_loss"]
        if not isinstance(v, list) or not all(_is_num(e) for e in v):
            raise c.fail(f"iter_loss is {_short(v)}, expected a list of numbers")
    if "partial" in meta:
        for k in ("correct", "seen"):
            c.int(meta["partial"].get(k, 0), f"meta partial {k}", 0, 2 ** 63)
        c.num(meta["partial"].get("elapsed_s", 0.0), "meta partial elapsed_s")


def _check_optimizer_state(c, opt):
    """The optimizer's scalars: a known type, its step count, and every hyperparameter it needs,
    each one it can train with."""
    from .optimizers import OPTIMIZERS, hyper_problem
    known = {cls.__name__: cls for cls in OPTIMIZERS.values()}
    if opt.get("type") not in known:
        raise c.fail(f"the optimizer type is {_short(opt.get('type'))}; known: {', '.join(known)}")
    c.int(opt.get("t"), "the optimizer step count t", 0, 2 ** 63)
    for h in known[opt["type"]].hyper:
        if h not in opt:
            raise c.fail(f"the optimizer state has no {h!r}")
        c.num(opt[h], f"the optimizer's {h}")
        why = hyper_problem(h, opt[h])
        if why:
            raise c.fail(f"its {opt['type']} optimizer cannot train with these settings: {why}")


def _expected_arrays(spec):
    """Shapes of the arrays a layer spec implies (``param/NAME`` and ``buffer/NAME``), computed
    from the spec alone; None for a layer type whose arrays are not known here."""
    t = spec["type"]
    g = spec.get
    if t == "Affine":
        i, o = g("in_features"), g("out_features")
        return {"param/W": (i, o), "param/b": (o,)}
    if t == "Convolution":
        k = g("kernel_size")
        fh, fw = (k[0], k[1]) if isinstance(k, list) and len(k) == 2 else (k, k)
        return {"param/W": (g("out_channels"), g("in_channels"), fh, fw), "param/b": (g("out_channels"),)}
    if t == "BatchNormalization":
        d = (g("num_features"),)
        return {"param/gamma": d, "param/beta": d, "buffer/running_mean": d, "buffer/running_var": d}
    cls = LAYERS[t]
    from .layers import Layer
    if not getattr(cls, "roles", None) and getattr(cls, "_init_buffers", None) is Layer._init_buffers:
        return {}  # no parameters, no buffers
    return None


def _check_arrays(c, doc, arrays):
    """Every stored array against the configuration, before a model is built."""
    for k, a in arrays.items():
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            raise c.fail(f"array {k!r} has dtype {a.dtype}, expected float32 or float64")
        if not np.all(np.isfinite(a)):
            raise c.fail(f"array {k!r} holds non-finite values (NaN or inf)")
    model = doc["model"]
    expected, known = {}, True
    for i, spec in enumerate(model["layers"]):
        shapes = _expected_arrays(spec)
        if shapes is None:
            known = False
            continue
        for name, shape in shapes.items():
            kind, n = name.split("/", 1)
            if not all(_is_int(s) for s in shape):
                raise c.fail(f"layer {i} ({spec['type']}) has sizes {_short(shape)}")
            expected[f"{kind}/{i}.{n}"] = tuple(int(s) for s in shape)
    stored = {k: a for k, a in arrays.items() if not k.startswith("opt/")}
    for k, shape in expected.items():
        if k not in stored:
            raise c.fail(f"the configuration implies array {k!r} of shape {shape} but the file has "
                         f"no such array")
        if tuple(stored[k].shape) != shape:
            raise c.fail(f"array {k!r} has shape {tuple(stored[k].shape)} but the configuration "
                         f"implies {shape}")
    if known:
        extra = sorted(set(stored) - set(expected))
        if extra:
            raise c.fail(f"unexpected arrays {', '.join(extra)} for the configured layers")
    else:
        # Bound what an unknown layer may ask for by what the file holds.
        for spec in model["layers"]:
            sizes = [v for v in spec.values() if _is_int(v)]
            if sizes and math.prod(max(1, s) for s in sizes) > 4 * sum(a.size for a in stored.values()) + 1024:
                raise c.fail(f"layer {spec['type']} asks for sizes {sizes}, more than the file's arrays hold")

    params = {k[len("param/"):]: tuple(a.shape) for k, a in stored.items() if k.startswith("param/")}
    opt = doc.get("optimizer")
    slots = ()
    if opt is not None:
        from .optimizers import OPTIMIZERS
        cls = next(cls for cls in OPTIMIZERS.values() if cls.__name__ == opt["type"])
        slots = cls.slots
    for k, a in arrays.items():
        if not k.startswith("opt/"):
            continue
        parts = k.split("/", 2)
        if len(parts) != 3 or parts[1] not in slots:
            raise c.fail(f"optimizer array {k!r} is not a state of {opt['type'] if opt else 'any optimizer'}"
                         f" (its slots: {', '.join(slots) or 'none'})")
        if parts[2] not in params:
            raise c.fail(f"optimizer array {k!r} belongs to no parameter of the model")
        if tuple(a.shape) != params[parts[2]]:
            raise c.fail(f"optimizer array {k!r} has shape {tuple(a.shape)} but parameter "
                         f"{parts[2]!r} has shape {params[parts[2]]}")
        if parts[1] in cls.nonneg and a.size and float(a.min()) < 0:
            raise c.fail(f"optimizer array {k!r} holds negative values (down to {float(a.min()):g}), but "
                         f"{opt['type']}'s {parts[1]} sums squared gradients: it is never negative")


# The run settings a checkpoint's ``meta.config`` may hold (``dualnet train`` writes them and
# ``--resume`` continues with them): what each must be.
def _run_setting_problems(cfg):
    from .models import MODELS
    from .optimizers import OPTIMIZERS, hyper_problem

    def count(v, lo):
        return _is_int(v) and v >= lo

    rules = {
        "model": (lambda v: v in MODELS, f"one of {', '.join(MODELS)}"),
        "dataset": (lambda v: isinstance(v, str) and v != "", "a data set's name"),  # known ones: the CLI's
        "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        "epochs": (lambda v: count(v, 1), "an integer >= 1"),
        "batch_size": (lambda v: count(v, 1), "an integer >= 1"),
        "seed": (lambda v: count(v, 0), "an integer >= 0"),
        "lr": (lambda v: hyper_problem("lr", v) is None, "a number in (0, inf)"),
        "lr_decay": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
        "weight_decay": (lambda v: _is_num(v) and 0 <= v < math.inf, "a finite number >= 0"),
        "val_fraction": (lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
        "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
        "augment": (lambda v: isinstance(v, bool), "true or false"),
        "data_dir": (lambda v: isinstance(v, str), "a folder"),
    }
    for k, (ok, want) in rules.items():
        if cfg.get(k) is not None and not ok(cfg[k]):
            yield f"its run configuration has {k} {_short(cfg[k])}, expected {want}"


def _check_consistent(c, doc, arrays):
    """The checkpoint against itself: the arrays' dtype, the run configuration and the named
    model's settings (``model_kwargs``) against the stored layers.  Builds no array."""
    model, cfg = doc["model"], doc.get("meta", {}).get("config") or {}
    for why in _run_setting_problems(cfg):
        raise c.fail(why)
    for k, a in arrays.items():
        if a.dtype != np.dtype(model["dtype"]):
            raise c.fail(f"array {k!r} is {a.dtype} but the model configuration says dtype {model['dtype']}")
    facts = {"model": model.get("name"), "dtype": model["dtype"], "weight_decay": model.get("weight_decay", 0.0),
             "model_kwargs": model.get("model_kwargs")}
    for k, v in facts.items():
        if cfg.get(k) is not None and v is not None and cfg[k] != v:
            raise c.fail(f"its run configuration has {k} {_short(cfg[k])} but its model {_short(v)}")
    name = model.get("name")
    if name is None:
        return  # a network assembled by hand: its layers are all there is
    from .layers import specs_only
    from .models import MODELS
    if name not in MODELS:
        raise c.fail(f"its model is named {_short(name)}; known: {', '.join(MODELS)}")
    try:
        with specs_only():
            specs = [layer.spec() for layer in MODELS[name](**(model.get("model_kwargs") or {})).layers]
    except (DualnetError, TypeError, ValueError) as e:
        raise c.fail(f"its {name} settings (model_kwargs) do not build a {name}: {e}") from None
    specs = json.loads(json.dumps(specs))
    if specs != model["layers"]:
        diff = next((i for i, (a, b) in enumerate(zip(specs, model["layers"])) if a != b),
                    min(len(specs), len(model["layers"])))
        have = model["layers"][diff] if diff < len(model["layers"]) else "no layer"
        want = specs[diff] if diff < len(specs) else "no layer"
        raise c.fail(f"its {name} settings (model_kwargs) imply layer {diff} {_short(want)} but the "
                     f"stored layers have {_short(have)}")


# --------------------------------------------------------------------------- reading
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\x93NUMPY", "a single .npy array"), (b"\x80", "a pickle"),
          (b"\x1f\x8b", "a gzip file"), (b"%PDF", "a PDF document"), (b"\xff\xd8\xff", "a JPEG image"))


def _what_it_is(head):
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "a JSON (or other text) file"
    return "an empty file" if not head else "a file of another kind"


def read_archive(path, what="checkpoint"):
    """The arrays of the ``.npz`` (zip) archive ``path``, read without pickle, as host arrays.

    Every way a path can fail to be one is a :class:`CheckpointError` naming ``path`` and what it
    is instead: missing, a dangling symlink or a symlink loop, a folder, a file of another kind
    (NumPy alone would call a non-zip file "pickled data" and suggest ``allow_pickle``)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            why = ("is a symbolic link loop" if e.errno == errno.ELOOP else
                   f"is a symbolic link to {os.readlink(path)}, which does not exist")
        elif e.errno == errno.ELOOP:
            why = "lies under a symbolic link loop"
        elif e.errno in (errno.ENOENT, errno.ENOTDIR):
            why = "does not exist"
        else:
            why = f"cannot be read: {e.strerror or e}"
        raise CheckpointError(f"{what} {path} {why}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{what} {path} is a folder; pass the .npz file in it "
                              f"(e.g. {os.path.join(path, 'checkpoint.npz')})")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{what} {path} is not a readable dualnet .npz file: it is "
                                  f"{_what_it_is(head)}, not a checkpoint archive (a .npz zip file); "
                                  f"pass a .npz file that dualnet wrote")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{what} {path} is a damaged .npz archive ({type(e).__name__}: "
                              f"{str(e).split('. If you trust')[0]})") from None


def read_checkpoint(path):
    """Read and check a checkpoint into host arrays: returns ``(doc, arrays)``.

    Raises :class:`CheckpointError` naming ``path`` when the file is missing, unreadable, or
    its metadata or arrays do not fit each other (see the module docstring)."""
    path = os.fspath(path)
    arrays = read_archive(path, "checkpoint")
    if "meta" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry: not a dualnet checkpoint")
    c = _Checker(path)
    raw = arrays.pop("meta")
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise c.fail(f"its 'meta' entry is a {raw.dtype} array of shape {raw.shape}, not a JSON string")
    try:
        doc = json.loads(str(raw))
    except ValueError as e:
        raise c.fail(f"its 'meta' entry is not valid JSON ({e})") from None
    _check_doc(c, doc)
    _check_arrays(c, doc, arrays)
    _check_consistent(c, doc, arrays)
    return doc, arrays


def load_checkpoint(path, device="cpu", model=None, optimizer=None, dtype=None, conv_method=None):
    """Load a checkpoint onto ``device``.

    Parameters
    ----------
    model : Sequential, optional
        Load into this model (its shapes must match); otherwise one is rebuilt from the
        checkpoint's configuration.
    optimizer : Optimizer, optional
        Restore its state too.

    Returns
    -------
    model, meta : Sequential, dict
    """
    doc, arrays = read_checkpoint(path)
    if model is None:
        try:
            model = model_from_config(doc["model"], device=device, dtype=dtype, conv_method=conv_method)
        except DualnetError as e:
            if getattr(e, "param", None) in ("device", "conv_method", "dtype"):
                raise  # the caller's argument, not the file
            raise CheckpointError(f"checkpoint {path}: its model configuration cannot be built: {e}") from None
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: its model configuration cannot be built: "
                                  f"{type(e).__name__}: {e}") from None
    state = {k: v for k, v in arrays.items() if not k.startswith("opt/")}
    try:
        model.load_state(state)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    if optimizer is not None:
        scalars = doc.get("optimizer")
        if scalars is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state to resume from")
        opt_arrays = {k[4:]: v.astype(model.dtype) for k, v in arrays.items() if k.startswith("opt/")}
        try:
            optimizer.load_state_dict(scalars, opt_arrays, model.device)
        except CheckpointError:
            raise
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    return model, doc.get("meta", {})
