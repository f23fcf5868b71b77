"""What only SshTransport has, against the real OpenSSH stand-in (ssh_target): a timed-out
command is ended on the device, identity, host keys, authentication. The shared transport
contract (push, pull, shell, errors) is tests/targets/test_transport_contract.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edgekit.devices import open_transport
from edgekit.devices.ssh import SshTransport
from edgekit.errors import DeviceNotFound, DeviceUnauthorized, HostKeyRejected, TransportTimeout

pytestmark = pytest.mark.targets


@pytest.fixture()
def t(ssh_profile):
    tr = open_transport(ssh_profile)
    yield tr
    tr.close()


def test_timed_out_command_is_ended_on_the_device_and_identity(t, ssh_profile):
    with pytest.raises(TransportTimeout):
        t.shell(["sh", "-c", "sleep 37.25; echo late"], timeout=0.5)
    time.sleep(1.5)  # the timed-out command was ended on the device, not left running
    assert t.shell(["pgrep", "-f", "sleep 37.25"], check=False).exit_code == 1
    ident = t.identity()
    assert ident["transport"] == "ssh" and ident["arch"] == os.uname().machine and ident["os"]
    assert ident["serial"].endswith(f":{ssh_profile.ssh.port}")


def test_unknown_host_key_refused_then_accepted(ssh_profile, ssh_target, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyRejected) as ei:
        SshTransport.from_profile(ssh_profile, known_hosts=str(empty))
    assert "SHA256:" in str(ei.value) and ei.value.exit_code == 3
    assert empty.read_text() == ""  # nothing recorded without the opt-in
    tr = SshTransport.from_profile(ssh_profile, known_hosts=str(empty), accept_new_host_key=True)
    tr.close()
    recorded = empty.read_text()
    assert f"[127.0.0.1]:{ssh_profile.ssh.port}" in recorded
    tr = SshTransport.from_profile(ssh_profile, known_hosts=str(empty))  # now known: no opt-in needed
    assert tr.shell(["true"]).exit_code == 0
    tr.close()


def test_changed_host_key_refused(ssh_profile, ssh_target, tmp_path):
    import paramiko

    other = paramiko.RSAKey.generate(1024)
    kh = tmp_path / "known_hosts"
    real = Path(ssh_profile.ssh.known_hosts).expanduser().read_text().split()
    kh.write_text(f"{real[0]} ssh-rsa {other.get_base64()}\n")
    for accept in (False, True):  # even the opt-in does not accept a CHANGED key
        with pytest.raises(HostKeyRejected) as ei:
            SshTransport.from_profile(ssh_profile, known_hosts=str(kh), accept_new_host_key=accept)
        assert "CHANGED" in str(ei.value) or "unknown" in str(ei.value)


def test_wrong_key_is_unauthorized(ssh_profile, tmp_path):
    import paramiko

    other = tmp_path / "id_other"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(other))
    with pytest.raises(DeviceUnauthorized):
        SshTransport.from_profile(ssh_profile, key=str(other))
    with pytest.raises(DeviceUnauthorized):
        SshTransport.from_profile(ssh_profile, key=str(tmp_path / "missing_key"))


def test_nothing_listening_is_not_found(ssh_profile):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DeviceNotFound):
        SshTransport.from_profile(ssh_profile, port=port, retries=1)
