"""Checksums for ``push``: the local file hashed once while it is read for the upload,
a cache of local sha256 values, and the device-side scripts (sidecar, follower).

* :class:`UploadSource` hands the upload fresh readers of the local file; every block
  read is hashed in a helper thread (``hashlib`` releases the GIL), so the upload and
  the local checksum are one pass over the file. A retried upload opens a new reader,
  which starts the hash again.
* :func:`cached_sha256` / :func:`store_sha256`: local sha256 by (real path, size,
  mtime_ns, ctime_ns, inode, device) under ``$EDGEKIT_CACHE/sha256`` (default
  ``./.cache/edgekit``), so an unchanged bundle is not hashed again. An entry is stored
  only when the file did not change while it was read and its timestamps are older than
  the file system's time granularity could hide.
* The *sidecar* ``.NAME.edgekit-sha256`` beside a pushed file records the sha256 that
  was verified on the device together with the file's size, mtime, ctime and inode as
  the device's ``stat`` printed them right after the rename. A later push trusts it only
  while all four still match (any write, truncate, ``touch`` or replacement changes
  ctime); with whole-second timestamps (toybox) a sidecar written in the same second as
  the file's ctime is not trusted (it could hide a same-second change).
* The *follower* runs on the device during the upload and hashes the temporary file as
  it grows (whole blocks, read back from the device's storage), so the device-side
  check costs no extra pass after the bytes arrive.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SIDECAR_SUFFIX = ".edgekit-sha256"
SIDECAR_MAGIC = "edgekit-sha256"
READ_BLOCK = 1 << 20
CACHE_ENV = "EDGEKIT_CACHE"
FOLLOW_BLOCK = 1 << 20

# --- local side ------------------------------------------------------------------------


class _HashingReader:
    """File-like reader of the local file; each 1 MiB block is hashed in a helper thread."""

    def __init__(self, path: str, on_block=None):
        self._f = open(path, "rb")
        self._buf = memoryview(b"")
        self._h = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(maxsize=16)
        self._t = threading.Thread(target=self._run, name="edgekit-sha256", daemon=True)
        self._t.start()
        self.bytes_read = 0
        self.eof = False

    def _run(self) -> None:
        while True:
            b = self._q.get()
            if b is None:
                return
            self._h.update(b)

    def _fill(self) -> bool:
        block = self._f.read(READ_BLOCK)
        if not block:
            self.eof = True
            return False
        self._q.put(block)
        self.bytes_read += len(block)
        self._buf = memoryview(block)
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [bytes(self._buf)]
            self._buf = memoryview(b"")
            while self._fill():
                parts.append(bytes(self._buf))
                self._buf = memoryview(b"")
            return b"".join(parts)
        if not self._buf and not self._fill():
            return b""
        out = self._buf[:n]
        self._buf = self._buf[n:]
        return bytes(out)

    def hexdigest(self) -> str:
        self._q.put(None)
        self._t.join()
        return self._h.hexdigest()

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class UploadSource:
    """The local file of one push. ``open()`` gives a hashing reader (one per attempt);
    ``digest()`` is the sha256 of the last reader that was read to the end.

    With ``known_sha`` (from the cache, valid for the stat ``known_stat``) the file is read
    without hashing, and ``digest()`` returns it only if the file's stat is unchanged."""

    def __init__(self, path: str, known_sha: str | None = None, known_stat: os.stat_result | None = None):
        self.path = path
        self.size = os.path.getsize(path)
        self._last: _HashingReader | None = None
        self._known = (known_sha, known_stat) if known_sha and known_stat else None
        self.attempts = 0

    def open(self):
        self.attempts += 1
        if self._known is not None:
            return open(self.path, "rb")
        self._last = _HashingReader(self.path)
        return self._last

    def digest(self) -> str | None:
        if self._known is not None:
            sha, before = self._known
            try:
                now = os.stat(self.path)
            except OSError:
                return None
            same = (now.st_size, now.st_mtime_ns, now.st_ctime_ns, now.st_ino) == (
                before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)
            return sha if same else None
        r = self._last
        if r is None:
            return None
        # the whole file went through the hash only if the reader hit the end
        if not r.eof:
            r.read(-1)
        d = r.hexdigest()
        return d if r.bytes_read == self.size else None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.cwd() / ".cache" / "edgekit") / "sha256"


def _key(path: str, st: os.stat_result) -> tuple[str, dict]:
    real = os.path.realpath(path)
    ident = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
             "ino": st.st_ino, "dev": st.st_dev}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32], ident


def cached_sha256(path: str, st: os.stat_result | None = None) -> str | None:
    """The cached sha256 of ``path`` if the file is unchanged since it was recorded, else None."""
    st = st or os.stat(path)
    key, ident = _key(path, st)
    try:
        rec = json.loads((cache_dir() / key[:2] / key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or any(rec.get(k) != v for k, v in ident.items()):
        return None
    sha = rec.get("sha256")
    return sha if isinstance(sha, str) and len(sha) == 64 else None


def store_sha256(path: str, before: os.stat_result, sha: str, before_ns: int | None = None,
                 granularity_s: float = 2.0) -> bool:
    """Record ``sha`` for ``path`` if the file is unchanged since ``before`` (its stat taken at
    wall time ``before_ns``, before the read began) and its timestamps were at least
    ``granularity_s`` older than that stat: a change right after the stat, within the same
    timestamp tick, could otherwise leave the stat as it was."""
    try:
        after = os.stat(path)
    except OSError:
        return False
    same = (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)
    when = before_ns if before_ns is not None else time.time_ns()
    if not same or when - max(before.st_mtime_ns, before.st_ctime_ns) < granularity_s * 1e9:
        return False
    key, ident = _key(path, after)
    try:
        from edgekit.fsutil import atomic_write_json

        atomic_write_json(cache_dir() / key[:2] / key, {**ident, "sha256": sha})
    except OSError:
        return False  # a read-only cache only costs a rehash next time
    return True


def local_sha256(path: str) -> str:
    """sha256 of a local file, from the cache when unchanged (and cached afterwards)."""
    st = os.stat(path)
    t = time.time_ns()
    sha = cached_sha256(path, st)
    if sha is None:
        from edgekit.fsutil import sha256_file

        sha = sha256_file(path)
        store_sha256(path, st, sha, before_ns=t)
    return sha


# --- device side -----------------------------------------------------------------------

# The fastest sha256 the device has: openssl (hardware SHA instructions) when present,
# else sha256sum (coreutils, busybox, toybox). Reads stdin when no file is given.
HASH_FN = r"""
edgekit_hash() {
  if command -v openssl >/dev/null 2>&1 && openssl dgst -sha256 -r </dev/null >/dev/null 2>&1; then
    openssl dgst -sha256 -r "$@"
  else
    sha256sum "$@"
  fi
}
"""

# `stat` of one file as "size mtime ctime inode"; nanoseconds where stat can print them.
STAT_FN = r"""
edgekit_stat() {
  st=$(stat -c '%s %.9Y %.9Z %i' "$1" 2>/dev/null)
  case "$st" in
    *[!0-9.\ ]*|'') st=$(stat -c '%s %Y %Z %i' "$1") || return 1 ;;
  esac
  printf '%s\n' "$st"
}
"""

SHA256_SCRIPT = HASH_FN + 'edgekit_hash "$1"'

# $1 file, $2 sidecar: "missing", "dir", or the file's stat line then the sidecar's text.
PROBE_SCRIPT = STAT_FN + r"""
if [ -d "$1" ]; then echo dir; exit 0; fi
if [ ! -e "$1" ]; then echo missing; exit 0; fi
edgekit_stat "$1" || exit 1
cat "$2" 2>/dev/null
true
"""

# $1 file, $2 sidecar, $3 sha256: record the verified sha with the file's stat, atomically.
WRITE_SIDECAR = STAT_FN + r"""
st=$(edgekit_stat "$1") || exit 1
now=$(date +%s)
printf '%s 1 %s %s %s\n' "edgekit-sha256" "$3" "$now" "$st" > "$2.tmp" && mv -f "$2.tmp" "$2"
"""

# $1 part, $2 final, $3 sidecar, $4 sha256: drop the old sidecar, rename, write the new one.
FINALIZE_SCRIPT = STAT_FN + r"""
rm -f "$3" || exit 1
mv -f "$1" "$2" || exit 1
st=$(edgekit_stat "$2") || exit 0
now=$(date +%s)
{ printf '%s 1 %s %s %s\n' "edgekit-sha256" "$4" "$now" "$st" > "$3.tmp" && mv -f "$3.tmp" "$3"; } 2>/dev/null
true
"""

# $1 part file, $2 total bytes, $3 block size, $4 seconds without growth before giving up.
# Hashes the part file while the upload writes it: whole blocks as they become
# available, the tail once the file has its full size. Reads what is on the device's
# storage, like a sha256sum after the upload would, only overlapped with it. Prints
# the digest (stdout) and "edgekit-follow done" (stderr) when it read every byte.
FOLLOW_SCRIPT = HASH_FN + r"""
p=$1; n=$2; bs=$3; stall=$4
total=$(( (n + bs - 1) / bs ))
ticks=$(( stall * 20 ))
follow() {
  b=0; idle=0
  while [ "$b" -lt "$total" ]; do
    sz=$(stat -c %s "$p" 2>/dev/null) || sz=0
    if [ "$sz" -lt $(( b * bs )) ]; then echo "edgekit-follow shrank" >&2; return 1; fi
    if [ "$sz" -ge "$n" ]; then avail=$total; else avail=$(( sz / bs )); fi
    if [ "$avail" -gt "$b" ]; then
      dd if="$p" bs="$bs" skip="$b" count=$(( avail - b )) 2>/dev/null || return 1
      b=$avail; idle=0
    else
      idle=$(( idle + 1 ))
      if [ "$idle" -gt "$ticks" ]; then echo "edgekit-follow stalled" >&2; return 1; fi
      sleep 0.05 2>/dev/null || sleep 1
    fi
  done
  echo "edgekit-follow done" >&2
}
follow | edgekit_hash
"""


@dataclass(frozen=True)
class RemoteFileState:
    """The device's view of a push target: its stat line and the sidecar's claim."""

    size: int
    mtime: str
    ctime: str
    inode: str
    sidecar_sha: str | None  # the sha256 the sidecar vouches for, None if absent/stale

    @property
    def stat_tuple(self) -> tuple[str, str, str, str]:
        return (str(self.size), self.mtime, self.ctime, self.inode)


def parse_probe(text: str) -> RemoteFileState | str:
    """PROBE_SCRIPT output -> "missing" | "dir" | RemoteFileState (sidecar checked)."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty probe output")
    head = lines[0].strip()
    if head in ("missing", "dir"):
        return head
    parts = head.split()
    if len(parts) != 4 or not parts[0].isdigit():
        raise ValueError(f"unexpected stat output: {head!r}")
    size, mtime, ctime, inode = parts
    sidecar = lines[1].strip() if len(lines) > 1 else ""
    return RemoteFileState(int(size), mtime, ctime, inode, sidecar_claim(sidecar, parts))


def sidecar_claim(line: str, stat_parts: list[str]) -> str | None:
    """The sha256 a sidecar line vouches for, if it still describes the file ``stat_parts``."""
    f = line.split()
    if len(f) != 8 or f[0] != SIDECAR_MAGIC or f[1] != "1":
        return None
    sha, written, recorded = f[2], f[3], f[4:8]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        return None
    if recorded != list(stat_parts):
        return None  # the file was written, truncated, touched or replaced since
    ctime = stat_parts[2]
    if "." not in ctime:
        # whole-second timestamps: a change in the same second as the sidecar would not
        # move ctime, so a sidecar written in the file's ctime second proves nothing
        try:
            if int(written) <= int(ctime):
                return None
        except ValueError:
            return None
    return sha
