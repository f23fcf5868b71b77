"""`up`, `down`, `status` for the stand-ins; state in <state>/state.json."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import profiles
from .common import REPO, locked, pid_alive, read_json, state_dir, stop_pid, write_json
from .sshd import SshdStandIn

STATE_FILE = "state.json"


def repo_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    try:
        return str(venv) if os.access(venv, os.X_OK) else sys.executable
    except OSError:
        return sys.executable


def _adb_module():
    from . import adbhost  # imported lazily: the ssh stand-in must work without it

    return adbhost


def up(root: str | os.PathLike | None = None, which: tuple[str, ...] = ("ssh", "adb"),
       adb_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the stand-ins (idempotent) and write state.json + profiles; return the state."""
    root = state_dir(root)
    with locked(root):
        state = read_json(root / STATE_FILE)
        state.update({"schema": 1, "state_dir": str(root), "profiles_dir": str(root / "profiles")})
        prof_dir = root / "profiles"
        prof_dir.mkdir(parents=True, exist_ok=True)
        try:
            if "ssh" in which:
                state["ssh"] = SshdStandIn(root).up(state.get("ssh", {}))
                profiles.write_profile(prof_dir, profiles.rpi5_profile(state["ssh"], repo_python()))
                state["ssh"]["profile"] = profiles.RPI5_NAME
            if "adb" in which:
                state["adb"] = _adb_module().AdbStandIn(root, **(adb_options or {})).up(state.get("adb", {}))
                profiles.write_profile(prof_dir, profiles.pixel8_profile(state["adb"]))
                state["adb"]["profile"] = profiles.PIXEL8_NAME
        finally:
            write_json(root / STATE_FILE, state)
        return state


def down(root: str | os.PathLike | None = None, which: tuple[str, ...] = ("ssh", "adb")) -> list[str]:
    """Stop whatever state.json says runs (of ``which``); return what was stopped."""
    root = state_dir(root)
    stopped: list[str] = []
    if not (root / STATE_FILE).exists():
        return stopped
    with locked(root):
        state = read_json(root / STATE_FILE)
        if "adb" in which and state.get("adb"):
            stopped += _adb_module().AdbStandIn(root).stop(state["adb"])
            (root / "profiles" / f"{profiles.PIXEL8_NAME}.toml").unlink(missing_ok=True)
            state.pop("adb", None)
        if "ssh" in which and state.get("ssh"):
            if SshdStandIn(root).stop(state["ssh"]):
                stopped.append(f"sshd pid {state['ssh'].get('pid')}")
            (root / "profiles" / f"{profiles.RPI5_NAME}.toml").unlink(missing_ok=True)
            state.pop("ssh", None)
        dog = state.get("watchdog") or {}
        if not (state.get("ssh") or state.get("adb")) and dog:
            if dog.get("pid") != os.getpid():
                stop_pid(dog.get("pid"), WATCH_CMD)
            state.pop("watchdog", None)
        write_json(root / STATE_FILE, state)
    return stopped


WATCH_CMD = "_watch"


def start_watchdog(root: str | os.PathLike | None, owner_pid: int) -> int:
    """A detached process that runs `down` if ``owner_pid`` dies first (e.g. a killed
    pytest), so stand-ins started for a test session never outlive it. Idempotent."""
    root = state_dir(root)
    with locked(root):
        state = read_json(root / STATE_FILE)
        dog = state.get("watchdog") or {}
        if dog.get("owner") == owner_pid and pid_alive(dog.get("pid"), WATCH_CMD):
            return int(dog["pid"])
        script = Path(__file__).resolve().parents[1] / "targets"
        proc = subprocess.Popen([sys.executable, str(script), "--dir", str(root), WATCH_CMD, "--pid", str(owner_pid)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        state["watchdog"] = {"pid": proc.pid, "owner": owner_pid}
        write_json(root / STATE_FILE, state)
        return proc.pid


def watch(root: str | os.PathLike | None, owner_pid: int, interval: float = 0.5) -> None:
    """Body of the watchdog: wait for ``owner_pid`` to end, then stop everything."""
    root = state_dir(root)
    while pid_alive(owner_pid):
        time.sleep(interval)
        state = read_json(root / STATE_FILE)
        if not (state.get("ssh") or state.get("adb")) or (state.get("watchdog") or {}).get("pid") != os.getpid():
            return  # stopped normally, or another watchdog took over
    down(root)


def status(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """What runs now: {"ssh": {...,"running": bool}, "adb": {..., "running", "adb_state"}}."""
    root = state_dir(root)
    state = read_json(root / STATE_FILE)
    out: dict[str, Any] = {"state_dir": str(root), "profiles_dir": str(root / "profiles")}
    if state.get("ssh"):
        out["ssh"] = dict(state["ssh"], running=SshdStandIn(root).running(state["ssh"]))
    if state.get("adb"):
        adbhost = _adb_module()
        out["adb"] = dict(state["adb"], **adbhost.AdbStandIn(root).check(state["adb"]))
    return out


def profile_names(state: dict[str, Any]) -> list[str]:
    return [state[k]["profile"] for k in ("ssh", "adb") if state.get(k, {}).get("profile")]

