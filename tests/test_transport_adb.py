"""AdbTransport through the real adb server to the Pixel 8 stand-in (adb_target)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import pytest

from edgekit.devices import open_transport
from edgekit.devices.adb import AdbTransport, model_matches, select_device
from edgekit.devices.profiles import MatchSpec, load_profile
from edgekit.errors import (
    AmbiguousDevice,
    DeviceError,
    DeviceNotFound,
    DeviceOffline,
    DeviceUnauthorized,
    PermissionDenied,
    RuntimeMissing,
    StorageFull,
    TransportTimeout,
)

pytestmark = pytest.mark.targets

HOSTILE = "we ird 'q\" ;$(touch PWNED) `id` &|<>*"


@pytest.fixture()
def prof(adb_target, monkeypatch):
    monkeypatch.setenv("EDGEKIT_PROFILES", str(adb_target.profile_dir))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    return load_profile(adb_target.profile_name)


@pytest.fixture()
def t(prof):
    tr = open_transport(prof)
    yield tr
    tr.close()


def _blob(path: Path, n: int, seed: int = 0) -> str:
    data = (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _wait_online(prof, seconds=20):
    deadline = time.time() + seconds
    while True:
        try:
            tr = open_transport(prof)
            tr.stat(prof.work_dir)
            return tr
        except DeviceError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def test_identity_and_v2_shell(t, adb_target):
    ident = t.identity()
    assert ident["model"] == "Pixel 8" and ident["serial"] == adb_target.serial
    assert ident["soc"] and ident["os"].startswith("Android ")
    r = t.shell(["sh", "-c", "echo out; echo err >&2; exit 5"], check=False)
    assert (r.exit_code, r.stdout, r.stderr) == (5, "out\n", "err\n")
    assert t.sh('printf %s "$1"', HOSTILE).stdout == HOSTILE
    assert t.free_bytes(t.expand("/data/local/tmp/edgekit/not/yet")) > 0


def test_push_verify_skip_pull_hostile(t, prof, adb_target, tmp_path):
    src = tmp_path / "b.litertlm"
    digest = _blob(src, 4_000_000, seed=5)
    remote = f"{prof.work_dir}/{HOSTILE}/b {HOSTILE}.litertlm"
    r = t.push(src, remote)
    assert r.sent and r.sha256 == digest and r.bytes == 4_000_000
    host = adb_target.host_path(remote)
    assert hashlib.sha256(host.read_bytes()).hexdigest() == digest  # what the phone stores
    assert sorted(os.listdir(host.parent)) == sorted([host.name, f".{host.name}.edgekit-sha256"])
    assert not any(p.name == "PWNED" for p in adb_target.sandbox.rglob("PWNED"))
    assert not t.push(src, remote).sent
    back = tmp_path / "back"
    t.pull(remote, back)
    assert back.read_bytes() == src.read_bytes()


def test_interrupted_push_then_push_again(prof, adb_target, tmp_path):
    src = tmp_path / "big.bin"
    digest = _blob(src, 6_000_000, seed=6)
    remote = f"{prof.work_dir}/interrupted/big.bin"
    t1 = AdbTransport.from_profile(prof, retries=1)  # no automatic retry: see the raw failure
    with adb_target.faults(drop_after_bytes=2_000_000):
        with pytest.raises(DeviceError):
            t1.push(src, remote)
    t2 = _wait_online(prof)
    assert t2.stat(remote) is None  # never complete under the final name
    part = adb_target.host_path(t2.part_name(remote))
    assert part.exists() and part.stat().st_size < 6_000_000
    r = t2.push(src, remote)
    assert r.sent and t2.sha256(remote) == digest and not part.exists()


def test_link_drop_is_retried(prof, adb_target, tmp_path):
    """With the default bounded retry, a dropped link during push is recovered automatically."""
    src = tmp_path / "c.bin"
    digest = _blob(src, 3_000_000, seed=7)
    remote = f"{prof.work_dir}/retried/c.bin"
    t = _wait_online(prof)
    with adb_target.faults(drop_after_bytes=1_000_000):
        r = t.push(src, remote)
    assert r.sent and t.sha256(remote) == digest


def test_storage_full_permission_runtime_timeout(t, prof, adb_target, tmp_path):
    src = tmp_path / "d.bin"
    _blob(src, 500_000)
    used = sum(p.stat().st_size for p in adb_target.sandbox.rglob("*") if p.is_file())
    with adb_target.faults(quota_bytes=used + 100_000):
        with pytest.raises(StorageFull):
            t.push(src, f"{prof.work_dir}/full/d.bin")
    assert t.stat(f"{prof.work_dir}/full/d.bin") is None
    with pytest.raises(PermissionDenied):
        t.push(src, "/system/bin/edgekit-d.bin")
    with pytest.raises(RuntimeMissing):
        t.shell([f"{prof.work_dir}/litert_lm_main", "--help"])
    with pytest.raises(TransportTimeout):
        t.shell(["sleep", "5"], timeout=0.5)


def test_selection_errors(prof, adb_target, monkeypatch):
    import adbutils

    from edgekit.devices.adb import _model_of, list_devices

    by_model = dataclasses.replace(prof, match=MatchSpec(serial="", model="Pixel 8"))
    # the adb server is shared (other stand-ins may be attached): expect what its list implies
    client = adbutils.AdbClient()
    pixels = [s for s, st in list_devices(client) if st == "device" and _model_of(client, s, 10) == "Pixel 8"]
    if pixels == [adb_target.serial]:
        assert AdbTransport.from_profile(by_model).serial == adb_target.serial
    else:
        with pytest.raises(AmbiguousDevice):
            AdbTransport.from_profile(by_model)
    with pytest.raises(DeviceNotFound):
        AdbTransport.from_profile(dataclasses.replace(prof, match=MatchSpec(serial="", model="Pixel 9")))
    with pytest.raises(DeviceNotFound):
        AdbTransport.from_profile(prof, serial="127.0.0.1:1")
    monkeypatch.setenv("ANDROID_SERIAL", adb_target.serial)
    none = dataclasses.replace(prof, match=MatchSpec())
    assert AdbTransport.from_profile(none).serial == adb_target.serial
    monkeypatch.delenv("ANDROID_SERIAL")
    with adb_target.extra_device() as other:
        with pytest.raises(AmbiguousDevice) as ei:
            AdbTransport.from_profile(by_model)
        assert "several devices and none chosen" in str(ei.value)
        assert AdbTransport.from_profile(by_model, serial=other).serial == other
    with adb_target.extra_device(auth="never") as locked:
        with pytest.raises(DeviceUnauthorized):
            AdbTransport.from_profile(prof, serial=locked)
    with adb_target.extra_device(offline=True) as dead:
        with pytest.raises(DeviceOffline):
            AdbTransport.from_profile(prof, serial=dead)


def test_model_match():
    assert model_matches("Pixel 8", "Pixel 8") and not model_matches("Pixel 8", "Pixel 8 Pro")
    assert model_matches("SM-S921*", "SM-S921B") and not model_matches("SM-S921*", "SM-S928B")


def test_raw_shell_fallback_keeps_exit_code(prof):
    """A device without shell_v2 (Android < 7): the raw shell plus an exit marker still gives the code."""
    t = open_transport(prof)
    t._features = {"cmd"}  # as such a device would advertise
    r = t.shell(["sh", "-c", "echo out; exit 6"], check=False)
    assert r.exit_code == 6 and r.stdout == "out\n"
    assert t.sh('printf %s "$1"', HOSTILE).stdout == HOSTILE
    with pytest.raises(RuntimeMissing):
        t.shell(["no-such-binary-xyz"])
    t.close()
