"""What only AdbTransport has, through the real adb server to the Pixel 8 stand-in (adb_target):
device identity, selection, the device's own quota, the raw-shell fallback. The shared
transport contract (push, pull, shell, errors) is tests/targets/test_transport_contract.py."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from fixtures_targets import HOSTILE, blob

from edgekit.devices import open_transport
from edgekit.devices.adb import AdbTransport, model_matches
from edgekit.devices.profiles import MatchSpec
from edgekit.errors import AmbiguousDevice, DeviceNotFound, DeviceOffline, DeviceUnauthorized, RuntimeMissing, StorageFull

pytestmark = pytest.mark.targets


def test_identity_and_device_quota(adb_profile, adb_target, tmp_path):
    with contextlib.closing(open_transport(adb_profile)) as t:
        ident = t.identity()
        assert ident["model"] == "Pixel 8" and ident["serial"] == adb_target.serial
        assert ident["soc"] and ident["os"].startswith("Android ")
        # the phone itself runs out of space during the upload (free space looked sufficient)
        src = tmp_path / "d.bin"
        blob(src, 500_000)
        used = sum(p.stat().st_size for p in adb_target.sandbox.rglob("*") if p.is_file())
        with adb_target.faults(quota_bytes=used + 100_000):
            with pytest.raises(StorageFull):
                t.push(src, f"{adb_profile.work_dir}/full/d.bin")
        assert t.stat(f"{adb_profile.work_dir}/full/d.bin") is None


def test_selection_errors(adb_profile, adb_target, monkeypatch):
    import adbutils

    from edgekit.devices.adb import _model_of, list_devices

    by_model = dataclasses.replace(adb_profile, match=MatchSpec(serial="", model="Pixel 8"))
    # the adb server is shared (other stand-ins may be attached): expect what its list implies
    client = adbutils.AdbClient()
    pixels = [s for s, st in list_devices(client) if st == "device" and _model_of(client, s, 10) == "Pixel 8"]
    if pixels == [adb_target.serial]:
        assert AdbTransport.from_profile(by_model).serial == adb_target.serial
    else:
        with pytest.raises(AmbiguousDevice):
            AdbTransport.from_profile(by_model)
    with pytest.raises(DeviceNotFound):
        AdbTransport.from_profile(dataclasses.replace(adb_profile, match=MatchSpec(serial="", model="Pixel 9")))
    with pytest.raises(DeviceNotFound):
        AdbTransport.from_profile(adb_profile, serial="127.0.0.1:1")
    monkeypatch.setenv("ANDROID_SERIAL", adb_target.serial)
    none = dataclasses.replace(adb_profile, match=MatchSpec())
    assert AdbTransport.from_profile(none).serial == adb_target.serial
    monkeypatch.delenv("ANDROID_SERIAL")
    with adb_target.extra_device() as other:
        with pytest.raises(AmbiguousDevice) as ei:
            AdbTransport.from_profile(by_model)
        assert "several devices and none chosen" in str(ei.value)
        assert AdbTransport.from_profile(by_model, serial=other).serial == other
    with adb_target.extra_device(auth="never") as locked:
        with pytest.raises(DeviceUnauthorized):
            AdbTransport.from_profile(adb_profile, serial=locked)
    with adb_target.extra_device(offline=True) as dead:
        with pytest.raises(DeviceOffline):
            AdbTransport.from_profile(adb_profile, serial=dead)


def test_model_match():
    assert model_matches("Pixel 8", "Pixel 8") and not model_matches("Pixel 8", "Pixel 8 Pro")
    assert model_matches("SM-S921*", "SM-S921B") and not model_matches("SM-S921*", "SM-S928B")


def test_raw_shell_fallback_keeps_exit_code(adb_profile):
    """A device without shell_v2 (Android < 7): the raw shell plus an exit marker still gives the code."""
    t = open_transport(adb_profile)
    t._features = {"cmd"}  # as such a device would advertise
    r = t.shell(["sh", "-c", "echo out; exit 6"], check=False)
    assert r.exit_code == 6 and r.stdout == "out\n"
    assert t.sh('printf %s "$1"', HOSTILE).stdout == HOSTILE
    with pytest.raises(RuntimeMissing):
        t.shell(["no-such-binary-xyz"])
    t.close()
