"""The Pixel 8 stand-in's life cycle: the emulator process and the real adb server.

``adb start-server`` (port 5037, only if not running), ``adb connect 127.0.0.1:PORT``,
wait until ``adb devices`` lists the serial in the expected state, and the reverse.
The adb server is stopped by ``down`` only if ``up`` started it and no other device
is connected to it (other sessions on this machine may use it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .common import (LOOPBACK, REPO, TargetsError, free_port, pid_alive, port_is_free, read_json, stop_pid, tail,
                     wait_until)

EMULATOR = Path(__file__).resolve().parents[1] / "adb_device_emulator.py"
ADB_SERVER_PORT = 5037


def adb_binary() -> str:
    """`adb` on PATH (Debian's package), else $ADBUTILS_ADB_PATH, else the one adbutils bundles."""
    exe = shutil.which("adb") or os.environ.get("ADBUTILS_ADB_PATH")
    if exe and os.access(exe, os.X_OK):
        return exe
    for candidate in sorted(REPO.glob(".venv/lib/python3*/site-packages/adbutils/binaries/adb")):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise TargetsError("adb not found: install the Debian package adb (`make system-deps`)")


def adb(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([adb_binary(), *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise TargetsError(f"`adb {' '.join(args)}` did not finish in {timeout:.0f} s") from exc


def server_running() -> bool:
    try:
        with socket.create_connection((LOOPBACK, ADB_SERVER_PORT), timeout=1):
            return True
    except OSError:
        return False


def ensure_server() -> bool:
    """Start the adb server if needed; True if this call started it."""
    if server_running():
        return False
    r = adb("start-server", timeout=60)
    if r.returncode != 0:
        raise TargetsError(f"`adb start-server` failed: {(r.stderr or r.stdout).strip()}")
    wait_until(server_running, 15, what="the adb server on port 5037")
    return True


def devices() -> dict[str, str]:
    """serial -> state ("device", "offline", "unauthorized", ...) as the adb server lists them."""
    if not server_running():
        return {}
    r = adb("devices", timeout=15)
    out: dict[str, str] = {}
    for line in r.stdout.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 2:
            out[parts[0].strip()] = parts[1].strip()
    return out


def device_state(serial: str) -> str | None:
    return devices().get(serial)


def connect(serial: str, expect: str, timeout: float = 30) -> None:
    """`adb connect` and wait until the server lists ``serial`` as ``expect``; bounded retries.

    The `adb connect` client waits for the handshake (about 10 s for a device that never
    answers); the server lists the device as soon as the TCP connection exists, so the
    client is not waited for once the state is reached.
    """
    last = ""
    deadline = time.monotonic() + timeout
    for attempt in range(3):
        proc = subprocess.Popen([adb_binary(), "connect", serial], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            inner = time.monotonic() + min(12, max(1, deadline - time.monotonic()))
            while time.monotonic() < inner:
                if device_state(serial) == expect:
                    return
                if proc.poll() is not None and device_state(serial) is None:
                    break  # refused outright: retry
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            try:
                last = (proc.communicate(timeout=5)[0] or "").strip() or last
            except subprocess.TimeoutExpired:
                pass
        if time.monotonic() > deadline:
            break
        adb("disconnect", serial, timeout=15)
        time.sleep(0.2 * (attempt + 1))
    raise TargetsError(f"adb server does not list {serial} as {expect!r} "
                       f"(now: {device_state(serial)!r}; `adb connect` said: {last or 'nothing'})")


def disconnect(serial: str) -> None:
    if server_running():
        adb("disconnect", serial, timeout=15)


def _start_emulator(folder: Path, port: int, auth: str = "none", offline: bool = False) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "ready.json"
    ready.unlink(missing_ok=True)
    log_path = folder / "emulator.log"
    argv = [sys.executable, str(EMULATOR), "--dir", str(folder), "--port", str(port), "--auth", auth,
            "--ready-file", str(ready)]
    if offline:
        argv.append("--offline")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def _ready():
        if proc.poll() is not None:
            raise TargetsError(f"the adb device emulator exited ({proc.returncode}): {tail(log_path, 8)}")
        return read_json(ready) if ready.exists() else None

    try:
        info = wait_until(_ready, 15, what="the adb device emulator to listen")
    except TargetsError:
        stop_pid(proc.pid, str(folder))
        raise
    port = int(info["port"])
    return {"pid": proc.pid, "port": port, "serial": f"{LOOPBACK}:{port}", "dir": str(folder),
            "sandbox": str(folder / "data_local_tmp"), "log": str(log_path),
            "faults": str(folder / "faults.json"), "auth": auth, "offline": offline}


def _emulator_alive(info: dict[str, Any]) -> bool:
    if not pid_alive(info.get("pid"), info.get("dir") or "adb_device_emulator"):
        return False
    try:
        with socket.create_connection((LOOPBACK, int(info["port"])), timeout=1):
            return True
    except (OSError, KeyError, ValueError):
        return False


class AdbStandIn:
    def __init__(self, root: Path, auth: str = "none", offline: bool = False):
        self.root = root
        self.dir = root / "pixel8"
        self.auth = auth
        self.offline = offline

    def expected_state(self) -> str:
        return "offline" if self.offline else ("unauthorized" if self.auth == "never" else "device")

    def up(self, previous: dict[str, Any]) -> dict[str, Any]:
        adb_binary()
        started = ensure_server()
        if previous and _emulator_alive(previous):
            if device_state(previous["serial"]) != self.expected_state():
                connect(previous["serial"], self.expected_state())
            previous["started_adb_server"] = bool(previous.get("started_adb_server") or started)
            return previous
        self.stop(previous, allow_server_stop=False)
        preferred = int(previous.get("port") or 0)
        port = preferred if preferred and port_is_free(preferred) else free_port(avoid=range(5554, 5586))
        try:
            info = _start_emulator(self.dir, port, self.auth, self.offline)
        except TargetsError:  # the port was taken in between: one more try on another
            info = _start_emulator(self.dir, free_port(avoid=range(5554, 5586)), self.auth, self.offline)
        info["started_adb_server"] = bool(previous.get("started_adb_server") or started)
        info["adb"] = adb_binary()
        try:
            connect(info["serial"], self.expected_state())
        except TargetsError as exc:
            self.stop(info)
            raise TargetsError(f"{exc}; emulator log {info['log']}: {tail(Path(info['log']), 5)}") from exc
        return info

    def stop(self, info: dict[str, Any], allow_server_stop: bool = True) -> list[str]:
        stopped: list[str] = []
        if not info:
            return stopped
        if info.get("serial"):
            disconnect(info["serial"])
        if stop_pid(info.get("pid"), info.get("dir") or "adb_device_emulator"):
            stopped.append(f"adb device emulator pid {info['pid']} ({info.get('serial')})")
        if allow_server_stop and info.get("started_adb_server") and server_running() and not devices():
            adb("kill-server", timeout=20)
            stopped.append("adb server (started by scripts/targets; no devices left)")
        return stopped

    def check(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"running": _emulator_alive(info), "adb_state": device_state(info.get("serial", "")) or "absent"}


def start_extra_device(root: Path, auth: str = "none", offline: bool = False) -> dict[str, Any]:
    """One more emulated Pixel 8 (e.g. unauthorized or offline), connected; for tests."""
    ensure_server()
    folder = root / f"extra-{uuid.uuid4().hex[:8]}"
    info = _start_emulator(folder, free_port(avoid=range(5554, 5586)), auth, offline)
    expect = "offline" if offline else ("unauthorized" if auth == "never" else "device")
    try:
        connect(info["serial"], expect)
    except TargetsError:
        stop_extra_device(info)
        raise
    return info


def stop_extra_device(info: dict[str, Any]) -> None:
    disconnect(info["serial"])
    stop_pid(info.get("pid"), info["dir"])
    shutil.rmtree(info["dir"], ignore_errors=True)
