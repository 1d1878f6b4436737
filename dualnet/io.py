"""Files: every write is atomic (a temporary file beside the target, then a rename), and JSON
is written in one place.  Used by checkpoints, datasets, plots, the bench and the studies.

A failed write (full disk, no permission, a file where a folder should be) raises
:class:`WriteError`, which names the path and the cause and leaves the old file intact.
:class:`RunDir` holds a run directory for one run: created if needed, checked writable
with a probe file, locked against a second run (a lock file holding the pid, released on
exit; a lock left by a dead process is taken over), and cleared of the temporary files a
killed write left behind.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile

from .errors import DualnetError

__all__ = ["atomic_write", "write_json", "read_json", "WriteError", "RunDir", "clean_stale_temps"]


class WriteError(DualnetError, OSError):
    """A file or folder could not be written; the message names the path, the cause and the fix.

    An :class:`OSError` too, so code that catches OSError keeps working."""

    def __init__(self, message, param=None, errno_=None):
        DualnetError.__init__(self, message, param)
        self.errno_ = errno_

    def __str__(self):
        return self.args[0] if self.args else ""


def _fix(e):
    """The usual fix for the OSError ``e`` of a write."""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that disk or write somewhere else"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable or write somewhere else"
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "a file stands where a folder is needed (or the reverse); choose another path"
    return "check the path and the disk, or write somewhere else"


def _cause(e):
    return e.strerror or str(e) or type(e).__name__


def write_error(path, e, param=None, what="cannot write"):
    """A :class:`WriteError` for the OSError ``e`` at ``path``."""
    if isinstance(e, WriteError):
        return e
    return WriteError(f"{what} {path}: {_cause(e)}; {_fix(e)}", param=param,
                      errno_=getattr(e, "errno", None))


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash or an error in ``write`` leaves the old file (if any) intact and no temporary
    file behind.  The result gets ordinary permissions (0666 less the umask).  An OSError
    (full disk, no permission, ...) becomes a :class:`WriteError` naming ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, DualnetError):
            raise write_error(path, e) from None
        raise
    return path


def write_json(path, doc):
    """Write ``doc`` as indented JSON to ``path`` atomically; returns ``path``."""
    data = json.dumps(doc, indent=2).encode()
    return atomic_write(path, lambda f: f.write(data))


def read_json(path):
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- run directories
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # atomic_write's temporary names


def clean_stale_temps(folder):
    """Remove the temporary files (``.NAME.XXXXXXXX.tmp``) that a write killed midway left in
    ``folder``; only call it while no other process writes there.  Returns the names removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        p = os.path.join(folder, name)
        if _TEMP.match(name) and os.path.isfile(p) and not os.path.islink(p):
            try:
                os.unlink(p)
                removed.append(name)
            except OSError:
                pass
    return removed


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


_HELD = {}  # realpath -> RunDir held by this process (a nested acquire of the same folder is free)


class RunDir:
    """Hold the run directory ``path`` for one run (a context manager).

    On entry: create the folder (and its parents), check it is writable by writing and
    removing a probe file, take its lock (``.dualnet.lock``: an exclusive ``flock`` on a file
    holding this pid; the kernel drops it when the process dies, so a lock left by a killed
    run is taken over), and remove the temporary files a killed write left there.  On exit:
    release the lock, remove the lock file, and remove the folder again if this run created
    it and wrote nothing.

    Raises :class:`WriteError` (a folder that cannot be created or written) and
    :class:`RunDirBusy` (another live process holds the lock), both with ``param``.
    """

    LOCK = ".dualnet.lock"

    def __init__(self, path, param="out_dir"):
        self.path = os.fspath(path)
        self.param = param
        self._fd = None
        self._nested = None
        self.created = False
        self.cleaned = []

    # -- what is there ------------------------------------------------------------
    def entries(self):
        """The names in the folder other than the lock file and stale temporary files."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        return sorted(n for n in names if n != self.LOCK and not _TEMP.match(n))

    # -- acquire / release --------------------------------------------------------
    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        real = os.path.realpath(self.path)
        if real in _HELD:  # this process holds it already (the CLI, then the Trainer)
            self._nested = _HELD[real]
            return self
        self._check_not_inside_a_live_run(real)
        try:
            self._check_usable()
            self._lock()
        except BaseException:
            self._remove_if_created_and_empty()
            raise
        _HELD[real] = self
        self._real = real
        self.cleaned = clean_stale_temps(self.path)
        return self

    def _check_not_inside_a_live_run(self, real):
        """Refuse a folder inside another live run's directory (its files would mix with that
        run's, and that run's --overwrite could remove them): checked before anything is created."""
        import fcntl
        d = os.path.dirname(real)
        while True:
            lock = os.path.join(d, self.LOCK)
            if d not in _HELD and os.path.isfile(lock):
                try:
                    fd = os.open(lock, os.O_RDONLY)
                except OSError:
                    fd = None
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free: a dead run's lock
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    except OSError:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").split()
                        raise RunDirBusy(f"run directory {self.path} lies inside {d}, the run directory "
                                         f"of another live run (process {holder[0] if holder else '?'}, "
                                         f"lock file {lock}); choose a {self.param} outside it",
                                         param=self.param) from None
                    finally:
                        os.close(fd)
            up = os.path.dirname(d)
            if up == d:
                return
            d = up

    def _check_usable(self):
        p = self.path
        if os.path.exists(p) and not os.path.isdir(p):
            raise WriteError(f"run directory {p} is a file, not a folder; choose another "
                             f"{self.param}", param=self.param)
        if not os.path.isdir(p):
            try:
                os.makedirs(p)
                self.created = True
            except FileExistsError:
                pass  # created meanwhile by someone else
            except OSError as e:
                raise write_error(p, e, self.param, "cannot create run directory") from None
        probe = os.path.join(p, f".dualnet-probe-{os.getpid()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"probe")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as e:
            try:
                os.unlink(probe)
            except OSError:
                pass
            raise write_error(p, e, self.param, "cannot write in run directory") from None

    def _lock(self):
        import fcntl
        lock = os.path.join(self.path, self.LOCK)
        for _ in range(10):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise write_error(lock, e, self.param, "cannot create lock file") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                try:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").split()
                finally:
                    os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise write_error(lock, e, self.param, "cannot lock") from None
                pid = holder[0] if holder else "?"
                raise RunDirBusy(f"run directory {self.path} is in use by another run (process "
                                 f"{pid}, lock file {lock}); wait for it to finish or choose another "
                                 f"{self.param}", param=self.param)
            # The file may have been removed (and recreated) by the holder releasing it between
            # our open and our flock: then we locked an orphan; try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = os.pread(fd, 64, 0).decode(errors="replace").split()
            self.stale_pid = int(old[0]) if old and old[0].isdigit() and not _pid_alive(int(old[0])) else None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd
            return
        raise RunDirBusy(f"run directory {self.path}: could not take its lock; choose another "
                         f"{self.param}", param=self.param)

    def release(self):
        if self._nested is not None:
            self._nested = None
            return
        if self._fd is None:
            return
        _HELD.pop(self._real, None)
        try:
            os.unlink(os.path.join(self.path, self.LOCK))  # while still holding it
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_if_created_and_empty()

    def _remove_if_created_and_empty(self):
        if self.created:
            try:
                if not os.listdir(self.path):
                    os.rmdir(self.path)
            except OSError:
                pass


class RunDirBusy(DualnetError):
    """Another live run holds the run directory's lock."""
