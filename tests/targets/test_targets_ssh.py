"""The Raspberry Pi stand-in: a real OpenSSH server reached with paramiko."""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import tomllib

import paramiko
import pytest

pytestmark = pytest.mark.targets


def _client(target, known_hosts=True) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    if known_hosts:
        c.load_host_keys(str(target.known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(target.host, port=target.port, username=target.user, key_filename=str(target.key),
              look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return c


def test_profile_points_at_the_server(ssh_target):
    with open(ssh_target.profile_path, "rb") as f:
        prof = tomllib.load(f)
    assert prof["name"] == ssh_target.profile_name == ssh_target.profile_path.stem
    assert prof["transport"] == "ssh"
    assert prof["ssh"]["host"] == "127.0.0.1"
    assert prof["ssh"]["port"] == ssh_target.port
    assert os.path.isabs(prof["work_dir"]) and prof["work_dir"].startswith(str(ssh_target.state_dir))
    assert prof["runner"]["kind"] == "python"
    assert os.access(prof["runner"]["python"], os.X_OK)
    # loopback only: the port does not answer on another local address
    s = socket.socket()
    s.settimeout(2)
    try:
        assert s.connect_ex(("127.0.0.2", ssh_target.port)) != 0
    finally:
        s.close()


def test_exec_exit_status_and_separate_stderr(ssh_target):
    with _client(ssh_target) as c:
        _, out, err = c.exec_command("printf 'out\\n'; printf 'err\\n' >&2; exit 7", timeout=20)
        assert out.read() == b"out\n"
        assert err.read() == b"err\n"
        assert out.channel.recv_exit_status() == 7


def test_sftp_round_trip(ssh_target, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    remote_dir = f"{ssh_target.work_dir}/sftp test; $(x) 'q'"
    with _client(ssh_target) as c:
        sftp = c.open_sftp()
        try:
            sftp.mkdir(remote_dir)
        except OSError:
            pass
        remote = f"{remote_dir}/blob.bin"
        sftp.put(str(src), remote)
        _, out, _ = c.exec_command(f"sha256sum {shlex.quote(remote)}", timeout=30)
        remote_sha = out.read().split()[0].decode()
        back = tmp_path / "back.bin"
        sftp.get(remote, str(back))
        sftp.close()
    expected = hashlib.sha256(data).hexdigest()
    assert remote_sha == expected
    assert hashlib.sha256(back.read_bytes()).hexdigest() == expected


def test_unknown_host_key_is_refused(ssh_target):
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        c.connect(ssh_target.host, port=ssh_target.port, username=ssh_target.user,
                  key_filename=str(ssh_target.key), look_for_keys=False, allow_agent=False, timeout=10)
    c.close()


def test_wrong_pinned_key_is_refused(ssh_target, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(ssh_target.key))  # a key that is not the host's
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{ssh_target.port} ssh-ed25519 {other.get_base64()}\n")
    c = paramiko.SSHClient()
    c.load_host_keys(str(kh))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        c.connect(ssh_target.host, port=ssh_target.port, username=ssh_target.user,
                  key_filename=str(ssh_target.key), look_for_keys=False, allow_agent=False, timeout=10)
    c.close()


def test_password_login_is_refused(ssh_target, tmp_path):
    c = paramiko.SSHClient()
    c.load_host_keys(str(ssh_target.known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        c.connect(ssh_target.host, port=ssh_target.port, username=ssh_target.user, password="raspberry",
                  look_for_keys=False, allow_agent=False, timeout=10)
    c.close()
