"""Checkpoints: parameters, buffers and optimizer state in one ``.npz``, no pickle.

The model's configuration and training metadata travel as a JSON string in the
``meta`` entry, so ``np.load(path, allow_pickle=False)`` reads everything.  Arrays
are copied to the host before saving, so a checkpoint trained on CUDA loads on a
CPU-only machine.  Files are written to a temporary name in the same folder and
renamed over the target, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .errors import CheckpointError
from .io import atomic_write
from .models import model_from_config

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "CheckpointError"]

FORMAT = "dualnet-checkpoint-1"


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Save ``model`` (and ``optimizer`` state) to ``path`` (.npz) atomically.

    Parameters
    ----------
    meta : dict, optional
        JSON-ready training metadata (epoch, history, ...), returned by :func:`load_checkpoint`.
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


def read_checkpoint(path):
    """Read a checkpoint into host arrays: returns ``(doc, arrays)``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable dualnet .npz file ({e})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no 'meta' entry: not a dualnet checkpoint")
    doc = json.loads(str(arrays.pop("meta")))
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {doc.get('format')!r}, expected {FORMAT!r}")
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
        model = model_from_config(doc["model"], device=device, dtype=dtype, conv_method=conv_method)
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
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    return model, doc.get("meta", {})
