"""``dualnet study NAME``: the experiments of *Deep Learning from Scratch* ch. 6-8 and CS231n.

One module per study; each writes PNG plots and ``NAME.json`` (the numbers behind the
plots, the data used, the device) into ``out``, runs on any device, and has a ``quick``
mode for a 2-core CPU in under a minute.  Data: MNIST when its files are present (never
downloaded here), else Fashion-MNIST (``data_dir``, cache, or Debian's package), else
the embedded 8x8 digits; ``dataset=`` forces one of them (:func:`common.study_data`).
Long studies show a progress bar in a terminal and print nothing extra into a log.
"""
from __future__ import annotations

import os
import time

from ..backend import get_device
from ..io import write_json
from .batchnorm import study_batchnorm
from .common import DATASETS
from .cs231n import study_cs231n
from .filters import study_filters
from .init import study_init
from .optimizers import study_optimizers
from .overfit import study_overfit
from .search import study_search

__all__ = ["STUDIES", "DATASETS", "run_study"]

STUDIES = {"optimizers": study_optimizers, "init": study_init, "batchnorm": study_batchnorm,
           "overfit": study_overfit, "search": study_search, "filters": study_filters,
           "cs231n": study_cs231n}


def run_study(name, device="auto", quick=False, out="studies-out", data_dir=None, seed=0, workers=None,
              dataset="auto"):
    """Run one study; returns its JSON document (also written to ``out/NAME.json``).

    ``dataset`` is one of :data:`DATASETS`: ``"auto"`` picks MNIST, else Fashion-MNIST, else
    the bundled digits; a name forces that set (``cs231n`` always uses CIFAR-10).
    """
    dev = get_device(device)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    doc = STUDIES[name](dev, out, quick, data_dir, seed, workers=workers, dataset=dataset)
    doc.update(study=name, quick=quick, device=dev.spec, device_name=dev.name, seconds=time.perf_counter() - t0)
    write_json(os.path.join(out, f"{name}.json"), doc)
    return doc
