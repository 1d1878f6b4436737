"""Files: every write is atomic (a temporary file beside the target, then a rename), and JSON
is written in one place.  Used by checkpoints, datasets, plots, the bench and the studies."""
from __future__ import annotations

import json
import os
import tempfile

__all__ = ["atomic_write", "write_json", "read_json"]


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash or an error in ``write`` leaves the old file (if any) intact and no temporary
    file behind.  The result gets ordinary permissions (0666 less the umask).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_json(path, doc):
    """Write ``doc`` as indented JSON to ``path`` atomically; returns ``path``."""
    data = json.dumps(doc, indent=2).encode()
    return atomic_write(path, lambda f: f.write(data))


def read_json(path):
    with open(path) as f:
        return json.load(f)
