"""Device profiles: shipped files valid, validation names file and key, user folders override."""

from __future__ import annotations

import pytest

from edgekit.devices.profiles import SHIPPED_DIR, list_profiles, load_all, load_profile, read_profile
from edgekit.errors import ConfigError, UsageError

GOOD = """
name = "{name}"
description = "test"
transport = "ssh"
work_dir = "~/edgekit"
[ssh]
host = "127.0.0.1"
port = 2222
user = "pi"
[runner]
kind = "python"
[cpu]
threads = 2
affinity = "f"
[gate]
fail_on = ["decode_tps:-5%"]
budget = ["peak_anon_mb<=100"]
"""


def test_shipped_profiles_load():
    names = list_profiles()
    for n in ("pixel8", "pixel9", "s24", "rpi5", "host"):
        assert n in names
    for name, prof, err in load_all():
        if str(SHIPPED_DIR) in (prof.source if prof else ""):
            assert err is None
    p8 = load_profile("pixel8")
    assert p8.transport == "adb" and p8.work_dir == "/data/local/tmp/edgekit"
    assert p8.runner.kind == "native" and p8.match.model == "Pixel 8"
    assert int(p8.cpu.affinity, 16) > 0 and p8.cpu.threads == 4
    pi = load_profile("rpi5")
    assert pi.transport == "ssh" and pi.ssh.user == "pi" and pi.work_dir == "~/edgekit"
    assert pi.runner.kind == "python"
    assert load_profile("host").transport == "local"
    for n in ("pixel8", "pixel9", "s24", "rpi5", "host"):
        g = load_profile(n).gate
        assert g.fail_on and g.budget


def test_unknown_profile_lists_names(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    with pytest.raises(UsageError) as ei:
        load_profile("nokia3310")
    assert "pixel8" in str(ei.value) and "rpi5" in str(ei.value)


def test_user_folder_overrides_and_adds(monkeypatch, tmp_path):
    (tmp_path / "rpi5.toml").write_text(GOOD.format(name="rpi5"))
    (tmp_path / "myboard.toml").write_text(GOOD.format(name="myboard"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "myboard.toml").write_text(GOOD.format(name="myboard").replace("2222", "3333"))
    monkeypatch.setenv("EDGEKIT_PROFILES", f"{tmp_path}:{other}")
    assert "myboard" in list_profiles()
    p = load_profile("rpi5")
    assert p.ssh.host == "127.0.0.1" and p.source == str(tmp_path / "rpi5.toml")
    assert load_profile("myboard").ssh.port == 2222  # first folder wins


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda s: s.replace('threads = 2', 'threads = "two"'), "cpu.threads"),
        (lambda s: s.replace('threads = 2', 'threads = 0'), "cpu.threads"),
        (lambda s: s.replace('transport = "ssh"', 'transport = "usb"'), "transport"),
        (lambda s: s.replace('affinity = "f"', 'affinity = "big"'), "cpu.affinity"),
        (lambda s: s.replace('kind = "python"', 'kind = "java"'), "runner.kind"),
        (lambda s: s.replace('kind = "python"', 'kind = "native"'), "runner.binary"),
        (lambda s: s.replace('port = 2222', 'port = 99999'), "ssh.port"),
        (lambda s: s.replace('host = "127.0.0.1"', ''), "ssh.host"),
        (lambda s: s.replace('[cpu]', '[cpu]\ncores = 3'), "cpu.cores"),
        (lambda s: 'colour = "red"\n' + s, "colour"),
        (lambda s: s.replace('"decode_tps:-5%"', '"decode_tps down a bit"'), "gate.fail_on[0]"),
        (lambda s: s.replace('"peak_anon_mb<=100"', '"peak_anon_mb"'), "gate.budget[0]"),
        (lambda s: s.replace('work_dir = "~/edgekit"', ''), "work_dir"),
        (lambda s: s.replace('name = "bad"', 'name = "other"'), "name"),
    ],
)
def test_validation_names_file_and_key(tmp_path, mutate, key):
    path = tmp_path / "bad.toml"
    path.write_text(mutate(GOOD.format(name="bad")))
    with pytest.raises(ConfigError) as ei:
        read_profile(path)
    msg = str(ei.value)
    assert str(path) in msg and f": {key}:" in msg
    assert ei.value.exit_code == 5


def test_bad_toml_is_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "broken"\ntransport = \n')
    with pytest.raises(ConfigError) as ei:
        read_profile(path)
    assert "broken.toml" in str(ei.value)


def test_good_profile_round_trips(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(GOOD.format(name="ok"))
    p = read_profile(path)
    assert p.ssh.port == 2222 and p.cpu.affinity == "f" and p.gate.budget == ("peak_anon_mb<=100",)
    d = p.to_dict()
    assert d["gate"]["fail_on"] == ["decode_tps:-5%"] and d["transport"] == "ssh"
