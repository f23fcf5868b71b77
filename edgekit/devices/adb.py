"""AdbTransport: an Android phone through the adb server, with adbutils.

edgekit talks only to the adb server (like ``adb`` itself). Commands use the
``shell,v2`` service, which carries stdout, stderr and the exit code separately
(adbutils' plain ``shell()`` drops the exit code); devices without ``shell_v2``
fall back to the raw shell with an exit-code marker. Files move with the sync
protocol (STAT / SEND / RECV) spoken over adbutils' connection to the server,
with 64 KiB DATA chunks, a progress callback, timeouts, and the FAIL message of the
device turned into an error kind.

Device selection (first that applies): the ``serial`` option, the profile's
``match.serial``, ``$ANDROID_SERIAL``, the one attached device whose
``ro.product.model`` matches the profile's ``match.model`` (a trailing ``*`` makes it
a prefix), the only attached device.
"""

from __future__ import annotations

import datetime
import os
import socket
import struct
import time
from contextlib import contextmanager
from typing import Iterator

import adbutils
from adbutils.errors import AdbConnectionError, AdbError, AdbTimeout

from edgekit.devices.profiles import DeviceProfile
from edgekit.devices.transport import (
    BaseTransport,
    Progress,
    RemoteStat,
    ShellResult,
    UploadSource,
    parse_kv,
    quote_argv,
    timeout_error,
    with_retries,
)
from edgekit.errors import (
    AmbiguousDevice,
    DeviceError,
    DeviceNotFound,
    DeviceOffline,
    DeviceUnauthorized,
    PermissionDenied,
    StorageFull,
    TransportTimeout,
)

SYNC_CHUNK = 64 * 1024
TRANSIENT = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError, AdbConnectionError)
EXIT_MARK = "__EDGEKIT_EXIT__:"

IDENTITY_PROPS = (
    "ro.product.model",
    "ro.product.manufacturer",
    "ro.product.device",
    "ro.soc.manufacturer",
    "ro.soc.model",
    "ro.board.platform",
    "ro.hardware",
    "ro.build.version.release",
    "ro.build.version.sdk",
    "ro.build.id",
    "ro.product.cpu.abi",
)


def model_matches(pattern: str, model: str) -> bool:
    if not pattern:
        return True
    if pattern.endswith("*"):
        return model.startswith(pattern[:-1])
    return model == pattern


def _adb_error(name: str, exc: BaseException, serial: str | None = None) -> DeviceError:
    msg = str(exc)
    low = msg.lower()
    who = f"{name} ({serial})" if serial else name
    if isinstance(exc, AdbTimeout) or isinstance(exc, (socket.timeout, TimeoutError)):
        return TransportTimeout(f"{who}: adb timed out: {msg}")
    if "unauthorized" in low:
        return DeviceUnauthorized(f"{who}: device unauthorized")
    if "offline" in low:
        return DeviceOffline(f"{who}: device offline")
    if "not found" in low and "device" in low:
        return DeviceNotFound(f"{who}: device {serial or ''} not attached".replace("  ", " "))
    if isinstance(exc, AdbConnectionError) or "connect to adb server" in low:
        return DeviceNotFound(f"{name}: adb server not reachable: {msg}",
                              hint="start it (`adb start-server`) or check ANDROID_ADB_SERVER_PORT")
    if isinstance(exc, TRANSIENT):
        return DeviceOffline(f"{who}: connection to the device dropped ({exc!r})")
    return DeviceError(f"{who}: adb: {msg}")


def _sync_fail(name: str, what: str, message: str) -> DeviceError:
    low = message.lower()
    text = f"{name}: {what}: {message}"
    if "no space" in low:
        return StorageFull(text)
    if "permission denied" in low or "read-only" in low or "not permitted" in low:
        return PermissionDenied(text)
    return DeviceError(text)


class AdbTransport(BaseTransport):
    kind = "adb"

    def __init__(
        self,
        name: str,
        serial: str,
        client: adbutils.AdbClient | None = None,
        connect_timeout: float = 10.0,
        command_timeout: float = 900.0,
        retries: int = 3,
    ):
        super().__init__(command_timeout, connect_timeout, name=name, retries=retries)
        self.serial = serial
        self.client = client or adbutils.AdbClient(socket_timeout=connect_timeout)
        self.device = self.client.device(serial=serial)
        self._features: set[str] | None = None

    # --- selection -------------------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: DeviceProfile, **opts) -> "AdbTransport":
        connect_s = float(opts.pop("connect_timeout", profile.timeouts.connect_s))
        command_s = float(opts.pop("command_timeout", profile.timeouts.command_s))
        client = opts.pop("client", None) or adbutils.AdbClient(socket_timeout=connect_s)
        serial = select_device(profile, client, serial=opts.pop("serial", None), timeout=connect_s)
        return cls(profile.name, serial, client=client, connect_timeout=connect_s, command_timeout=command_s,
                   **{k: v for k, v in opts.items() if k in ("retries",)})

    def features(self) -> set[str]:
        if self._features is None:
            try:
                self._features = set(self.device.get_features().split(","))
            except (AdbError,) + TRANSIENT as exc:
                raise _adb_error(self.name, exc, self.serial) from exc
        return self._features

    # --- connections -----------------------------------------------------------------
    def _open(self, service: str | None, timeout: float):
        """A connection to the device (optionally with a service opened), retried when transient."""

        def attempt():
            c = self.device.open_transport(timeout=self.connect_timeout)
            try:
                if service is not None:
                    c.send_command(service)
                    c.check_okay()
            except BaseException:
                c.close()
                raise
            c.conn.settimeout(timeout)
            return c

        try:
            # opening a service runs nothing yet, so a retry is safe
            return with_retries(attempt, TRANSIENT, attempts=self.retries)
        except (AdbError,) + TRANSIENT + (OSError,) as exc:
            raise _adb_error(self.name, exc, self.serial) from exc

    def _run(self, cmdline: str, timeout: float) -> ShellResult:
        if "shell_v2" in self.features():
            return self._run_v2(cmdline, timeout)
        return self._run_v1(cmdline, timeout)

    def _read_until_done(self, c, cmdline: str, timeout: float, deadline: float, read_one) -> None:
        """Call ``read_one()`` until it returns False, each read bounded by what is left before ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise timeout_error(self.name, f"`{cmdline[:60]}`", timeout)
            c.conn.settimeout(left)
            if not read_one():
                return

    def _run_v2(self, cmdline: str, timeout: float) -> ShellResult:
        deadline = time.monotonic() + timeout
        c = self._open(f"shell,v2,raw:{cmdline}", timeout)
        out, err = bytearray(), bytearray()
        code = None

        def read_packet() -> bool:
            nonlocal code
            header = c.read_exact(5)
            kind = header[0]
            length = int.from_bytes(header[1:5], "little")
            data = c.read_exact(length) if length else b""
            if kind == 1:
                out.extend(data)
            elif kind == 2:
                err.extend(data)
            elif kind == 3:
                code = data[0] if data else 255
                return False
            return True

        try:
            self._read_until_done(c, cmdline, timeout, deadline, read_packet)
        except AdbTimeout as exc:
            raise timeout_error(self.name, f"`{cmdline[:60]}`", timeout) from exc
        except (AdbError,) + TRANSIENT + (OSError,) as exc:
            raise DeviceOffline(f"{self.name} ({self.serial}): the connection dropped while a command ran "
                                f"({exc!r})") from exc
        finally:
            c.close()  # closing the stream ends the command on the device (SIGHUP)
        return ShellResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def _run_v1(self, cmdline: str, timeout: float) -> ShellResult:
        deadline = time.monotonic() + timeout
        c = self._open(f"shell:({cmdline}); echo {EXIT_MARK}$?", timeout)
        buf = bytearray()

        def read_chunk() -> bool:
            chunk = c.conn.recv(65536)
            buf.extend(chunk)
            return bool(chunk)

        try:
            self._read_until_done(c, cmdline, timeout, deadline, read_chunk)
        except (socket.timeout, AdbTimeout) as exc:
            raise timeout_error(self.name, f"`{cmdline[:60]}`", timeout) from exc
        finally:
            c.close()
        text = buf.decode("utf-8", "replace").replace("\r\n", "\n")
        i = text.rfind(EXIT_MARK)
        if i < 0:
            raise DeviceOffline(f"{self.name}: the command ended without an exit status (connection lost)")
        return ShellResult(int(text[i + len(EXIT_MARK):].strip() or 255), text[:i], "")

    # --- sync protocol -----------------------------------------------------------------
    @contextmanager
    def _sync(self, timeout: float | None = None) -> Iterator:
        c = self._open("sync:", timeout or max(self.connect_timeout * 3, 30.0))
        try:
            yield c
            try:
                c.conn.sendall(b"QUIT" + struct.pack("<I", 0))
            except OSError:
                pass
        finally:
            c.close()

    @staticmethod
    def _req(c, cmd: bytes, path: str) -> None:
        raw = path.encode("utf-8")
        if len(raw) > 1024:
            raise DeviceError(f"device path too long for adb sync ({len(raw)} bytes): {path[:80]}...")
        c.conn.sendall(cmd + struct.pack("<I", len(raw)) + raw)

    def stat(self, remote: str) -> RemoteStat | None:
        remote = self.expand(remote)
        try:
            with self._sync() as c:
                self._req(c, b"STAT", remote)
                reply = c.read_exact(16)
        except DeviceError:
            raise
        except (AdbError,) + TRANSIENT + (OSError,) as exc:
            raise _adb_error(self.name, exc, self.serial) from exc
        if reply[:4] != b"STAT":
            raise DeviceError(f"{self.name}: unexpected sync reply {reply[:4]!r}")
        mode, size, mtime = struct.unpack("<III", reply[4:16])
        if mode == 0 and size == 0 and mtime == 0:
            return None
        return RemoteStat(size, mode, float(mtime), (mode & 0o170000) == 0o040000)

    def _upload(self, source: UploadSource, remote: str, progress: Progress | None) -> None:
        """Sync SEND into ``remote`` (the push's temporary name); retried from scratch when the link drops."""
        total = source.size

        def attempt():
            done = 0
            with self._sync(timeout=max(self.connect_timeout * 6, 60.0)) as c:
                self._req(c, b"SEND", f"{remote},{0o100644}")
                with source.open() as f:
                    while True:
                        chunk = f.read(SYNC_CHUNK)
                        if not chunk:
                            break
                        c.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
                mtime = int(datetime.datetime.now().timestamp())
                c.conn.sendall(b"DONE" + struct.pack("<I", mtime))
                status = c.read_exact(8)
                if status[:4] == b"OKAY":
                    return
                if status[:4] == b"FAIL":
                    n = struct.unpack("<I", status[4:8])[0]
                    msg = c.read_exact(n).decode("utf-8", "replace") if n else "unknown failure"
                    raise _sync_fail(self.name, f"push to {remote}", msg)
                raise DeviceError(f"{self.name}: unexpected sync reply {status[:4]!r}")

        try:
            with_retries(attempt, TRANSIENT, attempts=self.retries)
        except DeviceError:
            raise
        except (AdbError,) + TRANSIENT + (OSError,) as exc:
            # the device may have said why before it closed (e.g. no space)
            raise _adb_error(self.name, exc, self.serial) from exc

    def _download(self, remote: str, local: str) -> None:
        try:
            with self._sync(timeout=max(self.connect_timeout * 6, 60.0)) as c, open(local, "wb") as f:
                self._req(c, b"RECV", remote)
                while True:
                    head = c.read_exact(8)
                    kind, n = head[:4], struct.unpack("<I", head[4:8])[0]
                    if kind == b"DATA":
                        f.write(c.read_exact(n))
                    elif kind == b"DONE":
                        break
                    elif kind == b"FAIL":
                        msg = c.read_exact(n).decode("utf-8", "replace") if n else "unknown failure"
                        if "no such file" in msg.lower():
                            raise DeviceError(f"{self.name}: {remote}: no such file")
                        raise _sync_fail(self.name, f"pull {remote}", msg)
                    else:
                        raise DeviceError(f"{self.name}: unexpected sync reply {kind!r}")
        except DeviceError:
            raise
        except (AdbError,) + TRANSIENT + (OSError,) as exc:
            raise _adb_error(self.name, exc, self.serial) from exc

    # --- identity --------------------------------------------------------------------
    def getprops(self, names=IDENTITY_PROPS) -> dict[str, str]:
        script = 'for p in "$@"; do printf "%s=%s\\n" "$p" "$(getprop "$p")"; done'
        res = self.sh(script, *names, timeout=self.connect_timeout + 20)
        return parse_kv(res.stdout)

    def identity(self) -> dict:
        p = self.getprops()
        soc = " ".join(x for x in (p.get("ro.soc.manufacturer", ""), p.get("ro.soc.model", "")) if x)
        if not soc:
            soc = p.get("ro.board.platform", "") or p.get("ro.hardware", "")
        release = p.get("ro.build.version.release", "")
        sdk = p.get("ro.build.version.sdk", "")
        return {
            "transport": "adb",
            "serial": self.serial,
            "model": p.get("ro.product.model", ""),
            "manufacturer": p.get("ro.product.manufacturer", ""),
            "device": p.get("ro.product.device", ""),
            "soc": soc,
            "os": f"Android {release}" + (f" (SDK {sdk})" if sdk else "") if release else "",
            "os_version": release,
            "sdk": sdk,
            "build_id": p.get("ro.build.id", ""),
            "abi": p.get("ro.product.cpu.abi", ""),
        }


def list_devices(client: adbutils.AdbClient) -> list[tuple[str, str]]:
    """(serial, state) of everything the adb server knows, offline and unauthorized included."""
    try:
        return [(i.serial, i.state) for i in client.list()]
    except (AdbError,) + TRANSIENT + (OSError,) as exc:
        raise _adb_error("adb", exc) from exc


def _model_of(client: adbutils.AdbClient, serial: str, timeout: float) -> str:
    dev = client.device(serial=serial)
    c = dev.open_transport(timeout=timeout)
    try:
        c.send_command("shell:" + quote_argv(["getprop", "ro.product.model"]))
        c.check_okay()
        return c.read_until_close(encoding="utf-8").strip()
    finally:
        c.close()


def _check_state(name: str, serial: str, state: str) -> None:
    if state == "device":
        return
    if state == "unauthorized":
        raise DeviceUnauthorized(f"{name}: device {serial} is unauthorized")
    if state in ("offline", "connecting", "authorizing"):
        raise DeviceOffline(f"{name}: device {serial} is {state}")
    raise DeviceOffline(f"{name}: device {serial} is in state {state!r}")


def select_device(profile: DeviceProfile, client: adbutils.AdbClient, serial: str | None = None,
                  timeout: float = 10.0) -> str:
    """The serial to use for ``profile`` (see the module docstring for the order)."""
    devices = list_devices(client)
    states = dict(devices)
    chosen = serial or profile.match.serial or os.environ.get("ANDROID_SERIAL", "")
    if chosen:
        if chosen not in states:
            attached = ", ".join(f"{s} ({st})" for s, st in devices) or "none"
            raise DeviceNotFound(f"{profile.name}: device {chosen} is not attached (attached: {attached})")
        _check_state(profile.name, chosen, states[chosen])
        return chosen
    ready = [s for s, st in devices if st == "device"]
    if profile.match.model:
        models = {}
        for s in ready:
            try:
                models[s] = _model_of(client, s, timeout)
            except (AdbError,) + TRANSIENT + (OSError,):
                models[s] = "?"
        hits = [s for s in ready if model_matches(profile.match.model, models[s])]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise AmbiguousDevice(
                f"{profile.name}: several devices and none chosen: {len(hits)} attached devices are "
                f"{profile.match.model!r} ({', '.join(hits)})",
                hint="choose one with --serial, ANDROID_SERIAL or match.serial in the profile",
            )
        _explain_none(profile, devices, models)
    if len(ready) == 1:
        return ready[0]
    if len(ready) > 1:
        raise AmbiguousDevice(
            f"{profile.name}: several devices and none chosen ({', '.join(ready)})",
            hint="choose one with --serial, ANDROID_SERIAL or match.serial/match.model in the profile",
        )
    _explain_none(profile, devices, {})
    raise AssertionError("unreachable")


def _explain_none(profile: DeviceProfile, devices: list[tuple[str, str]], models: dict[str, str]) -> None:
    unauthorized = [s for s, st in devices if st == "unauthorized"]
    offline = [s for s, st in devices if st not in ("device", "unauthorized")]
    want = f" matching {profile.match.model!r}" if profile.match.model else ""
    if unauthorized and not models:
        raise DeviceUnauthorized(f"{profile.name}: no usable device{want}; unauthorized: {', '.join(unauthorized)}")
    if unauthorized:
        raise DeviceUnauthorized(
            f"{profile.name}: no authorized device{want} (attached: "
            + ", ".join(f"{s} {models[s]!r}" for s in models) + f"; unauthorized: {', '.join(unauthorized)})")
    if offline and not models:
        raise DeviceOffline(f"{profile.name}: no usable device{want}; offline: {', '.join(offline)}")
    attached = ", ".join(f"{s} {m!r}" for s, m in models.items()) or "none"
    raise DeviceNotFound(f"{profile.name}: no attached device{want} (attached: {attached})")
