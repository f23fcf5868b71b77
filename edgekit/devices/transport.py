"""The one transport protocol every device speaks, and the logic shared by all of them.

A transport moves files and runs commands on one device. Concrete transports
(``LocalTransport``, ``SshTransport``, ``AdbTransport``) implement a few primitives
(``_run`` a remote command line, ``_upload``/``_download`` raw bytes, ``stat``,
``identity``); everything else lives here once:

* ``push`` writes to a temporary name beside the target, verifies the sha256 *on the
  device*, then renames. The device hashes the temporary file while it grows (the
  follower, see ``edgekit/devices/hashing.py``; openssl when present, else sha256sum,
  which coreutils, busybox and toybox all have); the local file is hashed while it is
  read for the upload (or taken from the local sha256 cache). After the rename a
  sidecar ``.NAME.edgekit-sha256`` records the verified sha256 with the file's stat, so
  an unchanged file is recognised without hashing it again; a sidecar whose stat no
  longer matches is ignored and the file is hashed. An identical file already in place
  (same size and same sha256) is not sent again. An interrupted push leaves only the
  temporary name, which nothing reads as complete, and no new sidecar; the next push
  overwrites it and finishes.
* ``shell`` takes an argv list and quotes every element with :func:`shlex.quote`
  before it reaches a remote shell; a non-zero exit raises unless ``check=False``.
* ``free_bytes`` parses ``df -Pk`` the same way on toybox, busybox and coreutils.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, runtime_checkable

from edgekit.errors import (
    DeviceError,
    PermissionDenied,
    RuntimeMissing,
    StorageFull,
    TransportTimeout,
)
from edgekit.devices.hashing import (
    FOLLOW_BLOCK,
    FOLLOW_SCRIPT,
    FINALIZE_SCRIPT,
    PROBE_SCRIPT,
    SHA256_SCRIPT,
    SIDECAR_SUFFIX,
    WRITE_SIDECAR,
    RemoteFileState,
    UploadSource,
    cached_sha256,
    local_sha256,
    parse_probe,
    store_sha256,
)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

PART_SUFFIX = ".edgekit-part"
DEFAULT_RETRIES = 3


@dataclass(frozen=True)
class ShellResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class PushResult:
    sent: bool  # False: an identical file was already there
    sha256: str
    bytes: int
    seconds: float
    remote: str = ""


@dataclass(frozen=True)
class RemoteStat:
    size: int
    mode: int
    mtime: float
    is_dir: bool


@runtime_checkable
class Transport(Protocol):
    """What ``edgekit.devices.open_transport`` returns (see docs/contracts.md)."""

    name: str

    def push(self, local: str | os.PathLike, remote: str, progress: Progress | None = None,
             verify: bool = False) -> PushResult: ...
    def pull(self, remote: str, local: str | os.PathLike) -> None: ...
    def shell(self, argv: list[str], check: bool = True, timeout: float | None = None) -> ShellResult: ...
    def stat(self, remote: str) -> RemoteStat | None: ...
    def free_bytes(self, remote_dir: str) -> int: ...
    def identity(self) -> dict: ...
    def expand(self, remote: str) -> str: ...
    def close(self) -> None: ...


# --- quoting and parsing helpers ------------------------------------------------------


def quote_argv(argv: Iterable[str]) -> str:
    """One command line for a POSIX shell (sh, mksh, toybox, dash) with every word quoted."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv]
    for a in argv:
        if not isinstance(a, str):
            raise TypeError(f"shell arguments must be strings, got {type(a).__name__}: {a!r}")
        if "\x00" in a:
            raise ValueError("shell arguments cannot contain NUL bytes")
    if not argv:
        raise ValueError("empty argv")
    return " ".join(shlex.quote(a) for a in argv)


def parse_df_available_kb(text: str) -> int:
    """Available 1K blocks from ``df -Pk`` / ``df -k`` output (coreutils, busybox, toybox).

    The data line (possibly wrapped after a long file-system name) holds
    ``size used available use% mountpoint``; the available column is the number
    right before the first token that ends with ``%``.
    """
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"unexpected df output: {text!r}")
    tokens = " ".join(lines[1:]).split()
    for i, tok in enumerate(tokens):
        if tok.endswith("%") and i >= 1 and tokens[i - 1].isdigit():
            return int(tokens[i - 1])
    # toybox df without a Use% column would be odd, but be tolerant: 4th numeric field
    nums = [t for t in tokens if t.isdigit()]
    if len(nums) >= 3:
        return int(nums[2])
    raise ValueError(f"unexpected df output: {text!r}")


def parse_sha256sum(text: str) -> str:
    word = text.strip().split()[0] if text.strip() else ""
    if len(word) != 64 or any(c not in "0123456789abcdef" for c in word.lower()):
        raise ValueError(f"unexpected sha256sum output: {text!r}")
    return word.lower()


def classify_failure(what: str, res: ShellResult) -> DeviceError:
    """Map a failed command to the most specific error kind."""
    err = (res.stderr or res.stdout).strip()
    last = err.splitlines()[-1] if err else ""
    low = err.lower()
    msg = f"{what} failed (exit {res.exit_code})" + (f": {last}" if last else "")
    if "no space left" in low or "disk quota" in low:
        return StorageFull(msg)
    if "permission denied" in low or "read-only file system" in low or "operation not permitted" in low:
        return PermissionDenied(msg)
    if res.exit_code == 127 or ("not found" in low and ("command" in low or "inaccessible" in low)):
        return RuntimeMissing(msg, hint="install it on the device (`edgekit setup --device NAME`) or fix the path")
    if res.exit_code == 126:
        return PermissionDenied(msg, hint="the file is not executable for the device user")
    return DeviceError(msg)


def default_progress(label: str, stream=None) -> Progress | None:
    """A one-line progress bar on stderr when it is a terminal, else None."""
    stream = stream or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        return None
    state = {"last": 0.0, "t0": time.monotonic()}

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - state["last"] < 0.1:
            return
        state["last"] = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / max(now - state["t0"], 1e-6) / 1e6
        stream.write(f"\r{label} [{bar:<30}] {frac * 100:5.1f}% {done / 1e6:8.1f} MB {rate:6.1f} MB/s")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def with_retries(fn: Callable, transient: tuple[type[BaseException], ...], attempts: int = DEFAULT_RETRIES,
                 delay: float = 0.3, on_retry: Callable[[BaseException], None] | None = None):
    """Call ``fn()``; retry a bounded number of times on transient faults (connection reset)."""
    for i in range(attempts):
        try:
            return fn()
        except transient as exc:
            if i == attempts - 1:
                raise
            if on_retry is not None:
                on_retry(exc)
            time.sleep(delay * (2**i))
    raise AssertionError("unreachable")


# --- shared implementation ------------------------------------------------------------


class BaseTransport:
    """Shared push/free/sha logic on top of a few primitives a subclass provides."""

    name: str = "transport"
    kind: str = "base"

    def __init__(self, command_timeout: float = 900.0, connect_timeout: float = 10.0,
                 name: str | None = None, retries: int = 1):
        self.command_timeout = float(command_timeout)
        self.connect_timeout = float(connect_timeout)
        self._home: str | None = None
        if name is not None:
            self.name = name
        self.retries = max(1, int(retries))  # attempts of a push or connect that lost its link

    def _linux_identity(self, serial: str, timeout: float) -> dict:
        """identity() of a Linux machine reached through ``_run`` (a Pi over ssh, this host)."""
        ident = parse_kv(self._run(LINUX_IDENTITY_SCRIPT, timeout).stdout)
        ident["transport"] = self.kind
        ident["serial"] = serial
        return ident

    # primitives ------------------------------------------------------------------
    def _run(self, cmdline: str, timeout: float) -> ShellResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def _upload(self, source: UploadSource, remote: str, progress: Progress | None) -> None:  # pragma: no cover
        """Write the bytes of ``source`` (read them with ``source.open()``, once per attempt) to ``remote``."""
        raise NotImplementedError

    def _download(self, remote: str, local: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def stat(self, remote: str) -> RemoteStat | None:  # pragma: no cover
        raise NotImplementedError

    def identity(self) -> dict:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # shell ---------------------------------------------------------------------------
    def shell(self, argv: list[str], check: bool = True, timeout: float | None = None) -> ShellResult:
        """Run ``argv`` on the device, each element quoted; raise on non-zero unless check=False."""
        cmdline = quote_argv(argv)
        res = self._run(cmdline, self.command_timeout if timeout is None else float(timeout))
        if check and res.exit_code != 0:
            raise classify_failure(os.path.basename(str(argv[0])), res)
        return res

    def sh(self, script: str, *args: str, check: bool = True, timeout: float | None = None) -> ShellResult:
        """Run a fixed sh script with untrusted values passed as positional args ($1, $2...)."""
        return self.shell(["sh", "-c", script, "sh", *args], check=check, timeout=timeout)

    # paths ---------------------------------------------------------------------------
    def home(self) -> str:
        if self._home is None:
            res = self._run('printf %s "$HOME"', self.connect_timeout + 10)
            home = res.stdout.strip()
            if res.exit_code != 0 or not home.startswith("/"):
                raise DeviceError(f"{self.name}: cannot read $HOME on the device")
            self._home = home
        return self._home

    def expand(self, remote: str) -> str:
        """Expand a leading ``~`` (remote home) so paths can be quoted safely."""
        remote = os.fspath(remote)
        if remote == "~" or remote.startswith("~/"):
            return self.home() + remote[1:]
        return remote

    # file helpers --------------------------------------------------------------------
    def sha256(self, remote: str, timeout: float | None = None) -> str:
        res = self.sh(SHA256_SCRIPT, self.expand(remote), timeout=timeout)
        return parse_sha256sum(res.stdout)

    def makedirs(self, remote_dir: str) -> None:
        self.shell(["mkdir", "-p", self.expand(remote_dir)], timeout=self.connect_timeout + 30)

    def rename(self, src: str, dst: str) -> None:
        self.shell(["mv", "-f", self.expand(src), self.expand(dst)], timeout=self.connect_timeout + 30)

    def remove(self, remote: str) -> None:
        """Remove a file and the sidecar a push left beside it."""
        remote = self.expand(remote)
        self.shell(["rm", "-f", remote, self.sidecar_name(remote)], check=False, timeout=self.connect_timeout + 30)

    def free_bytes(self, remote_dir: str) -> int:
        """Free bytes on the file system holding ``remote_dir`` (or its nearest existing parent)."""
        script = 'd=$1; while [ ! -e "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done; df -Pk "$d" 2>/dev/null || df -k "$d"'
        res = self.sh(script, self.expand(remote_dir), timeout=self.connect_timeout + 30)
        try:
            return parse_df_available_kb(res.stdout) * 1024
        except ValueError as exc:
            raise DeviceError(f"{self.name}: cannot read free space: {exc}") from exc

    # push / pull ---------------------------------------------------------------------
    def part_name(self, remote: str) -> str:
        d, base = posixpath.split(remote)
        return posixpath.join(d, f".{base}{PART_SUFFIX}")

    def sidecar_name(self, remote: str) -> str:
        """``.NAME.edgekit-sha256``: the sha256 verified on the device, with the file's stat then."""
        d, base = posixpath.split(remote)
        return posixpath.join(d, f".{base}{SIDECAR_SUFFIX}")

    def _probe(self, remote: str) -> RemoteFileState | str:
        """One round trip: "missing", "dir", or the file's stat and what its sidecar vouches for."""
        res = self.sh(PROBE_SCRIPT, remote, self.sidecar_name(remote), timeout=self.connect_timeout + 30)
        try:
            return parse_probe(res.stdout)
        except ValueError as exc:
            raise DeviceError(f"{self.name}: cannot read the state of {remote}: {exc}") from exc

    def _write_sidecar(self, remote: str, digest: str) -> None:
        self.sh(WRITE_SIDECAR, remote, self.sidecar_name(remote), digest, check=False,
                timeout=self.connect_timeout + 30)

    def _start_follower(self, part: str, size: int) -> "_Follower":
        return _Follower(self, part, size)

    def push(self, local: str | os.PathLike, remote: str, progress: Progress | None = None,
             verify: bool = False) -> PushResult:
        """Push ``local`` to ``remote`` (a file path), verified on the device and atomic; skip when identical.

        An identical file is recognised by its sidecar (sha256 verified on the device at
        the last push, still matching the file's size, mtime, ctime and inode) or, without
        a trustworthy sidecar, by hashing it on the device. ``verify=True`` ignores the
        sidecar and rehashes the device's file, and after an upload reads the new file
        back in full once more.
        """
        local = os.fspath(local)
        if not os.path.isfile(local):
            from edgekit.errors import UsageError

            raise UsageError(f"{local}: no such file", hint="pass the path of a built bundle")
        t0 = time.monotonic()
        remote = self.expand(remote)
        lst = os.stat(local)
        lst_ns = time.time_ns()
        size = lst.st_size
        digest = cached_sha256(local, lst)
        hash_timeout = max(60.0, size / 20e6)  # 20 MB/s is slow for sha256 even on a phone
        state = self._probe(remote)
        if state == "dir":
            from edgekit.errors import UsageError

            raise UsageError(f"{self.name}:{remote} is a folder", hint="give the remote file path")
        if isinstance(state, RemoteFileState) and state.size == size:
            if digest is None:
                digest = local_sha256(local)
            if not verify and state.sidecar_sha is not None:
                if state.sidecar_sha == digest:
                    return PushResult(False, digest, size, time.monotonic() - t0, remote)
            elif self.sha256(remote, timeout=hash_timeout) == digest:
                self._write_sidecar(remote, digest)
                return PushResult(False, digest, size, time.monotonic() - t0, remote)
        parent = posixpath.dirname(remote) or "."
        self.makedirs(parent)
        part = self.part_name(remote)
        part_stat = self.stat(part)
        have = part_stat.size if part_stat is not None and not part_stat.is_dir else 0
        free = self.free_bytes(parent)
        need = size - have  # the old file stays until the rename, so it frees nothing meanwhile
        if free < need:
            raise StorageFull(
                f"{self.name}: {need / 1e6:.1f} MB needed in {parent}, {free / 1e6:.1f} MB free",
            )
        if have:
            self.remove(part)  # the follower must never read an older attempt's bytes
        source = UploadSource(local, known_sha=digest, known_stat=lst)  # hashes while reading unless cached
        follower = self._start_follower(part, size)
        restarted = [False]
        last = [0]

        def track(done: int, total: int) -> None:
            if done < last[0]:
                restarted[0] = True  # a retried upload rewrote the file: the follower's read is void
            last[0] = done
            if progress is not None:
                progress(done, total)

        try:
            self._upload(source, part, track)
        except BaseException:
            follower.cancel()
            raise
        sent_digest = source.digest()
        if sent_digest is None:
            follower.cancel()
            self.remove(part)
            raise DeviceError(f"{self.name}: {local} changed while it was pushed", hint="push again")
        if source.attempts > 1:
            restarted[0] = True
        digest = sent_digest
        store_sha256(local, lst, digest, before_ns=lst_ns)
        got = follower.result(timeout=hash_timeout)
        if got != digest or restarted[0] or verify:
            got = self.sha256(part, timeout=hash_timeout)  # read the whole file back once more
        if got != digest:
            self.remove(part)
            raise DeviceError(
                f"{self.name}: checksum mismatch after push to {remote} (device {got[:12]}, local {digest[:12]})",
                hint="push again; if it repeats, check the link and the device storage",
            )
        self.sh(FINALIZE_SCRIPT, part, remote, self.sidecar_name(remote), digest, timeout=self.connect_timeout + 30)
        return PushResult(True, digest, size, time.monotonic() - t0, remote)

    def pull(self, remote: str, local: str | os.PathLike) -> None:
        """Copy ``remote`` to ``local`` atomically (a partial download never has the final name)."""
        from edgekit.fsutil import atomic_path

        remote = self.expand(remote)
        with atomic_path(local) as tmp:
            self._download(remote, str(tmp))

    def pull_dir(self, remote_dir: str, local_dir: str | os.PathLike) -> list[str]:
        """Copy the plain files of one remote folder (not recursive). Returns their names."""
        remote_dir = self.expand(remote_dir)
        res = self.sh('cd "$1" && for f in * .[!.]*; do [ -f "$f" ] && printf "%s\\n" "$f"; done; true',
                      remote_dir, timeout=self.connect_timeout + 30)
        names = [n for n in res.stdout.splitlines() if n]
        os.makedirs(local_dir, exist_ok=True)
        for n in names:
            self.pull(posixpath.join(remote_dir, n), os.path.join(os.fspath(local_dir), n))
        return names


class _Follower:
    """FOLLOW_SCRIPT running on the device in a thread while the upload writes the part file."""

    def __init__(self, transport: BaseTransport, part: str, size: int, stall_s: int = 10):
        self._t = transport
        self._sha: str | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(part, size, stall_s),
                                        name="edgekit-follow", daemon=True)
        self._thread.start()

    def _run(self, part: str, size: int, stall_s: int) -> None:
        try:
            res = self._t.sh(FOLLOW_SCRIPT, part, str(size), str(FOLLOW_BLOCK), str(stall_s), check=False,
                             timeout=max(120.0, size / 5e6))
            if res.exit_code == 0 and "edgekit-follow done" in res.stderr and not self._cancelled.is_set():
                self._sha = parse_sha256sum(res.stdout)
        except Exception:  # any failure only means the file is hashed once more afterwards
            self._sha = None

    def cancel(self) -> None:
        self._cancelled.set()

    def result(self, timeout: float) -> str | None:
        self._thread.join(timeout)
        return None if self._thread.is_alive() or self._cancelled.is_set() else self._sha


def timeout_error(name: str, what: str, seconds: float) -> TransportTimeout:
    return TransportTimeout(f"{name}: {what} did not finish within {seconds:.0f} s")


# Identity of a Linux board or host, read with POSIX sh (used by ssh and local).
LINUX_IDENTITY_SCRIPT = r"""
kv() { printf '%s=%s\n' "$1" "$2"; }
model=""
[ -r /proc/device-tree/model ] && model=$(tr -d '\000' < /proc/device-tree/model)
[ -z "$model" ] && [ -r /sys/devices/virtual/dmi/id/product_name ] && model=$(cat /sys/devices/virtual/dmi/id/product_name 2>/dev/null)
kv model "$model"
soc=$(sed -n 's/^\(model name\|Hardware\|Model\)[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
kv soc "$soc"
os=""
[ -r /etc/os-release ] && os=$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release | tr -d '"')
kv os "$os"
kv kernel "$(uname -r)"
kv arch "$(uname -m)"
kv host "$(hostname 2>/dev/null || uname -n)"
kv cpus "$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
kv mem_total_kb "$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' /proc/meminfo 2>/dev/null)"
"""


def parse_kv(text: str) -> dict:
    out: dict = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out
