"""State folder, locking, process and port helpers shared by the stand-ins."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


class TargetsError(Exception):
    """A stand-in could not be started/stopped; the message says what to do."""


def state_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The state folder: explicit argument, else $EDGEKIT_TARGETS_DIR, else <repo>/.targets."""
    raw = explicit or os.environ.get("EDGEKIT_TARGETS_DIR") or (REPO / ".targets")
    return Path(raw).expanduser().resolve()


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TargetsError(f"{path} is unreadable ({exc}); run `scripts/targets down` and retry") from exc


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def locked(folder: Path, timeout: float = 120.0) -> Iterator[None]:
    """Exclusive lock on the state folder so two `up`/`down` never interleave."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TargetsError(f"{folder} is locked by another `scripts/targets` for {timeout:.0f} s")
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def free_port(avoid: range | None = None) -> int:
    """A currently free TCP port on loopback (never in the adb emulator scan range 5554-5585)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port >= 6000 and (avoid is None or port not in avoid):
            return port
    raise TargetsError("no free TCP port on 127.0.0.1")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def read_banner(port: int, timeout: float = 2.0) -> bytes:
    """First bytes a server sends on connect (b"" if it sends nothing in time)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.settimeout(timeout)
        try:
            return s.recv(64)
        except socket.timeout:
            return b""


def pid_alive(pid: int | None, expect: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, its command line contains ``expect``."""
    if not pid or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields and fields[0] == b"Z":
            return False
        if expect is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if expect.encode() not in f.read():
                    return False
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False
    return True


def stop_pid(pid: int | None, expect: str | None, grace: float = 5.0) -> bool:
    """SIGTERM ``pid`` (only if it still is the process we started), SIGKILL after ``grace``.

    Returns True if a process was stopped.
    """
    if not pid_alive(pid, expect):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        _reap(pid)
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            raise TargetsError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
