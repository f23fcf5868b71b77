"""`edgekit devices` sees both stand-ins as reachable (issue 3, "Must show")."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.targets


def test_edgekit_devices_lists_both_stand_ins(ssh_target, adb_target, monkeypatch, capsys):
    from edgekit.cli.main import main

    assert ssh_target.profile_dir == adb_target.profile_dir
    monkeypatch.setenv("EDGEKIT_PROFILES", str(ssh_target.profile_dir))
    adb_target.ensure_connected()
    code = main(["devices", "--json", ssh_target.profile_name, adb_target.profile_name])
    out = capsys.readouterr().out
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == {"rpi5-standin", "pixel8-standin"}
    pixel, pi = rows["pixel8-standin"], rows["rpi5-standin"]
    assert pixel["reachable"] and pi["reachable"], (pixel["error"], pi["error"])
    assert pixel["model"] == "Pixel 8"
    assert "Tensor G3" in pixel["soc"]
    assert "14" in pixel["os"]
    assert pixel["serial"] == adb_target.serial
    assert pixel["free_bytes"] and pixel["free_bytes"] > 0
    assert pi["free_bytes"] and pi["free_bytes"] > 0
