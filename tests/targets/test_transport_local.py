"""What only LocalTransport has (read-only folders, statvfs, identity) and the pure helpers
on captured output (df, sha256sum, quoting, failure kinds, progress). The shared transport
contract (push, pull, shell, errors) is tests/targets/test_transport_contract.py."""

from __future__ import annotations

import hashlib
import os

import pytest
from fixtures_targets import HOSTILE

from edgekit.devices import open_transport
from edgekit.devices.local import LocalTransport
from edgekit.devices.transport import (
    ShellResult,
    classify_failure,
    parse_df_available_kb,
    parse_sha256sum,
    quote_argv,
)
from edgekit.errors import PermissionDenied, RuntimeMissing, StorageFull


@pytest.fixture()
def t():
    return LocalTransport("host", command_timeout=30)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_push_into_read_only_folder_is_permission_denied(t, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
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
