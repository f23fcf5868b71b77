"""SshTransport against the real OpenSSH stand-in (tests/fixtures_targets.py: ssh_target)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from edgekit.devices import open_transport
from edgekit.devices.profiles import load_profile
from edgekit.devices.ssh import SshTransport
from edgekit.errors import (
    DeviceNotFound,
    DeviceOffline,
    DeviceUnauthorized,
    HostKeyRejected,
    PermissionDenied,
    RuntimeMissing,
    StorageFull,
    TransportTimeout,
)

pytestmark = pytest.mark.targets

HOSTILE = "we ird 'q\" ;$(touch PWNED) `id` &|<>*"


@pytest.fixture()
def prof(ssh_target, monkeypatch):
    monkeypatch.setenv("EDGEKIT_PROFILES", str(ssh_target.profile_dir))
    return load_profile(ssh_target.profile_name)


@pytest.fixture()
def t(prof):
    tr = open_transport(prof)
    yield tr
    tr.close()


def _blob(path: Path, n: int, seed: int = 0) -> str:
    data = (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_shell_exit_codes_and_quoting(t, prof):
    r = t.shell(["sh", "-c", "echo out; echo err >&2; exit 7"], check=False)
    assert (r.exit_code, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert t.sh('printf %s "$1"', HOSTILE).stdout == HOSTILE
    with pytest.raises(RuntimeMissing):
        t.shell(["litert_lm_main_not_installed", "--help"])
    with pytest.raises(TransportTimeout):
        t.shell(["sh", "-c", "sleep 37.25; echo late"], timeout=0.5)
    time.sleep(1.5)  # the timed-out command was ended on the device, not left running
    assert t.shell(["pgrep", "-f", "sleep 37.25"], check=False).exit_code == 1
    ident = t.identity()
    assert ident["transport"] == "ssh" and ident["arch"] == os.uname().machine and ident["os"]
    assert ident["serial"].endswith(f":{prof.ssh.port}")


def test_push_verify_skip_pull_hostile_names(t, prof, tmp_path):
    src = tmp_path / "bundle.litertlm"
    digest = _blob(src, 5_000_000, seed=1)
    rdir = f"{prof.work_dir}/{HOSTILE}"
    remote = f"{rdir}/b {HOSTILE}.litertlm"
    r = t.push(src, remote)
    assert r.sent and r.sha256 == digest and r.bytes == 5_000_000
    assert t.sha256(remote) == digest
    assert t.stat(remote).size == 5_000_000 and t.stat(t.part_name(remote)) is None
    listing = t.sh('ls -A "$1"', rdir).stdout.splitlines()
    assert sorted(listing) == sorted([f"b {HOSTILE}.litertlm", f".b {HOSTILE}.litertlm.edgekit-sha256"])
    assert not (Path(prof.work_dir) / "PWNED").exists()
    again = t.push(src, remote)
    assert not again.sent and again.sha256 == digest
    back = tmp_path / "back"
    t.pull(remote, back)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    free = t.free_bytes(rdir)
    st = os.statvfs(prof.work_dir)  # the stand-in shares this machine's disk
    assert abs(free - st.f_bavail * st.f_frsize) < 256 * 1024 * 1024


def test_interrupted_push_then_push_again(t, prof, tmp_path):
    """Kill the connection mid-push: nothing under the final name; the next push completes."""
    src = tmp_path / "big.bin"
    digest = _blob(src, 12_000_000, seed=2)
    remote = f"{prof.work_dir}/interrupted/big.bin"
    killed = threading.Event()

    def kill_midway(done, total, tr):
        if done > 3_000_000 and not killed.is_set():
            killed.set()
            tr._client.get_transport().sock.close()  # the link drops, as when a cable is pulled

    t1 = SshTransport.from_profile(prof, retries=1)  # no automatic retry: see the raw failure
    with pytest.raises((DeviceOffline, TransportTimeout)):
        t1.push(src, remote, progress=lambda d, n: kill_midway(d, n, t1))
    assert killed.is_set()
    t2 = open_transport(prof)
    try:
        assert t2.stat(remote) is None  # never complete under the final name
        part = t2.stat(t2.part_name(remote))
        assert part is not None and part.size < 12_000_000
        r = t2.push(src, remote)
        assert r.sent and t2.sha256(remote) == digest and t2.stat(t2.part_name(remote)) is None
        assert not t2.push(src, remote).sent
    finally:
        t2.close()


def test_link_drop_during_push_is_retried(t, prof, tmp_path):
    src = tmp_path / "c.bin"
    digest = _blob(src, 8_000_000, seed=4)
    remote = f"{prof.work_dir}/retried/c.bin"
    dropped = threading.Event()

    def drop_once(done, total):
        if done > 2_000_000 and not dropped.is_set():
            dropped.set()
            t._client.get_transport().sock.close()

    r = t.push(src, remote, progress=drop_once)
    assert dropped.is_set() and r.sent and t.sha256(remote) == digest


def test_unknown_host_key_refused_then_accepted(prof, ssh_target, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyRejected) as ei:
        SshTransport.from_profile(prof, known_hosts=str(empty))
    assert "SHA256:" in str(ei.value) and ei.value.exit_code == 3
    assert empty.read_text() == ""  # nothing recorded without the opt-in
    tr = SshTransport.from_profile(prof, known_hosts=str(empty), accept_new_host_key=True)
    tr.close()
    recorded = empty.read_text()
    assert f"[127.0.0.1]:{prof.ssh.port}" in recorded
    tr = SshTransport.from_profile(prof, known_hosts=str(empty))  # now known: no opt-in needed
    assert tr.shell(["true"]).exit_code == 0
    tr.close()


def test_changed_host_key_refused(prof, ssh_target, tmp_path):
    import paramiko

    other = paramiko.RSAKey.generate(1024)
    kh = tmp_path / "known_hosts"
    real = Path(prof.ssh.known_hosts).expanduser().read_text().split()
    kh.write_text(f"{real[0]} ssh-rsa {other.get_base64()}\n")
    for accept in (False, True):  # even the opt-in does not accept a CHANGED key
        with pytest.raises(HostKeyRejected) as ei:
            SshTransport.from_profile(prof, known_hosts=str(kh), accept_new_host_key=accept)
        assert "CHANGED" in str(ei.value) or "unknown" in str(ei.value)


def test_wrong_key_is_unauthorized(prof, tmp_path):
    import paramiko

    other = tmp_path / "id_other"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(other))
    with pytest.raises(DeviceUnauthorized):
        SshTransport.from_profile(prof, key=str(other))
    with pytest.raises(DeviceUnauthorized):
        SshTransport.from_profile(prof, key=str(tmp_path / "missing_key"))


def test_nothing_listening_is_not_found(prof):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DeviceNotFound):
        SshTransport.from_profile(prof, port=port, retries=1)


def test_permission_denied_and_storage_full(t, prof, tmp_path, monkeypatch):
    src = tmp_path / "x.bin"
    _blob(src, 1000)
    # sysfs refuses new files even to root, as /system does on a phone
    with pytest.raises(PermissionDenied):
        t.push(src, "/sys/edgekit-denied/x.bin")
    with pytest.raises(PermissionDenied):
        t.shell(["mkdir", "-p", "/sys/edgekit-denied"])
    monkeypatch.setattr(t, "free_bytes", lambda d: 10)
    with pytest.raises(StorageFull):
        t.push(src, f"{prof.work_dir}/full/x.bin")
    assert t.stat(f"{prof.work_dir}/full/x.bin") is None
