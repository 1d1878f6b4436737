"""One training run's configuration: its settings and their defaults, which of them a resumed run
must keep, the record written with the run, and how a run is reconciled with the checkpoint it
continues.

The contract:

- :class:`RunConfig` holds the settings a run is started with, by the library's names
  (``batch_size``, ``image_size``); ``None`` is a setting left out.  :meth:`RunConfig.resolved`
  decides every one: with a checkpoint, those left out take its run's values and a contradicting
  one is refused (:data:`FIXED_ON_RESUME`); then :data:`DEFAULTS` and the data set's defaults.
- The model options (``dropout``, ``batchnorm``, ``conv``, ``image_size``) are declared by the
  models (``run_options`` and ``run_kwargs`` in :mod:`dualnet.models`): this module repeats no
  model's signature.  A resumed run's model is the checkpoint's, so its options are only checked
  against it, never filled in.
- :meth:`RunConfig.record` is the dictionary written with the run, as ``config`` in
  ``metrics.json`` and in every checkpoint's ``meta``; :class:`CheckpointRun` reads it back.
  Its keys are fixed (old checkpoints resume): model, dataset, data_dir, data_fingerprint,
  device, device_name, epochs, batch_size, optimizer, lr, lr_decay, weight_decay, seed, dtype,
  val_fraction, num_params, processes, augment, mirror_classes, model_kwargs, conv.
- Every error a setting causes is a :class:`dualnet.errors.SettingError`, worded through a name
  function, so a front end names its own flags (``dualnet train``: ``--batch-size``).
"""
from __future__ import annotations

import dataclasses
import os

from .errors import CheckpointError, DataError, DeviceError, SettingError

__all__ = ["RunConfig", "CheckpointRun", "DEFAULTS", "FIXED_ON_RESUME", "MODEL_OPTIONS", "rank_settings"]

DEFAULTS = {"model": "simple_convnet", "dataset": "digits", "batch_size": 100, "optimizer": "adam",
            "lr_decay": 1.0, "weight_decay": 0.0, "seed": 0, "dtype": "float32", "val_fraction": 0.0,
            "augment": False}
# Defaults that depend on the data set: the small bundled digits train longer, at a higher lr.
EPOCHS_DIGITS, EPOCHS_OTHER = 20, 10
LR_DIGITS_ADAM = 0.003  # tuned for the small default run: >= 0.97 in 20 epochs

# The model options: settings whose meaning each model declares (dualnet.models.RUN_OPTIONS).
MODEL_OPTIONS = ("dropout", "batchnorm", "conv", "image_size")
# What a resumed run continues: a setting left out takes the checkpoint's value, a contradicting one
# is refused.  epochs, device, conv, data_dir (of the same data), log_every and out_dir may change.
FIXED_ON_RESUME = ("model", "dataset", "val_fraction", "batch_size", "optimizer", "lr", "lr_decay",
                   "weight_decay", "seed", "dtype", "augment", "dropout", "batchnorm", "image_size")
# What each rank of a data-parallel run has its own of: the rest of the record must agree.
PER_RANK = ("device", "device_name", "data_dir")


@dataclasses.dataclass
class RunConfig:
    """The settings of a training run; ``None`` leaves one to the checkpoint or the defaults."""

    model: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    val_fraction: float | None = None
    augment: bool | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None          # None after resolving: the optimizer's usual one
    lr_decay: float | None = None
    weight_decay: float | None = None
    seed: int | None = None
    dtype: str | None = None
    dropout: float | None = None     # the model options: None (a switch: None or True) is unset
    batchnorm: bool | None = None
    conv: str | None = None          # None: "auto"
    image_size: int | None = None
    device: str | None = None        # None: the checkpoint's where it is usable here, else "auto"

    @classmethod
    def names(cls):
        return tuple(f.name for f in dataclasses.fields(cls))

    def model_options(self):
        return {k: getattr(self, k) for k in MODEL_OPTIONS}

    def resolved(self, checkpoint=None):
        """A copy with every setting decided, for a new run or one continuing ``checkpoint`` (a
        :class:`CheckpointRun`).  Raises :class:`SettingError` for a setting that contradicts the
        checkpoint or that the model does not take, before anything is loaded."""
        from .models import MODELS
        c = dataclasses.replace(self)
        if checkpoint is not None:
            checkpoint.reconcile(c)
        for k, default in DEFAULTS.items():
            if getattr(c, k) is None:
                setattr(c, k, default)
        if c.model not in MODELS:
            raise SettingError(lambda n: f"unknown {n('model')} {c.model!r}; choose one of {', '.join(MODELS)}",
                               param="model")
        if c.data_dir is not None:
            c.data_dir = os.path.abspath(c.data_dir)  # recorded: a resumed run finds it from anywhere
        if c.epochs is None:
            c.epochs = EPOCHS_DIGITS if c.dataset == "digits" else EPOCHS_OTHER
        if c.lr is None and c.dataset == "digits" and c.optimizer == "adam":
            c.lr = LR_DIGITS_ADAM
        if checkpoint is None:
            MODELS[c.model].check_options(c.model_options())
        else:
            checkpoint.check_epochs(c.epochs)
        return c

    # -- what the run builds ---------------------------------------------------------
    def model_kwargs(self, sample_shape):
        """The model's constructor keywords for this run on samples of ``sample_shape``, as the
        model declares them (its ``run_kwargs``)."""
        from .models import MODELS
        return MODELS[self.model].run_kwargs(self.model_options(), tuple(sample_shape))

    def build_model(self, data, device):
        """A new model of this run for ``data`` (a :class:`dualnet.data.Dataset`) on ``device``."""
        from .models import build_model
        return build_model(self.model, data.sample_shape, data.num_classes, device=device, dtype=self.dtype,
                           seed=self.seed, weight_decay=self.weight_decay, **self.model_kwargs(data.sample_shape))

    def make_optimizer(self):
        from .optimizers import make_optimizer
        return make_optimizer(self.optimizer, self.lr)

    def augmentation(self, data):
        """The trainer's ``augment``: shifts of 2 pixels on 28x28 and 32x32, 1 on 8x8, and the
        classes that may be mirrored; None without augmentation."""
        return (max(1, round(data.sample_shape[-1] / 14)), data.mirror_classes) if self.augment else None

    def device_for(self, checkpoint=None):
        """``(device, note)``: the device setting, else the checkpoint's where it is usable here
        (else the best one here, with a note saying so), else ``"auto"``."""
        from .backend import get_device
        recorded = checkpoint.record.get("device") if checkpoint is not None else None
        if self.device is not None or not recorded:
            return get_device(self.device or "auto"), None
        try:
            return get_device(recorded), None
        except DeviceError as e:
            dev = get_device("auto")
            return dev, (f"note: the checkpoint was trained on {recorded}, which is not usable here ({e}); "
                         f"continuing on {dev.spec}, whose shuffles and dropout masks differ from that device's")

    # -- what is written -------------------------------------------------------------
    def record(self, *, fingerprint, data, device, model, lr, processes=1):
        """The run's record (module docstring): these settings with what they came to, the data's
        ``fingerprint``, the ``device``, the built ``model``, the optimizer's ``lr``."""
        return {"model": self.model, "dataset": self.dataset, "data_dir": self.data_dir,
                "data_fingerprint": fingerprint, "device": device.spec, "device_name": device.name,
                "epochs": self.epochs, "batch_size": self.batch_size, "optimizer": self.optimizer, "lr": lr,
                "lr_decay": self.lr_decay, "weight_decay": model.weight_decay, "seed": self.seed,
                "dtype": model.dtype, "val_fraction": self.val_fraction, "num_params": model.num_params(),
                "processes": processes, "augment": bool(self.augment),
                "mirror_classes": list(data.mirror_classes) if self.augment else [],
                "model_kwargs": dict(getattr(model, "model_kwargs", None) or {}), "conv": self.conv or "auto"}


def rank_settings(record, log_every, meta=None):
    """What every rank of a data-parallel run must share (``Comm.check_same``): the record but what
    each rank has its own of (its device; the data's folder, whose fingerprint must agree)."""
    return dict({k: v for k, v in record.items() if k not in PER_RANK}, log_every=log_every,
                resume_position=[meta.get(k) for k in ("epoch", "epoch_step", "step")] if meta else None)


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(abs(float(a)), abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def _is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _used(setting, value):
    """How a refusal describes the value the checkpoint's run used."""
    if setting == "batchnorm":
        return "batch normalization" if value else "no batch normalization"
    if setting == "image_size":
        return f"image size {value or 'of the data'}"
    return f"{setting} {value}"


class CheckpointRun:
    """What a checkpoint says about the run that wrote it: the run that continues it is
    reconciled with this.  ``doc`` is :func:`dualnet.checkpoint.read_checkpoint`'s document."""

    def __init__(self, doc, path):
        self.doc, self.path = doc, os.fspath(path)
        self.record = doc["meta"].get("config") or {}
        self.epochs_done = int(doc["meta"].get("epoch", 0))

    @classmethod
    def read(cls, path):
        from .checkpoint import read_checkpoint
        return cls(read_checkpoint(path)[0], path)

    def settings(self):
        """The fixed settings of the checkpoint's run (:data:`FIXED_ON_RESUME`): the record's,
        then what the weights and optimizer state are (dtype, weight decay, model, optimizer), and
        the model options its model was built with."""
        from .models import Sequential
        mc = self.doc["model"]
        used = {k: self.record[k] for k in FIXED_ON_RESUME if k in self.record}
        used["dtype"], used["weight_decay"] = mc["dtype"], mc["weight_decay"]
        if mc.get("name"):
            used["model"] = mc["name"]
        if self.doc.get("optimizer"):
            used["optimizer"] = self.doc["optimizer"]["type"].lower()
        options = Sequential.recorded_options(mc.get("model_kwargs") or {})
        used.update({k: options[k] for k in FIXED_ON_RESUME if k in options})
        return {k: used[k] for k in FIXED_ON_RESUME if k in used}  # checked in this order

    def reconcile(self, config):
        """Fill ``config``'s settings left out from the checkpoint's run (not the model options:
        the resumed model is the checkpoint's); refuse one that contradicts it."""
        from .data import DATASETS
        dataset = self.record.get("dataset")
        if dataset is not None and dataset not in DATASETS:
            raise CheckpointError(f"checkpoint {self.path} records dataset {dataset!r}, none of {', '.join(DATASETS)}")
        for k, have in self.settings().items():
            given = getattr(config, k)
            if given is not None and not _same(given, have):
                raise self._contradiction(k, given, have)
            if given is None and k not in MODEL_OPTIONS:
                setattr(config, k, have)
        if config.data_dir is None and self.record.get("data_dir"):
            config.data_dir = self.record["data_dir"]
        if config.epochs is None and _is_count(self.record.get("epochs")):
            config.epochs = self.record["epochs"]

    def _contradiction(self, k, given, have):
        value = "" if isinstance(given, bool) else f" {given}"
        return SettingError(lambda n: f"{n(k)}{value} contradicts checkpoint {self.path}, whose run used "
                                      f"{_used(k, have)}; leave {n(k)} out to continue that run exactly, or "
                                      f"start a new run (another {n('out_dir')})", param=k)

    def check_epochs(self, epochs):
        done = self.epochs_done
        if epochs < done:
            raise SettingError(lambda n: f"{n('epochs')} {epochs} is fewer than the {done} epochs checkpoint "
                                         f"{self.path} has already trained; pass {n('epochs')} {done + 1} or "
                                         f"more to continue it", param="epochs")

    def check_data(self, data, fingerprint, config):
        """Refuse data other than the checkpoint's run was trained on (its ``fingerprint``)."""
        if self.record.get("data_fingerprint") not in (None, fingerprint):
            raise DataError(f"the {config.dataset} data loaded from {data.source} is not the data checkpoint "
                            f"{self.path} was trained on (data_dir {self.record.get('data_dir') or 'not given'}, "
                            f"val_fraction {self.record.get('val_fraction')}); pass the data_dir of that run",
                            param="data_dir")

    def check_model(self, model, data, config):
        """Refuse a loaded model whose samples or classes are not the data's."""
        if model.input_shape != tuple(data.sample_shape) or model.output_shape[-1] != data.num_classes:
            raise SettingError(lambda n: f"checkpoint {self.path} holds a model for samples {model.input_shape} "
                                         f"and {model.output_shape[-1]} classes but {config.dataset} has "
                                         f"{data.sample_shape} and {data.num_classes}; pass the {n('dataset')} "
                                         f"it was trained on", param="dataset")
