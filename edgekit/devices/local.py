"""LocalTransport: this machine as a device (profile ``host``). No shell in between:
``shell(argv)`` runs argv directly; files are copied with the same verified, atomic
push as the remote transports."""

from __future__ import annotations

import os
import shutil
import signal
import stat as stat_mod
import subprocess

from edgekit.devices.transport import (
    BaseTransport,
    Progress,
    RemoteStat,
    UploadSource,
    ShellResult,
    classify_failure,
    timeout_error,
)
from edgekit.errors import DeviceError, PermissionDenied, RuntimeMissing, StorageFull

_CHUNK = 1 << 20


def _os_error(exc: OSError, what: str) -> DeviceError:
    import errno

    if exc.errno == errno.ENOSPC:
        return StorageFull(f"local: {what}: no space left on device")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"local: {what}: {exc.strerror}")
    return DeviceError(f"local: {what}: {exc.strerror or exc}")


class LocalTransport(BaseTransport):
    kind = "local"

    def __init__(self, name: str = "host", command_timeout: float = 900.0, connect_timeout: float = 5.0):
        super().__init__(command_timeout, connect_timeout, name=name)

    def _exec(self, argv: list[str], timeout: float) -> ShellResult:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # so a timeout kills the whole process group
            )
        except FileNotFoundError as exc:
            raise RuntimeMissing(f"{self.name}: {argv[0]}: command not found") from exc
        except PermissionError as exc:
            raise PermissionDenied(f"{self.name}: {argv[0]}: not executable") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise timeout_error(self.name, f"`{os.path.basename(argv[0])}`", timeout) from None
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        return ShellResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def _run(self, cmdline: str, timeout: float) -> ShellResult:
        return self._exec(["/bin/sh", "-c", cmdline], timeout)

    def shell(self, argv: list[str], check: bool = True, timeout: float | None = None) -> ShellResult:
        argv = [os.fspath(a) for a in argv]
        if not argv:
            raise ValueError("empty argv")
        res = self._exec(argv, self.command_timeout if timeout is None else float(timeout))
        if check and res.exit_code != 0:
            raise classify_failure(os.path.basename(argv[0]), res)
        return res

    def home(self) -> str:
        return os.path.expanduser("~")

    def expand(self, remote: str) -> str:
        return os.path.expanduser(os.fspath(remote))

    def stat(self, remote: str) -> RemoteStat | None:
        try:
            st = os.stat(self.expand(remote))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, f"stat {remote}") from exc
        return RemoteStat(st.st_size, st.st_mode, st.st_mtime, stat_mod.S_ISDIR(st.st_mode))

    def makedirs(self, remote_dir: str) -> None:
        try:
            os.makedirs(self.expand(remote_dir), exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"mkdir {remote_dir}") from exc

    def rename(self, src: str, dst: str) -> None:
        try:
            os.replace(self.expand(src), self.expand(dst))
        except OSError as exc:
            raise _os_error(exc, f"rename {src}") from exc

    def free_bytes(self, remote_dir: str) -> int:
        d = self.expand(remote_dir)
        while not os.path.exists(d) and d not in ("/", ""):
            d = os.path.dirname(d)
        st = os.statvfs(d or "/")
        return st.f_bavail * st.f_frsize

    def _upload(self, source: UploadSource, remote: str, progress: Progress | None) -> None:
        total = source.size
        done = 0
        try:
            with source.open() as src, open(remote, "wb") as dst:
                while True:
                    b = src.read(_CHUNK)
                    if not b:
                        break
                    dst.write(b)
                    done += len(b)
                    if progress:
                        progress(done, total)
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as exc:
            raise _os_error(exc, f"write {remote}") from exc
        if progress and total == 0:
            progress(0, 0)

    def _download(self, remote: str, local: str) -> None:
        try:
            shutil.copyfile(remote, local)
        except FileNotFoundError as exc:
            raise DeviceError(f"{self.name}: {remote}: no such file") from exc
        except OSError as exc:
            raise _os_error(exc, f"read {remote}") from exc

    def identity(self) -> dict:
        ident = self._linux_identity("", 20)
        ident["serial"] = ident.get("host", "")
        return ident
