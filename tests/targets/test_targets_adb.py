"""The Pixel 8 stand-in, checked through the real adb server with adbutils.

Chain under test: adbutils -> adb server (port 5037) -> `adb connect` -> our device
emulator (scripts/targetlib/adbemu.py). Nothing here talks to the emulator directly.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import struct
import subprocess
import time

import adbutils
import pytest
from fixtures_targets import pid_alive


def _adb() -> str:
    from targetlib.adbhost import adb_binary

    return adb_binary()


pytestmark = pytest.mark.targets

TMP = "/data/local/tmp"


@pytest.fixture(scope="module")
def client() -> adbutils.AdbClient:
    return adbutils.AdbClient(host="127.0.0.1", port=5037, socket_timeout=30)


@pytest.fixture()
def dev(adb_target, client) -> adbutils.AdbDevice:
    adb_target.ensure_connected()
    return client.device(adb_target.serial)


def _state(client, serial) -> str | None:
    return {d.serial: d.state for d in client.list()}.get(serial)


def _wait_state(client, serial, want, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(client, serial) == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{serial} is {_state(client, serial)!r}, expected {want!r}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_listed_as_pixel8(adb_target, client, dev):
    assert _state(client, adb_target.serial) == "device"
    assert dev.prop.model == "Pixel 8"
    assert dev.getprop("ro.soc.model") == "Tensor G3"
    assert dev.getprop("ro.board.platform") == "zuma"
    assert dev.getprop("ro.build.version.sdk") == "34"
    assert dev.getprop("ro.build.version.release") == "14"
    assert "shell_v2" in dev.get_features().split(",")
    long = subprocess.run([_adb(), "devices", "-l"], capture_output=True, text=True, timeout=20).stdout
    line = next(x for x in long.splitlines() if x.startswith(adb_target.serial))
    assert "model:Pixel_8" in line and "device:shiba" in line and "product:shiba" in line


def test_getprop_all_in_android_format(dev):
    lines = dev.shell("getprop").splitlines()
    props = dict(line[1:-1].split("]: [", 1) for line in lines)
    assert props["ro.product.model"] == "Pixel 8"
    assert props["ro.soc.manufacturer"] == "Google"
    assert all(line.startswith("[") and line.endswith("]") for line in lines)
    assert dev.shell("getprop no.such.prop") == ""
    assert dev.shell("getprop no.such.prop fallback") == "fallback"


def test_dumpsys_battery_and_thermal(dev):
    battery = dev.shell("dumpsys battery")
    assert battery.startswith("Current Battery Service state:")
    level = int(next(x for x in battery.splitlines() if x.strip().startswith("level:")).split(":")[1])
    assert 0 <= level <= 100
    thermal = dev.shell("dumpsys thermalservice")
    assert "Current temperatures from HAL:" in thermal
    assert "Temperature{mValue=" in thermal


def test_shell_runs_in_the_sandbox(adb_target, dev):
    assert dev.shell("echo hello; echo $((6*7))") == "hello\n42"
    assert dev.shell("cd /data/local/tmp && pwd") == TMP
    assert dev.shell("toybox echo via-toybox") == "via-toybox"
    name = f"touched-{os.getpid()}"
    dev.shell(f"touch {TMP}/{name}")
    assert (adb_target.sandbox / name).is_file()
    # a path printed by a host tool comes back as a device path
    assert dev.shell(f"ls -d {TMP}/{name}") == f"{TMP}/{name}"


def test_v2_shell_exit_codes_and_streams(dev):
    r = dev.shell2("echo out; echo err >&2; exit 5", v2=True)
    assert r.returncode == 5
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    assert dev.shell2("true", v2=True).returncode == 0
    assert dev.shell2("kill -9 $$", v2=True).returncode == 137


def test_large_output_is_flow_controlled(dev):
    # 3 MB > several max payloads: each WRTE must wait for the server's OKAY
    r = dev.shell2("head -c 3000000 /dev/zero | tr '\\0' a", v2=True, encoding=None)
    assert r.returncode == 0
    assert r.stdout == b"a" * 3_000_000


def test_exec_is_binary_safe(dev, adb_target):
    data = bytes(range(256)) * 512
    (adb_target.sandbox / "bin.dat").write_bytes(data)
    with dev.open_transport() as c:
        c.send_command(f"exec:cat {TMP}/bin.dat")
        c.check_okay()
        got = c.read_until_close(encoding=None)
    assert got == data


def test_push_pull_round_trip(dev, adb_target, tmp_path):
    data = os.urandom(4 * 1024 * 1024 + 123)
    src = tmp_path / "model.bin"
    src.write_bytes(data)
    remote = f"{TMP}/edgekit/rt/model.bin"  # parent folders created by SEND (fixed_push_mkdir)
    t0 = time.monotonic()
    assert dev.sync.push(str(src), remote) == len(data)
    push_s = time.monotonic() - t0
    info = dev.sync.stat(remote)
    assert info.size == len(data)
    assert dev.shell(f"sha256sum {remote}").split()[0] == _sha(data)
    assert _sha(adb_target.host_path(remote).read_bytes()) == _sha(data)
    dst = tmp_path / "back.bin"
    assert dev.sync.pull(remote, dst) == len(data)
    assert _sha(dst.read_bytes()) == _sha(data)
    names = dev.sync.list(f"{TMP}/edgekit/rt")
    assert "model.bin" in [f.path for f in names]
    print(f"push {len(data) / push_s / 1e6:.1f} MB/s")


def test_hostile_file_name_round_trips(dev, adb_target, tmp_path):
    name = """we ird 'q' "d" ;$(touch PWNED) `touch PWNED2` x.bin"""
    folder = f"{TMP}/edgekit/hostile dir; $(id)"
    remote = f"{folder}/{name}"
    data = os.urandom(100_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dev.sync.push(str(src), remote)
    assert name in [f.path for f in dev.sync.list(folder)]
    assert dev.shell(f"sha256sum {shlex.quote(remote)}").split()[0] == _sha(data)
    r = dev.shell2(f"ls {shlex.quote(folder)}", v2=True)
    assert r.returncode == 0 and r.stdout.rstrip("\n") == name
    assert dev.sync.read_bytes(remote) == data
    assert not list(adb_target.sandbox.rglob("PWNED*"))
    assert not (adb_target.sandbox.parent / "PWNED").exists()


def test_unauthorized_phone(adb_target, client):
    with adb_target.extra_device(auth="never") as serial:
        assert _state(client, serial) == "unauthorized"
        with pytest.raises(adbutils.AdbError, match="unauthorized"):
            client.device(serial).shell("echo hi")
        # the healthy stand-in is not affected
        assert client.device(adb_target.serial).shell("echo ok") == "ok"
    assert _state(client, serial) is None


def test_phone_that_accepts_the_servers_key(adb_target, client):
    # AUTH token -> the server signs it / sends its public key -> the phone accepts
    with adb_target.extra_device(auth="accept") as serial:
        assert _state(client, serial) == "device"
        assert client.device(serial).shell("getprop ro.product.model") == "Pixel 8"


def test_offline_phone(adb_target, client):
    with adb_target.extra_device(offline=True) as serial:
        assert _state(client, serial) == "offline"
        with pytest.raises(adbutils.AdbError, match="offline"):
            client.device(serial).shell("echo hi")
    assert _state(client, serial) is None


def test_dropped_connection_mid_push_then_reconnect(adb_target, client, dev, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    remote = f"{TMP}/edgekit/drop/big.bin"
    with adb_target.faults(drop_after_bytes=1_000_000):
        with pytest.raises((adbutils.AdbError, ConnectionError, OSError)):
            dev.sync.push(str(src), remote)
    partial = adb_target.host_path(remote)
    assert partial.exists() and partial.stat().st_size == 1_000_000  # like a killed cable: a partial file
    # the server can reconnect to the same device (it may already have done so by itself)
    deadline = time.monotonic() + 30
    while _state(client, adb_target.serial) != "device" and time.monotonic() < deadline:
        client.connect(adb_target.serial, timeout=10)
        time.sleep(0.2)
    assert _state(client, adb_target.serial) == "device"
    dev = client.device(adb_target.serial)
    assert dev.sync.push(str(src), remote) == len(data)
    assert dev.shell(f"sha256sum {remote}").split()[0] == _sha(data)


def test_storage_full(adb_target, dev, tmp_path):
    src = tmp_path / "two_mb.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    used = sum(p.stat().st_size for p in adb_target.sandbox.rglob("*") if p.is_file() and not p.is_symlink())
    remote = f"{TMP}/edgekit/full/two_mb.bin"
    with adb_target.faults(quota_bytes=used + 1024 * 1024):
        with pytest.raises(adbutils.AdbError):
            dev.sync.push(str(src), remote)
        # the raw sync reply names the cause, as adbd does
        assert "No space left on device" in _raw_send_failure(dev, remote, src.read_bytes())
        assert not adb_target.host_path(remote).exists()
        cols = dev.shell(f"df -k {TMP}").splitlines()[-1].split()
        assert int(cols[3]) * 1024 <= 1024 * 1024 and cols[-1] == "/data"
    assert dev.sync.push(str(src), remote) == 2 * 1024 * 1024  # quota lifted


def test_permission_denied_outside_sandbox(dev, tmp_path):
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 10)
    with pytest.raises(adbutils.AdbError):
        dev.sync.push(str(src), "/system/bin/x.bin")
    assert "Permission denied" in _raw_send_failure(dev, "/system/bin/x.bin", b"x")
    assert not os.path.exists("/system/bin/x.bin")
    assert dev.sync.stat("/etc/passwd").mode == 0  # not readable through sync
    # /proc stays readable, as on a phone
    assert b"Pss:" in dev.sync.read_bytes("/proc/self/smaps_rollup")


def test_closing_a_stream_ends_its_process(dev):
    c = dev.open_transport()
    c.send_command("shell,v2:echo $$; exec sleep 60")
    c.check_okay()
    head = c.read_exact(5)
    assert head[0] == 1
    pid = int(c.read_exact(struct.unpack("<I", head[1:])[0]).decode())
    assert os.path.exists(f"/proc/{pid}")
    c.close()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def _raw_send_failure(dev, remote: str, data: bytes) -> str:
    """SEND through the adb server by hand and return the FAIL message (adbutils drops it)."""
    with dev.open_transport() as c:
        c.send_command("sync:")
        c.check_okay()
        spec = f"{remote},{0o100644}".encode()
        c.conn.send(b"SEND" + struct.pack("<I", len(spec)) + spec)
        for i in range(0, len(data), 64 * 1024):
            chunk = data[i:i + 64 * 1024]
            c.conn.send(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        c.conn.send(b"DONE" + struct.pack("<I", int(time.time())))
        status = c.read_exact(4)
        length = struct.unpack("<I", c.read_exact(4))[0]
        message = c.read_exact(length).decode() if status == b"FAIL" else ""
    assert status == b"FAIL", status
    return message


def test_rejoins_after_adb_server_restart(adb_target, client, dev):
    from targetlib import adbhost

    adbhost.disconnect(adb_target.serial)  # as if the shared server had been restarted
    assert _state(client, adb_target.serial) is None
    adb_target.ensure_connected()
    assert client.device(adb_target.serial).shell("getprop ro.product.model") == "Pixel 8"


def test_dropped_push_like_adbd_removes_the_partial_file(adb_target, client, dev, tmp_path):
    src = tmp_path / "one_mb.bin"
    src.write_bytes(os.urandom(1024 * 1024))
    remote = f"{TMP}/edgekit/drop2/one_mb.bin"
    with adb_target.faults(drop_after_bytes=300_000, drop_keep_partial=False):
        with pytest.raises((adbutils.AdbError, ConnectionError, OSError)):
            dev.sync.push(str(src), remote)
    assert not adb_target.host_path(remote).exists()
    adb_target.ensure_connected()
    assert client.device(adb_target.serial).sync.push(str(src), remote) == 1024 * 1024
