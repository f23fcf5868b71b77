"""edgekit/runtime/procinfo.py: the one reading of a process's peak RSS (the builder's stage
peaks and the scoring child's figure)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from edgekit.runtime import procinfo

ROOT = Path(__file__).resolve().parents[2]


def _touch(nbytes: int) -> bytearray:
    buf = bytearray(nbytes)
    for i in range(0, nbytes, 4096):  # zero pages count in RSS only once written
        buf[i] = 1
    return buf


def test_peak_counts_this_process_memory():
    before = procinfo.peak_rss_bytes()
    buf = _touch(256 * 2**20)
    after = procinfo.peak_rss_bytes()
    assert before is not None and after is not None
    assert after >= 256 * 2**20
    assert after >= before
    del buf


def test_a_child_does_not_inherit_the_parent_peak():
    buf = _touch(512 * 2**20)  # the parent's peak is now at least 512 MiB
    code = ("import json, resource, sys; sys.path.insert(0, sys.argv[1]); "
            "from edgekit.runtime.procinfo import peak_rss_bytes; "
            "print(json.dumps([peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))")
    peak, maxrss = json.loads(subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True,
                                             text=True, check=True).stdout)
    del buf
    assert peak < 200 * 2**20, (peak, maxrss)  # a bare interpreter and numpy-free import: tens of MiB
    assert peak <= maxrss


def test_without_proc_it_falls_back_to_getrusage(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(procinfo, "open", no_proc, raising=False)
    got = procinfo.peak_rss_bytes()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert got == (maxrss if sys.platform == "darwin" else maxrss * 1024)


def test_release_free_memory_gives_freed_heap_back():
    """Freed small allocations under a live one stay resident until malloc_trim hands them back
    (the builder does this before it waits on an engine child)."""
    import subprocess
    import sys

    code = ("from edgekit.runtime import procinfo as pi\n"
            "junk = [bytearray(1024) for _ in range(200_000)]\n"
            "sentinel = bytearray(1024)  # keeps the heap's top in use: free() alone cannot shrink it\n"
            "del junk\n"
            "held = pi.anon_rss_bytes()\n"
            "freed = pi.release_free_memory()\n"
            "print(held, freed, pi.anon_rss_bytes())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    held, freed, after = (int(x) for x in out)
    assert freed > 150 * 2**20, (held, freed, after)  # ~200 MB of 1 KB buffers
    assert after < held - 150 * 2**20
