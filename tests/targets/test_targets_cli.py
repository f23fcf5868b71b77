"""`scripts/targets up|status|down` as a user runs it (own state folder per test)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from fixtures_targets import pid_alive


def _adb() -> str:
    from targetlib.adbhost import adb_binary

    return adb_binary()


pytestmark = pytest.mark.targets

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "targets"


def _run(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGEKIT_TARGETS_DIR=str(state))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def _adb_devices() -> str:
    return subprocess.run([_adb(), "devices"], capture_output=True, text=True, timeout=20).stdout


@pytest.fixture()
def state(tmp_path, request):
    from fixtures_targets import _need

    _need("ssh")
    _need("adb")
    folder = tmp_path / "targets"
    yield folder
    _run(folder, "down")  # whatever the test left running


def test_up_status_down(state):
    t0 = time.monotonic()
    up = _run(state, "up")
    up_s = time.monotonic() - t0
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[:2] == ["rpi5-standin", "pixel8-standin"]
    assert lines[-1] == f"export EDGEKIT_PROFILES={shlex.quote(str(state / 'profiles'))}"
    st = json.loads((state / "state.json").read_text())
    ssh_pid, adb_pid, serial = st["ssh"]["pid"], st["adb"]["pid"], st["adb"]["serial"]
    assert pid_alive(ssh_pid) and pid_alive(adb_pid)
    assert f"{serial}\tdevice" in _adb_devices()
    for name in ("rpi5-standin", "pixel8-standin"):
        with open(state / "profiles" / f"{name}.toml", "rb") as f:
            assert tomllib.load(f)["name"] == name
    with open(state / "profiles" / "pixel8-standin.toml", "rb") as f:
        prof = tomllib.load(f)
    assert prof["match"]["serial"] == serial and prof["runner"]["kind"] == "native"
    assert prof["runner"]["binary"].endswith("scripts/litert_lm_main_compat")

    # idempotent: the same processes keep running
    again = _run(state, "up")
    assert again.returncode == 0, again.stderr
    st2 = json.loads((state / "state.json").read_text())
    assert (st2["ssh"]["pid"], st2["adb"]["pid"]) == (ssh_pid, adb_pid)

    status = _run(state, "status", "--json")
    assert status.returncode == 0
    s = json.loads(status.stdout)
    assert s["ssh"]["running"] and s["adb"]["running"] and s["adb"]["adb_state"] == "device"

    # a command still running on the "phone" when `down` comes
    holder = subprocess.Popen([_adb(), "-s", serial, "shell", "echo $$; exec sleep 300"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    remote_pid = int(holder.stdout.readline())
    assert pid_alive(remote_pid)

    down = _run(state, "down")
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while (pid_alive(ssh_pid) or pid_alive(adb_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(ssh_pid) and not pid_alive(adb_pid)
    while pid_alive(remote_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(remote_pid)  # no orphans
    holder.wait(timeout=20)
    assert serial not in _adb_devices()
    assert not (state / "profiles" / "pixel8-standin.toml").exists()
    assert _run(state, "status").returncode == 3
    assert _run(state, "down").returncode == 0  # down twice is fine
    print(f"scripts/targets up: {up_s:.2f} s")


def test_up_restarts_a_dead_stand_in(state):
    assert _run(state, "up").returncode == 0
    st = json.loads((state / "state.json").read_text())
    os.kill(st["adb"]["pid"], 9)
    deadline = time.monotonic() + 10
    while pid_alive(st["adb"]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = _run(state, "status")
    assert status.returncode == 3 and "NOT RUNNING" in status.stdout
    assert _run(state, "up").returncode == 0
    st2 = json.loads((state / "state.json").read_text())
    assert st2["adb"]["pid"] != st["adb"]["pid"] and pid_alive(st2["adb"]["pid"])
    assert st2["ssh"]["pid"] == st["ssh"]["pid"]
    assert f"{st2['adb']['serial']}\tdevice" in _adb_devices()


def test_missing_sshd_is_one_helpful_line(state, monkeypatch):
    code = ("import sys; sys.path.insert(0, 'scripts'); import targetlib.sshd as s; "
            "s.SSHD = '/nonexistent/sshd'; sys.argv = ['targets', 'up', '--only', 'ssh']; "
            "import runpy; runpy.run_path('scripts/targets', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                       env=dict(os.environ, EDGEKIT_TARGETS_DIR=str(state)))
    assert r.returncode == 3
    assert r.stderr.strip().splitlines() == [
        "error: /nonexistent/sshd not found: install the Debian package openssh-server (`make system-deps`)"]


def test_stand_ins_do_not_outlive_a_killed_session(state):
    # a "pytest session" that starts the stand-ins with a watchdog, then dies by SIGKILL
    code = ("import sys, os, time; sys.path.insert(0, 'scripts'); from targetlib import stand; "
            f"stand.up({str(state)!r}); stand.start_watchdog({str(state)!r}, os.getpid()); "
            "print('up', flush=True); time.sleep(120)")
    owner = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "up"
        st = json.loads((state / "state.json").read_text())
        pids = [st["ssh"]["pid"], st["adb"]["pid"], st["watchdog"]["pid"]]
        assert all(pid_alive(p) for p in pids)
    finally:
        owner.kill()
        owner.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)
    assert st["adb"]["serial"] not in _adb_devices()
    assert "watchdog" not in json.loads((state / "state.json").read_text())
