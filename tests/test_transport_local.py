"""LocalTransport round trips, quoting of hostile names, df parsing, error kinds."""

from __future__ import annotations

import hashlib
import os

import pytest

from edgekit.devices import open_transport
from edgekit.devices.local import LocalTransport
from edgekit.devices.transport import (
    PART_SUFFIX,
    ShellResult,
    classify_failure,
    parse_df_available_kb,
    parse_sha256sum,
    quote_argv,
)
from edgekit.errors import PermissionDenied, RuntimeMissing, StorageFull, TransportTimeout, DeviceError

HOSTILE = "we ird 'q\" ;$(touch PWNED) `id` & | > *"


@pytest.fixture()
def t():
    return LocalTransport("host", command_timeout=30)


def _blob(path, n, seed=0):
    data = hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1)
    path.write_bytes(data[:n])
    return hashlib.sha256(data[:n]).hexdigest()


def test_push_pull_round_trip_hostile_names(t, tmp_path):
    src = tmp_path / "src.bin"
    digest = _blob(src, 2_500_000)
    rdir = tmp_path / HOSTILE
    remote = str(rdir / ("bundle " + HOSTILE + ".litertlm"))
    seen = []
    r = t.push(src, remote, progress=lambda d, tot: seen.append((d, tot)))
    assert r.sent and r.sha256 == digest and r.bytes == 2_500_000 and r.seconds > 0
    assert seen and seen[-1] == (2_500_000, 2_500_000)
    # no part file left, nothing injected; the sidecar records the verified sha256
    assert sorted(os.listdir(rdir)) == sorted([os.path.basename(remote), os.path.basename(t.sidecar_name(remote))])
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")
    assert t.sha256(remote) == digest
    st = t.stat(remote)
    assert st.size == 2_500_000 and not st.is_dir
    again = t.push(src, remote)
    assert not again.sent and again.sha256 == digest
    back = tmp_path / "back.bin"
    t.pull(remote, back)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    # shell quoting: the argument arrives byte for byte
    out = t.sh('printf %s "$1"', HOSTILE).stdout
    assert out == HOSTILE
    ls = t.shell(["ls", str(rdir)]).stdout  # ls hides the dot-named sidecar
    assert ls.strip() == os.path.basename(remote)


def test_changed_file_is_sent_again(t, tmp_path):
    src = tmp_path / "a.bin"
    _blob(src, 100_000, seed=1)
    remote = str(tmp_path / "dev" / "a.bin")
    assert t.push(src, remote).sent
    d2 = _blob(src, 100_000, seed=2)  # same size, other content
    r = t.push(src, remote)
    assert r.sent and t.sha256(remote) == d2


def test_interrupted_push_is_never_taken_as_complete(t, tmp_path):
    src = tmp_path / "a.bin"
    digest = _blob(src, 3_000_000, seed=3)
    remote = str(tmp_path / "dev" / "a.bin")

    class Boom(Exception):
        pass

    def die(done, total):
        if done >= 1_000_000:
            raise Boom()

    with pytest.raises(Boom):
        t.push(src, remote, progress=die)
    assert t.stat(remote) is None  # the final name never appeared
    part = t.stat(t.part_name(remote))
    assert part is not None and 0 < part.size < 3_000_000
    assert t.part_name(remote).endswith(PART_SUFFIX)
    r = t.push(src, remote)
    assert r.sent and t.sha256(remote) == digest
    assert t.stat(t.part_name(remote)) is None
    # a truncated file under the final name (another tool's crash) is not skipped either
    with open(remote, "r+b") as f:
        f.truncate(10)
    assert t.push(src, remote).sent and t.sha256(remote) == digest


def test_shell_exit_codes_and_errors(t, tmp_path):
    r = t.shell(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert r == ShellResult(3, "out\n", "err\n")
    with pytest.raises(DeviceError) as ei:
        t.shell(["sh", "-c", "exit 4"])
    assert "exit 4" in str(ei.value)
    with pytest.raises(RuntimeMissing):
        t.shell(["definitely-not-a-command-xyz"])
    with pytest.raises(TransportTimeout):
        t.shell(["sleep", "5"], timeout=0.3)
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.geteuid() != 0:
            with pytest.raises(PermissionDenied):
                t.push(__file__, str(ro / "x" / "y"))
    finally:
        os.chmod(ro, 0o700)


def test_free_bytes_matches_statvfs(t, tmp_path):
    st = os.statvfs(tmp_path)
    free = t.free_bytes(str(tmp_path / "not" / "yet"))
    assert abs(free - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    # the generic df path (used by ssh/adb) agrees with statvfs too
    from edgekit.devices.transport import BaseTransport

    free_df = BaseTransport.free_bytes(t, str(tmp_path / "not" / "yet"))
    assert abs(free_df - free) < 64 * 1024 * 1024


def test_storage_full_before_sending(t, tmp_path, monkeypatch):
    src = tmp_path / "a.bin"
    _blob(src, 10_000)
    monkeypatch.setattr(t, "free_bytes", lambda d: 5_000)
    with pytest.raises(StorageFull):
        t.push(src, str(tmp_path / "dev" / "a.bin"))
    assert t.stat(str(tmp_path / "dev" / "a.bin")) is None


def test_identity_and_open_transport():
    t = open_transport("host")
    ident = t.identity()
    assert ident["transport"] == "local" and ident["arch"] == os.uname().machine
    assert ident["host"] == os.uname().nodename


# --- pure helpers on captured output -------------------------------------------------

DF_COREUTILS = """Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/vda1         41152736 22347712  16691488      58% /
"""
DF_TOYBOX = """Filesystem     1K-blocks    Used Available Use% Mounted on
/dev/block/dm-48 115324080 29573512  85619496  26% /data
"""
DF_BUSYBOX_WRAPPED = """Filesystem           1K-blocks      Used Available Use% Mounted on
/dev/mapper/very-long-volume-group-name-root
                      30832548  12345678  16912345  43% /
"""


@pytest.mark.parametrize("text, kb", [(DF_COREUTILS, 16691488), (DF_TOYBOX, 85619496), (DF_BUSYBOX_WRAPPED, 16912345)])
def test_parse_df(text, kb):
    assert parse_df_available_kb(text) == kb


def test_parse_df_garbage():
    with pytest.raises(ValueError):
        parse_df_available_kb("df: /nope: No such file or directory\n")


def test_parse_sha256sum():
    h = hashlib.sha256(b"x").hexdigest()
    assert parse_sha256sum(f"{h}  /data/local/tmp/a b\n") == h
    with pytest.raises(ValueError):
        parse_sha256sum("sha256sum: x: No such file or directory")


def test_quote_argv_is_inert_under_sh(t):
    argv = ["printf", "%s\\n", HOSTILE, "", "a\nb", "-n"]
    line = quote_argv(argv)
    out = t._run(line, 10).stdout
    assert out == f"{HOSTILE}\n\na\nb\n-n\n"
    with pytest.raises(ValueError):
        quote_argv(["a\x00b"])


@pytest.mark.parametrize(
    "res, kind",
    [
        (ShellResult(1, "", "cp: write error: No space left on device"), StorageFull),
        (ShellResult(1, "", "mkdir: '/system/x': Read-only file system"), PermissionDenied),
        (ShellResult(1, "", "sh: /data/x: Permission denied"), PermissionDenied),
        (ShellResult(127, "", "sh: litert_lm_main: not found"), RuntimeMissing),
        (ShellResult(126, "", "sh: ./x: cannot execute"), PermissionDenied),
    ],
)
def test_classify_failure(res, kind):
    assert type(classify_failure("cmd", res)) is kind


def test_progress_only_on_a_terminal():
    import io

    from edgekit.devices.transport import default_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert default_progress("push", io.StringIO()) is None  # a pipe or file: no progress bar
    tty = Tty()
    show = default_progress("push x", tty)
    show(50, 100)
    show(100, 100)
    text = tty.getvalue()
    assert "push x" in text and "100.0%" in text and text.endswith("\n")
