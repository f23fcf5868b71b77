"""`edgekit devices`, `edgekit push`, `edgekit setup` through edgekit.cli.main.main (exit codes)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from pathlib import Path

import pytest
from fixtures_targets import blob as write_blob

from edgekit import tomlio
from edgekit.cli.main import main


def test_bad_profile_exits_5(monkeypatch, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('name = "bad"\ntransport = "ssh"\nwork_dir = "~/x"\n[ssh]\nhost = "h"\n'
                                       '[cpu]\nthreads = -1\n')
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    blob = tmp_path / "b.bin"
    write_blob(blob, 10)
    assert main(["push", str(blob), "--device", "bad"]) == 5
    err = capsys.readouterr().err
    assert "bad.toml" in err and "cpu.threads" in err and "Traceback" not in err


def test_unknown_device_exits_2(tmp_path, capsys):
    blob = tmp_path / "b.bin"
    write_blob(blob, 10)
    assert main(["push", str(blob), "--device", "nokia3310"]) == 2
    assert "pixel8" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "missing.litertlm"), "--device", "host"]) == 2


def test_push_to_host_sent_then_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # host work_dir is ~/.cache/edgekit/work
    blob = tmp_path / "tiny.litertlm"
    digest = write_blob(blob, 1_234_567, seed=3)
    assert main(["push", str(blob), "--device", "host", "--no-check", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["sent"] and r["sha256"] == digest and r["bytes"] == 1_234_567
    dest = Path(r["remote"])
    assert dest == tmp_path / "home" / ".cache/edgekit/work/bundles/tiny.litertlm"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert main(["push", str(blob), "--device", "host", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("skipped") and digest in out and "bytes: 1234567" in out


def test_push_rehash_ignores_the_sidecar(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    blob = tmp_path / "r.litertlm"
    digest = write_blob(blob, 300_000, seed=5)
    assert main(["push", str(blob), "--device", "host", "--no-check", "--json"]) == 0
    dest = Path(json.loads(capsys.readouterr().out)["remote"])
    # corrupt the device copy and forge a sidecar that matches its new stat
    from edgekit.devices.local import LocalTransport

    dest.write_bytes(b"\0" * 300_000)
    LocalTransport()._write_sidecar(str(dest), digest)
    assert main(["push", str(blob), "--device", "host", "--no-check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sent"] is False  # the sidecar is believed
    assert main(["push", str(blob), "--device", "host", "--rehash", "--no-check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sent"] is True
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest


def test_devices_lists_host_reachable(capsys):
    assert main(["devices", "--json", "--timeout", "5", "host"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["host"]
    assert rows[0]["reachable"] and rows[0]["free_bytes"] > 0
    st = os.statvfs(os.path.expanduser("~"))
    assert abs(rows[0]["free_bytes"] - st.f_bavail * st.f_frsize) < 512 * 1024 * 1024


def test_setup_host_already_installed(capsys):
    assert main(["setup", "--device", "host", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["action"] == "already installed" and r["python"] == sys.executable
    import importlib.metadata as md

    assert r["versions"]["litert_lm_api"] == md.version("litert-lm-api")


# --- with the stand-ins --------------------------------------------------------------------


@pytest.fixture()
def both(ssh_target, adb_target, monkeypatch):
    dirs = {str(ssh_target.profile_dir), str(adb_target.profile_dir)}
    monkeypatch.setenv("EDGEKIT_PROFILES", os.pathsep.join(sorted(dirs)))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    return ssh_target, adb_target


@pytest.mark.targets
def test_devices_shows_both_standins_reachable(both, capsys):
    ssh_t, adb_t = both
    assert main(["devices", "--json", "--timeout", "10"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    pi, phone = rows[ssh_t.profile_name], rows[adb_t.profile_name]
    assert pi["reachable"] and pi["state"] == "reachable" and pi["free_bytes"] > 0 and pi["os"]
    assert phone["reachable"] and phone["model"] == "Pixel 8" and phone["os"].startswith("Android")
    assert phone["serial"] == adb_t.serial and phone["free_bytes"] > 0
    assert main(["devices"]) == 0
    table = capsys.readouterr().out
    for name in (ssh_t.profile_name, adb_t.profile_name):
        line = next(l for l in table.splitlines() if l.startswith(name + " "))
        assert "reachable" in line


@pytest.mark.targets
def test_push_cli_to_both_standins(both, tmp_path, capsys):
    ssh_t, adb_t = both
    blob = tmp_path / "bundle.litertlm"
    digest = write_blob(blob, 3_000_000, seed=9)
    for target in (ssh_t, adb_t):
        assert main(["push", str(blob), "--device", target.profile_name, "--no-check", "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["sent"] and r["sha256"] == digest
        on_device = adb_t.host_path(r["remote"]) if target is adb_t else Path(r["remote"])
        assert hashlib.sha256(on_device.read_bytes()).hexdigest() == digest
        assert main(["push", str(blob), "--device", target.profile_name, "--no-check", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["sent"] is False


@pytest.mark.targets
def test_setup_creates_venv_on_ssh_standin(ssh_target, tmp_path, monkeypatch, capsys):
    """A profile whose runner venv is missing: --offline refuses, --reuse-packages-from installs it."""
    prof = tomllib.loads(ssh_target.profile_path.read_text())
    venv_py = f"{prof['work_dir']}/venv-setup-test/bin/python"
    name = "pi-setup-test"
    prof["name"] = name
    prof["runner"]["python"] = venv_py
    (tmp_path / f"{name}.toml").write_text(tomlio.dumps(prof))
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    assert main(["setup", "--device", name, "--offline"]) == 3
    assert "lacks" in capsys.readouterr().err
    assert main(["setup", "--device", name, "--reuse-packages-from", sys.executable, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["action"] == "installed" and r["python"] == venv_py and r["seconds"] < 120
    assert os.path.exists(venv_py) and r["versions"]["ai_edge_litert"]
    assert main(["setup", "--device", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "already installed"


@pytest.mark.targets
def test_setup_pushes_native_binary_to_adb_standin(adb_target, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_PROFILES", str(adb_target.profile_dir))
    assert main(["setup", "--device", adb_target.profile_name, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    local = Path(__file__).resolve().parents[2] / "scripts" / "litert_lm_main_compat"
    assert r["binary"] == "/data/local/tmp/edgekit/bin/litert_lm_main_compat"
    assert r["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert os.access(adb_target.host_path(r["binary"]), os.X_OK)


@pytest.mark.targets
def test_unknown_host_key_cli_exit_3(ssh_target, tmp_path, monkeypatch, capsys):
    prof = tomllib.loads(ssh_target.profile_path.read_text())
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    name = "pi-newkey"
    prof["name"] = name
    prof["ssh"]["known_hosts"] = str(empty)
    (tmp_path / f"{name}.toml").write_text(tomlio.dumps(prof))
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    blob = tmp_path / "b.bin"
    write_blob(blob, 1000)
    assert main(["push", str(blob), "--device", name, "--no-check"]) == 3
    err = capsys.readouterr().err
    assert "unknown host key" in err and "--accept-new-host-key" in err
    assert main(["push", str(blob), "--device", name, "--accept-new-host-key", "--no-check"]) == 0
    assert "127.0.0.1" in empty.read_text()


def test_devices_silent_host_times_out(tmp_path, monkeypatch, capsys):
    """A board that accepts TCP but never speaks SSH: reported as a timeout, within the per-device limit."""
    import socket
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)  # never accept(): the kernel completes the handshake, nobody sends a banner
    port = srv.getsockname()[1]
    key = tmp_path / "id"
    key.write_text("unused")
    (tmp_path / "silent.toml").write_text(
        f'name = "silent"\ntransport = "ssh"\nwork_dir = "~/edgekit"\n[ssh]\nhost = "127.0.0.1"\nport = {port}\n'
        f'user = "pi"\nkey = "{key}"\nknown_hosts = "{tmp_path / "kh"}"\n[timeouts]\nconnect_s = 1\n')
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    t0 = time.monotonic()
    try:
        assert main(["devices", "--json", "--timeout", "2", "silent"]) == 0
    finally:
        srv.close()
    took = time.monotonic() - t0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["state"] == "timeout" and not row["reachable"]
    assert took < 15
