"""Small file-system helpers shared by every layer: atomic writes, hashing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgekit.errors import OutputNotWritable, ResourceError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _raise_os(exc: OSError, path: Path) -> None:
    if exc.errno == errno.ENOSPC:
        raise ResourceError(f"disk full while writing {path}") from exc
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        raise OutputNotWritable(f"cannot write {path}: {exc.strerror}") from exc
    raise exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed, so nothing half-written is
    ever found under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        os.close(fd)
    except OSError as exc:
        _raise_os(exc, path)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        _raise_os(exc, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            _raise_os(exc, Path(path))
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def partial_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new ``.<name>.partial-<pid>-*`` folder in ``parent`` (mode 0700), after removing the
    partial folders of ``name`` that processes now gone left behind (:func:`sweep_stale`)."""
    sweep_stale(parent, name)
    return Path(tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=parent))


def sweep_stale(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove ``.<name>.partial-<pid>-*`` and ``.<name>.old-<pid>`` folders in ``parent`` whose process
    is gone (a build killed outright cannot clean up: a full-size checkpoint's is 15 GB). Folders
    of live processes, and those without a pid in their name, are left. Returns what was removed."""
    pat = re.compile(rf"^\.{re.escape(name)}\.(?:partial|old)-(\d+)(?:-|$)")
    gone = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return gone
    for p in entries:
        m = pat.match(p.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place on success.

    An existing folder at ``path`` is replaced only after the new one is complete.
    A failed or interrupted build leaves only a ``.<name>.partial-*`` folder that
    no reader takes as complete.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_dir(path.parent, path.name)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    except OSError as exc:
        _raise_os(exc, path)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
