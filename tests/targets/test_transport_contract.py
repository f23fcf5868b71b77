"""The transport contract (docs/contracts.md "Device profiles"), one test for all three
transports: adb through the real adb server to the Pixel 8 stand-in, ssh to the real
OpenSSH stand-in, local on this machine. What only one transport has (device selection,
host keys, the raw-shell fallback, df parsing) stays in tests/test_transport_<kind>.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from fixtures_targets import HOSTILE, CountingHashes, blob, sidecar_fields, wait_online

from edgekit.devices import open_transport
from edgekit.devices.local import LocalTransport
from edgekit.devices.transport import PART_SUFFIX, ShellResult
from edgekit.errors import (
    DeviceError,
    DeviceOffline,
    PermissionDenied,
    RuntimeMissing,
    StorageFull,
    TransportTimeout,
)

KINDS = [pytest.param("adb", marks=pytest.mark.targets), pytest.param("ssh", marks=pytest.mark.targets), "local"]
LINKED = [k for k in KINDS if k != "local"]  # transports with a link that can drop


@dataclass
class Kit:
    """One transport under test and what the test needs to know about its device."""

    kind: str
    profile: Any                          # DeviceProfile, or "host" for local
    work_dir: str                         # a fresh device folder for this test
    host_path: Callable[[str], Path]      # where a device path is stored on this machine
    host_root: Path                       # every file the device can write is below it
    denied: str                           # a device path the device refuses to create
    cut: Callable[..., Any]               # cut(t, after_bytes) -> context yielding (progress, error kinds)
    statvfs_exact: bool                   # free_bytes reports this machine's disk

    def open(self, **opts: Any):
        if self.kind == "local":
            return LocalTransport("host", command_timeout=30)
        return open_transport(self.profile, **opts)

    def reopen(self):
        """A new transport once the device is back (after a dropped link)."""
        if self.kind == "local":
            return self.open()
        return wait_online(self.profile)


class Boom(Exception):
    """Stands for the local push being killed half-way (no link to drop on this machine)."""


@contextlib.contextmanager
def _cut_ssh(t, after: int) -> Iterator[tuple]:
    killed = threading.Event()

    def kill_midway(done, total):
        if done > after and not killed.is_set():
            killed.set()
            t._client.get_transport().sock.close()  # the link drops, as when a cable is pulled

    yield kill_midway, (DeviceOffline, TransportTimeout)
    assert killed.is_set()


@contextlib.contextmanager
def _cut_local(t, after: int) -> Iterator[tuple]:
    def die(done, total):
        if done >= after:
            raise Boom()

    yield die, Boom


def _cut_adb(target):
    @contextlib.contextmanager
    def cut(t, after: int) -> Iterator[tuple]:
        with target.faults(drop_after_bytes=after):
            yield None, DeviceError

    return cut


@pytest.fixture(params=KINDS)
def kit(request, tmp_path) -> Kit:
    name = request.node.name.split("[")[0].removeprefix("test_")
    if request.param == "local":
        wd = str(tmp_path / "device")
        return Kit("local", "host", wd, Path, tmp_path, "/sys/edgekit-denied/x.bin", _cut_local, True)
    prof = request.getfixturevalue(f"{request.param}_profile")
    wd = f"{prof.work_dir}/contract/{name}"
    if request.param == "ssh":
        return Kit("ssh", prof, wd, Path, Path(prof.work_dir), "/sys/edgekit-denied/x.bin", _cut_ssh, True)
    target = request.getfixturevalue("adb_target")
    return Kit("adb", prof, wd, target.host_path, target.sandbox, "/system/bin/edgekit-d.bin",
               _cut_adb(target), False)


@pytest.fixture()
def t(kit):
    tr = kit.open()
    tr.sh('rm -rf "$1"', kit.work_dir)  # a stand-in lives for the whole session
    yield tr
    tr.close()


def test_shell_exit_codes_quoting_errors_timeout(kit, t):
    r = t.shell(["sh", "-c", "echo out; echo err >&2; exit 5"], check=False)
    assert r == ShellResult(5, "out\n", "err\n")
    with pytest.raises(DeviceError) as ei:
        t.shell(["sh", "-c", "exit 4"])
    assert "exit 4" in str(ei.value)
    # every argv element arrives byte for byte, none is read by a shell
    assert t.sh('printf %s "$1"', HOSTILE).stdout == HOSTILE
    argv = ["printf", "%s\\n", HOSTILE, "", "a\nb", "-n"]
    assert t.shell(argv).stdout == f"{HOSTILE}\n\na\nb\n-n\n"
    assert not any(kit.host_root.rglob("PWNED")) and not os.path.exists("PWNED")
    with pytest.raises(RuntimeMissing):
        t.shell(["litert_lm_main_not_installed", "--help"])
    with pytest.raises(RuntimeMissing):
        t.shell([f"{kit.work_dir}/litert_lm_main", "--help"])
    with pytest.raises(TransportTimeout):
        t.shell(["sleep", "5"], timeout=0.5)
    assert t.identity()["transport"] == kit.kind


def test_push_checksum_skip_pull_hostile_names(kit, t, tmp_path):
    src = tmp_path / "b.litertlm"
    digest = blob(src, 4_000_000, seed=5)
    rdir = t.expand(f"{kit.work_dir}/{HOSTILE}")
    remote = f"{rdir}/b {HOSTILE}.litertlm"
    seen = []
    r = t.push(src, remote, progress=lambda d, tot: seen.append((d, tot)))
    assert r.sent and r.sha256 == digest and r.bytes == 4_000_000 and r.seconds > 0
    assert seen and seen[-1] == (4_000_000, 4_000_000)
    host = kit.host_path(remote)
    assert hashlib.sha256(host.read_bytes()).hexdigest() == digest  # what the device stores
    # no part file left, nothing injected; the sidecar records the verified sha256
    names = sorted([f"b {HOSTILE}.litertlm", f".b {HOSTILE}.litertlm.edgekit-sha256"])
    assert sorted(os.listdir(host.parent)) == names
    assert os.path.basename(t.sidecar_name(remote)) == names[0]
    assert sorted(t.sh('ls -A "$1"', rdir).stdout.splitlines()) == names
    assert t.shell(["ls", rdir]).stdout.strip() == f"b {HOSTILE}.litertlm"  # ls hides the sidecar
    assert not any(kit.host_root.rglob("PWNED")) and not os.path.exists("PWNED")
    assert t.sha256(remote) == digest
    st = t.stat(remote)
    assert st.size == 4_000_000 and not st.is_dir and t.stat(t.part_name(remote)) is None
    again = t.push(src, remote)
    assert not again.sent and again.sha256 == digest
    back = tmp_path / "back"
    t.pull(remote, back)
    assert back.read_bytes() == src.read_bytes()
    free = t.free_bytes(t.expand(f"{kit.work_dir}/not/yet"))
    assert free > 0
    if kit.statvfs_exact:  # the stand-in shares this machine's disk
        st = os.statvfs(kit.host_root)
        assert abs(free - st.f_bavail * st.f_frsize) < 256 * 1024 * 1024


def test_changed_file_is_sent_again(kit, t, tmp_path):
    src = tmp_path / "a.bin"
    blob(src, 100_000, seed=1)
    remote = t.expand(f"{kit.work_dir}/a.bin")
    assert t.push(src, remote).sent
    d2 = blob(src, 100_000, seed=2)  # same size, other content
    r = t.push(src, remote)
    assert r.sent and t.sha256(remote) == d2


def test_interrupted_push_is_never_taken_as_complete(kit, tmp_path):
    src = tmp_path / "big.bin"
    n = 6_000_000
    digest = blob(src, n, seed=6, age_s=10)
    t1 = kit.open(retries=1)  # no automatic retry: see the raw failure
    remote = t1.expand(f"{kit.work_dir}/interrupted/big.bin")
    t1.remove(remote)
    with kit.cut(t1, 2_000_000) as (progress, kinds):
        with pytest.raises(kinds):
            t1.push(src, remote, progress=progress)
    t1.close()
    t2 = kit.reopen()
    try:
        # never complete under the final name, and no sidecar vouches for anything
        assert t2.stat(remote) is None and t2.stat(t2.sidecar_name(remote)) is None
        assert t2.part_name(remote).endswith(PART_SUFFIX)
        part = t2.stat(t2.part_name(remote))
        assert part is not None and 0 < part.size < n
        assert kit.host_path(t2.part_name(remote)).stat().st_size == part.size
        r = t2.push(src, remote)
        assert r.sent and t2.sha256(remote) == digest and t2.stat(t2.part_name(remote)) is None
        assert not kit.host_path(t2.part_name(remote)).exists()
        assert sidecar_fields(t2, remote)[2] == digest
        assert not t2.push(src, remote).sent
        # a truncated file under the final name (another tool's crash) is not skipped either
        with open(kit.host_path(remote), "r+b") as f:
            f.truncate(10)
        assert t2.push(src, remote).sent and t2.sha256(remote) == digest
    finally:
        t2.close()


@pytest.mark.parametrize("kit", LINKED, indirect=True)
def test_link_drop_during_push_is_retried(kit, t, tmp_path):
    """With the default bounded retry, a dropped link during push is recovered automatically."""
    src = tmp_path / "c.bin"
    digest = blob(src, 8_000_000, seed=4)
    remote = t.expand(f"{kit.work_dir}/retried/c.bin")
    with kit.cut(t, 2_000_000) as (progress, _kinds):
        r = t.push(src, remote, progress=progress)
    assert r.sent and t.sha256(remote) == digest


def test_storage_full_before_sending_and_permission_denied(kit, t, tmp_path, monkeypatch):
    src = tmp_path / "x.bin"
    blob(src, 10_000)
    remote = t.expand(f"{kit.work_dir}/full/x.bin")
    # the device refuses new files there (/system on a phone; sysfs even to root)
    with pytest.raises(PermissionDenied):
        t.push(src, kit.denied)
    with pytest.raises(PermissionDenied):  # sysfs: the adb stand-in's shell runs on this machine too
        t.shell(["mkdir", "-p", "/sys/edgekit-denied"])
    monkeypatch.setattr(t, "free_bytes", lambda d: 5_000)
    with pytest.raises(StorageFull):
        t.push(src, remote)
    assert t.stat(remote) is None


def test_push_verified_on_device_and_repush_uses_sidecar(kit, t, tmp_path, monkeypatch):
    src = tmp_path / "f.bin"
    digest = blob(src, 6_000_000, seed=8, age_s=10)
    remote = t.expand(f"{kit.work_dir}/sidecar {HOSTILE}/f.bin")
    calls = CountingHashes(t, monkeypatch)
    r = t.push(src, remote)
    # verified on the device while uploading (the follower): no second full read
    assert r.sent and calls.calls == []
    assert sidecar_fields(t, remote)[2] == digest
    t0 = time.monotonic()
    again = t.push(src, remote)
    assert not again.sent and calls.calls == [] and time.monotonic() - t0 < 1.0
    # modify the device file in place, same size: the sidecar is stale, the file is rehashed and re-sent
    t.sh('printf Z | dd of="$1" bs=1 seek=12345 conv=notrunc 2>/dev/null', remote)
    assert t.stat(remote).size == 6_000_000
    r3 = t.push(src, remote)
    assert r3.sent and calls.calls == [remote]
    monkeypatch.undo()
    assert t.sha256(remote) == digest
    assert not t.push(src, remote, verify=True).sent  # a full rehash agrees
