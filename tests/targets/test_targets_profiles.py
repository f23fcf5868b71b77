"""Profiles generated for the stand-ins: valid TOML (written by edgekit.tomlio, tests/unit/test_tomlio.py),
valid for edgekit's loader."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from targetlib import profiles  # noqa: E402


def test_generated_profiles_load_in_edgekit(tmp_path, monkeypatch):
    from edgekit.devices.profiles import load_profile

    ssh = {"host": "127.0.0.1", "port": 2222, "user": "root", "key": str(tmp_path / "id"),
           "known_hosts": str(tmp_path / "kh"), "work_dir": str(tmp_path / "work dir")}
    adb = {"port": 6123, "serial": "127.0.0.1:6123"}
    profiles.write_profile(tmp_path, profiles.rpi5_profile(ssh, sys.executable))
    profiles.write_profile(tmp_path, profiles.pixel8_profile(adb))
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    pi = load_profile("rpi5-standin")
    px = load_profile("pixel8-standin")
    assert (pi.transport, pi.ssh.port, pi.work_dir, pi.runner.kind) == ("ssh", 2222, ssh["work_dir"], "python")
    assert (px.transport, px.match.serial, px.match.model, px.runner.kind) == ("adb", adb["serial"], "Pixel 8", "native")
    ncpu = len(os.sched_getaffinity(0))
    for p in (pi, px):
        assert 1 <= p.cpu.threads <= ncpu
        if p.cpu.affinity:
            assert int(p.cpu.affinity, 16) < (1 << ncpu)  # only CPUs this machine has
    # what the stand-ins imitate is kept: the shipped profiles' gates
    with open(Path(profiles.REPO) / "device_profiles" / "pixel8.toml", "rb") as f:
        shipped = tomllib.load(f)
    assert list(px.gate.fail_on) == shipped["gate"]["fail_on"]
