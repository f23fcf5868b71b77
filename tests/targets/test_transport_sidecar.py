"""Push fast paths: the device-side sidecar, the local sha256 cache, the follower that
hashes on the device during the upload (that one on every transport:
tests/targets/test_transport_contract.py). Each shortcut is shown to be refused when it would be
wrong (a stale sidecar, a changed local file, an interrupted push)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from fixtures_targets import HOSTILE, CountingHashes, blob, sidecar_fields

from edgekit.devices import hashing
from edgekit.devices.hashing import SIDECAR_MAGIC, cached_sha256, sidecar_claim, store_sha256
from edgekit.devices.local import LocalTransport


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))


# --- local transport (no stand-ins) ---------------------------------------------------


@pytest.fixture()
def lt():
    return LocalTransport()


def test_sidecar_written_and_trusted_without_rehash(lt, tmp_path, monkeypatch):
    src = tmp_path / "b.bin"
    digest = blob(src, 700_000, seed=1, age_s=10)
    remote = str(tmp_path / "dev" / f"b {HOSTILE}.bin")
    assert lt.push(src, remote).sent
    f = sidecar_fields(lt, remote)
    assert f[0] == SIDECAR_MAGIC and f[2] == digest and f[4] == "700000"
    CountingHashes(lt, monkeypatch, forbid=True)
    t0 = time.monotonic()
    again = lt.push(src, remote)
    assert not again.sent and again.sha256 == digest and time.monotonic() - t0 < 1.0


def test_stale_sidecar_after_device_file_modified_is_not_trusted(lt, tmp_path, monkeypatch):
    src = tmp_path / "b.bin"
    digest = blob(src, 300_000, seed=2, age_s=10)
    remote = str(tmp_path / "dev" / "b.bin")
    assert lt.push(src, remote).sent
    st = os.stat(remote)
    with open(remote, "r+b") as f:  # same size, one byte changed, mtime put back
        f.seek(1000)
        f.write(b"\x00" if src.read_bytes()[1000] != 0 else b"\x01")
    os.utime(remote, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(remote).st_size == st.st_size and os.stat(remote).st_mtime_ns == st.st_mtime_ns
    calls = CountingHashes(lt, monkeypatch)
    r = lt.push(src, remote)
    assert r.sent, "a sidecar that no longer matches the file's stat must not vouch for it"
    assert calls.calls == [remote]  # the device file was hashed (and found different)
    assert hashlib.sha256(Path(remote).read_bytes()).hexdigest() == digest
    assert sidecar_fields(lt, remote)[2] == digest


def test_verify_ignores_a_lying_sidecar(lt, tmp_path):
    src = tmp_path / "b.bin"
    digest = blob(src, 200_000, seed=3, age_s=10)
    remote = str(tmp_path / "dev" / "b.bin")
    assert lt.push(src, remote).sent
    # corrupt the device copy and forge a sidecar that matches its new stat
    Path(remote).write_bytes(b"\xff" * 200_000)
    lt._write_sidecar(remote, digest)
    assert not lt.push(src, remote).sent  # the sidecar is believed: that is what it is for
    r = lt.push(src, remote, verify=True)  # `edgekit push --rehash`
    assert r.sent and hashlib.sha256(Path(remote).read_bytes()).hexdigest() == digest


def test_interrupted_push_leaves_no_sidecar_and_keeps_the_old_one_valid(lt, tmp_path):
    src = tmp_path / "b.bin"
    d1 = blob(src, 2_000_000, seed=4, age_s=10)
    remote = str(tmp_path / "dev" / "b.bin")
    fresh = str(tmp_path / "dev" / "fresh.bin")

    class Boom(Exception):
        pass

    def die(done, total):
        if done >= 500_000:
            raise Boom()

    with pytest.raises(Boom):
        lt.push(src, fresh, progress=die)
    assert not os.path.exists(fresh) and not os.path.exists(lt.sidecar_name(fresh))
    assert lt.push(src, remote).sent
    d2 = blob(src, 2_000_000, seed=5, age_s=5)  # a new version, cut off half-way
    with pytest.raises(Boom):
        lt.push(src, remote, progress=die)
    assert hashlib.sha256(Path(remote).read_bytes()).hexdigest() == d1  # old file untouched
    assert sidecar_fields(lt, remote)[2] == d1  # and its sidecar still describes it
    r = lt.push(src, remote)
    assert r.sent and r.sha256 == d2 and sidecar_fields(lt, remote)[2] == d2
    assert hashlib.sha256(Path(remote).read_bytes()).hexdigest() == d2


def test_local_sha_cache_skips_rehash_and_misses_after_change(lt, tmp_path, monkeypatch):
    src = tmp_path / "b.bin"
    digest = blob(src, 500_000, seed=6)
    time.sleep(2.1)  # ctime cannot be backdated; the cache takes files whose timestamps are > 2 s old
    assert lt.push(src, str(tmp_path / "dev" / "a.bin")).sent
    assert cached_sha256(str(src)) == digest

    def no_hash(*a, **k):
        raise AssertionError("the local file was hashed again")

    with monkeypatch.context() as m:
        m.setattr(hashing, "_HashingReader", no_hash)
        m.setattr("edgekit.fsutil.sha256_file", no_hash)
        r = lt.push(src, str(tmp_path / "dev" / "b.bin"))  # another device path: bytes sent, no local hash
        assert r.sent and r.sha256 == digest
    st = os.stat(src)
    d2 = blob(src, 500_000, seed=7)  # same size, new content, mtime put back: ctime moved
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cached_sha256(str(src)) is None
    r = lt.push(src, str(tmp_path / "dev" / "a.bin"))
    assert r.sent and r.sha256 == d2


def test_cache_refuses_a_file_too_fresh_to_trust(tmp_path):
    src = tmp_path / "b.bin"
    digest = blob(src, 1000)
    st = os.stat(src)
    assert not store_sha256(str(src), st, digest, before_ns=time.time_ns())  # mtime within 2 s of the stat
    assert cached_sha256(str(src)) is None
    # a stat taken 3 s after the file's last change: stored, and found again while unchanged
    assert store_sha256(str(src), st, digest, before_ns=st.st_ctime_ns + 3_000_000_000)
    assert cached_sha256(str(src)) == digest
    with open(src, "ab") as f:
        f.write(b"!")
    assert cached_sha256(str(src)) is None


def test_sidecar_claim_rules():
    sha = hashlib.sha256(b"x").hexdigest()
    stat_ns = ["10", "1700000000.123456789", "1700000000.123456789", "42"]
    line = f"{SIDECAR_MAGIC} 1 {sha} 1700000000 " + " ".join(stat_ns)
    assert sidecar_claim(line, stat_ns) == sha
    assert sidecar_claim(line, ["10", stat_ns[1], "1700000000.123456790", "42"]) is None  # ctime moved
    assert sidecar_claim(line, ["11", *stat_ns[1:]]) is None
    assert sidecar_claim(line.replace(sha, "z" * 64), stat_ns) is None
    # whole-second stat (toybox): a sidecar written in the ctime's own second proves nothing
    stat_s = ["10", "1700000000", "1700000000", "42"]
    same_second = f"{SIDECAR_MAGIC} 1 {sha} 1700000000 " + " ".join(stat_s)
    later = f"{SIDECAR_MAGIC} 1 {sha} 1700000001 " + " ".join(stat_s)
    assert sidecar_claim(same_second, stat_s) is None and sidecar_claim(later, stat_s) == sha
