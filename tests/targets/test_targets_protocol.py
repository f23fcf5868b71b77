"""The adb device emulator's wire protocol, checked strictly from the host side.

The real adb server is lenient; here a minimal host written from AOSP protocol.txt
talks to the emulator directly to check what the server would not notice: checksums
for old hosts, the one-unacknowledged-WRTE rule, AUTH sequencing, CLSE answers,
several sync requests in one WRTE.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.targets

A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (
    0x4E584E43, 0x48545541, 0x4E45504F, 0x59414B4F, 0x45534C43, 0x45545257)


class Host:
    def __init__(self, port: int, version: int = 0x01000001, maxdata: int = 256 * 1024):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.version = version
        self.maxdata = maxdata

    def close(self):
        self.sock.close()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, cmd, a0, a1, data=b""):
        self.sock.sendall(struct.pack("<6I", cmd, a0, a1, len(data), sum(data) & 0xFFFFFFFF,
                                      cmd ^ 0xFFFFFFFF) + data)

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def recv(self, timeout=10.0):
        """(cmd, arg0, arg1, data), checking magic (and the checksum when non-zero or required)."""
        self.sock.settimeout(timeout)
        cmd, a0, a1, n, chk, magic = struct.unpack("<6I", self._exact(24))
        assert magic == cmd ^ 0xFFFFFFFF
        data = self._exact(n) if n else b""
        if self.version < 0x01000001:
            assert chk == sum(data) & 0xFFFFFFFF, "old hosts need the data checksum"
        return cmd, a0, a1, data

    def silent(self, seconds=0.4) -> bool:
        self.sock.settimeout(seconds)
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)  # b"" = closed counts as silent too
        except socket.timeout:
            return True

    def connect(self):
        self.send(A_CNXN, self.version, self.maxdata, b"host::features=shell_v2,cmd\0")
        return self.recv()

    def open(self, local_id: int, service: str):
        self.send(A_OPEN, local_id, 0, service.encode() + b"\0")
        return self.recv()


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    from fixtures_targets import _need

    _need("adb")  # same requirements as the real chain; the emulator itself is stdlib only
    from targetlib import adbhost
    from targetlib.common import free_port, stop_pid

    root = tmp_path_factory.mktemp("proto")
    started = {}
    for name, kw in {"plain": {}, "never": {"auth": "never"}, "accept": {"auth": "accept"},
                     "offline": {"offline": True}}.items():
        started[name] = adbhost._start_emulator(root / name, free_port(), **kw)
    yield started
    for info in started.values():
        stop_pid(info["pid"], info["dir"])


def test_handshake_banner_and_old_host_checksums(emulators):
    with Host(emulators["plain"]["port"], version=0x01000000, maxdata=4096) as h:
        cmd, version, maxdata, banner = h.connect()
        assert cmd == A_CNXN and version == 0x01000000
        assert maxdata >= 4096
        text = banner.decode()
        assert text.startswith("device::")
        fields = dict(kv.split("=", 1) for kv in text[len("device::"):].split(";"))
        assert fields["ro.product.model"] == "Pixel 8" and fields["ro.product.name"] == "shiba"
        assert {"shell_v2", "cmd", "fixed_push_mkdir"} <= set(fields["features"].split(","))
        cmd, dev_id, host_id, _ = h.open(7, "shell:echo checksum")
        assert (cmd, host_id) == (A_OKAY, 7)
        cmd, a0, a1, data = h.recv()  # recv() asserts the checksum for this old host
        assert (cmd, a0, a1, data) == (A_WRTE, dev_id, 7, b"checksum\n")


def test_unknown_service_is_refused_with_clse(emulators):
    with Host(emulators["plain"]["port"]) as h:
        h.connect()
        assert h.open(3, "framebuffer:")[:3] == (A_CLSE, 0, 3)
        assert h.open(4, "shellfoo:x")[:3] == (A_CLSE, 0, 4)


def test_one_unacknowledged_wrte_per_stream(emulators):
    with Host(emulators["plain"]["port"], maxdata=4096) as h:
        h.connect()
        _, dev_id, _, _ = h.open(1, "exec:head -c 20000 /dev/zero")
        got = 0
        writes = 0
        while True:
            cmd, a0, a1, data = h.recv()
            if cmd == A_CLSE:
                break
            assert cmd == A_WRTE and len(data) <= 4096  # honours our max payload
            got += len(data)
            writes += 1
            if writes == 1:
                assert h.silent(), "sent a second WRTE before the first was acknowledged"
            h.send(A_OKAY, 1, dev_id)
        assert got == 20000 and writes >= 5
        h.send(A_CLSE, 1, dev_id)


def test_inbound_wrte_is_acknowledged_and_clse_answered(emulators):
    with Host(emulators["plain"]["port"]) as h:
        h.connect()
        _, dev_id, _, _ = h.open(5, "shell:cat")
        h.send(A_WRTE, 5, dev_id, b"ping\n")
        seen = []
        while not (A_OKAY in seen and A_WRTE in seen):
            cmd, a0, a1, data = h.recv()
            seen.append(cmd)
            if cmd == A_WRTE:
                assert data == b"ping\n"
                h.send(A_OKAY, 5, dev_id)
            else:
                assert (cmd, a0, a1) == (A_OKAY, dev_id, 5)
        h.send(A_CLSE, 5, dev_id)
        assert h.recv()[:3] == (A_CLSE, dev_id, 5)


def test_sync_requests_packed_in_one_wrte(emulators):
    sandbox = Path(emulators["plain"]["sandbox"])
    with Host(emulators["plain"]["port"]) as h:
        h.connect()
        _, dev_id, _, _ = h.open(9, "sync:")
        path = b"/data/local/tmp/packed/a b.txt,33188"
        body = b"hello sync"
        payload = (b"SEND" + struct.pack("<I", len(path)) + path
                   + b"DATA" + struct.pack("<I", len(body)) + body
                   + b"DONE" + struct.pack("<I", 1_700_000_000))
        h.send(A_WRTE, 9, dev_id, payload)
        reply = b""
        while len(reply) < 8:
            cmd, a0, a1, data = h.recv()
            if cmd == A_WRTE:
                reply += data
                h.send(A_OKAY, 9, dev_id)
        assert reply[:8] == b"OKAY" + bytes(4)
        assert (sandbox / "packed" / "a b.txt").read_bytes() == body
        assert int((sandbox / "packed" / "a b.txt").stat().st_mtime) == 1_700_000_000
        stat_path = b"/data/local/tmp/packed/a b.txt"
        h.send(A_WRTE, 9, dev_id, b"STAT" + struct.pack("<I", len(stat_path)) + stat_path + b"QUIT" + bytes(4))
        reply = b""
        closed = False
        while not closed:
            cmd, a0, a1, data = h.recv()
            if cmd == A_WRTE:
                reply += data
                h.send(A_OKAY, 9, dev_id)
            closed = cmd == A_CLSE
        ident, mode, size, mtime = struct.unpack("<4sIII", reply[:16])
        assert ident == b"STAT" and size == len(body) and mtime == 1_700_000_000 and mode & 0o100000


def test_auth_never_accepted(emulators):
    with Host(emulators["never"]["port"]) as h:
        cmd, kind, _, token = h.connect()
        assert (cmd, kind, len(token)) == (A_AUTH, 1, 20)
        h.send(A_AUTH, 2, 0, os.urandom(256))  # a signature from a key the phone does not know
        cmd, kind, _, token2 = h.recv()
        assert (cmd, kind, len(token2)) == (A_AUTH, 1, 20) and token2 != token
        h.send(A_AUTH, 3, 0, b"QAAAA... fake public key\0")
        assert h.silent(0.5)  # the "Allow USB debugging?" prompt is never answered
        h.send(A_OPEN, 1, 0, b"shell:id\0")
        assert h.silent(0.3)  # no streams before authorisation


def test_auth_accepted_after_public_key(emulators):
    with Host(emulators["accept"]["port"]) as h:
        cmd, kind, _, _ = h.connect()
        assert (cmd, kind) == (A_AUTH, 1)
        h.send(A_AUTH, 3, 0, b"QAAAA... fake public key\0")
        cmd, _, _, banner = h.recv()
        assert cmd == A_CNXN and b"Pixel 8" in banner


def test_offline_never_answers(emulators):
    with Host(emulators["offline"]["port"]) as h:
        h.send(A_CNXN, 0x01000001, 256 * 1024, b"host::\0")
        assert h.silent(0.5)


def test_output_mapping_survives_chunk_boundaries():
    from targetlib.adbemu import OutputMapper, map_command, map_device_path

    sandbox = "/tmp/x/pixel8/data_local_tmp"
    text = (f"{sandbox}/a\n" * 50).encode()
    for step in (1, 3, 7, 64):
        m = OutputMapper(sandbox)
        out = b"".join(m.feed(text[i:i + step]) for i in range(0, len(text), step)) + m.flush()
        assert out == b"/data/local/tmp/a\n" * 50
    assert map_command("cd /data/local/tmp && ls '/data/local/tmp/a b' /data/local/tmpfoo", sandbox) == (
        f"cd {sandbox} && ls '{sandbox}/a b' /data/local/tmpfoo")
    assert map_device_path("/data/local/tmp/../tmp/x", sandbox) == f"{sandbox}/x"
    assert map_device_path("/data/local/tmp/../../etc/passwd", sandbox) is None
    assert map_device_path("/data/local/tmpx", sandbox) is None


def test_a_failing_service_still_closes_its_stream(emulators):
    sandbox = Path(emulators["plain"]["sandbox"])
    moved = sandbox.with_name("moved_away")
    sandbox.rename(moved)  # the shell cannot start in a missing folder
    with Host(emulators["plain"]["port"]) as h:
        h.connect()
        cmd, dev_id, host_id, _ = h.open(11, "shell:echo never")
        assert (cmd, host_id) == (A_OKAY, 11)
        assert h.recv()[:3] == (A_CLSE, dev_id, 11)  # not a hang
        moved.rename(sandbox)
