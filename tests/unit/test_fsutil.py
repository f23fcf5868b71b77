"""Atomic writes: nothing half-written under the final name, usual modes, clear errors."""

import errno
import os
import stat

import pytest

from edgekit.errors import OutputNotWritable, ResourceError
from edgekit.fsutil import atomic_dir, atomic_path, atomic_write_json, atomic_write_text, sha256_file


def test_atomic_write_replaces_and_uses_usual_mode(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}")
    assert '"a": 2' in target.read_text()
    mode = stat.S_IMODE(target.stat().st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]


def test_atomic_dir_only_appears_complete(tmp_path):
    out = tmp_path / "dist" / "tiny"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "bundle").write_bytes(b"x")
            raise KeyboardInterrupt
    assert not out.exists()
    assert list((tmp_path / "dist").iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "bundle").write_bytes(b"y")
    assert (out / "bundle").read_bytes() == b"y"
    assert stat.S_IMODE(out.stat().st_mode) & 0o055  # not owner-only


def test_disk_full_is_a_resource_error(tmp_path, monkeypatch):
    import builtins
    real_open = builtins.open

    class Full:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(builtins, "open", Full)
    with pytest.raises(ResourceError, match="disk full"):
        atomic_write_text(tmp_path / "x.txt", "data")
    monkeypatch.setattr(builtins, "open", real_open)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent_is_output_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputNotWritable, match="cannot write"):
        atomic_write_text(blocker / "x.txt", "data")


def test_sha256_file(tmp_path):
    p = tmp_path / "b"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_stale_partial_folders_of_gone_processes_are_swept(tmp_path):
    """A build killed outright leaves its ``.<name>.partial-<pid>-*`` folder (a full-size checkpoint's is
    15 GB); the next atomic_dir of that name removes it, and only it."""
    import subprocess
    import sys

    from edgekit.fsutil import atomic_dir

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = p.pid  # reaped: no process has this pid now (a reuse would only keep the folder)
    stale = tmp_path / f".ckpt.partial-{dead}-abc"
    old = tmp_path / f".ckpt.old-{dead}"
    live = tmp_path / f".ckpt.partial-{os.getppid()}-def"  # a process that is running
    legacy = tmp_path / ".ckpt.partial-xyz"  # no pid in the name: cannot tell, left
    other = tmp_path / f".other.partial-{dead}-abc"  # another name: not this folder's
    for d in (stale, old, live, legacy, other):
        d.mkdir()
        (d / "weights").write_bytes(b"x" * 10)
    with atomic_dir(tmp_path / "ckpt") as work:
        assert work.name.startswith(f".ckpt.partial-{os.getpid()}-")
        (work / "done").write_text("ok")
    assert not stale.exists() and not old.exists()
    assert live.exists() and legacy.exists() and other.exists()
    assert (tmp_path / "ckpt" / "done").read_text() == "ok"
