"""This process's own memory figures, read the one way every part of edgekit reads them.

Lives in ``edgekit/runtime`` (the bottom floor, standard library only) so that the runtime's
scoring child and the builder (a higher floor) share it (docs/contracts.md "Layering").
"""

from __future__ import annotations

import sys


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size in bytes, or None when it cannot be read.

    ``VmHWM`` of ``/proc/self/status`` (Linux); where there is no ``/proc``, ``getrusage``'s
    ``ru_maxrss`` (bytes on macOS, KiB elsewhere). VmHWM first: it counts this process's own
    memory only, while ``ru_maxrss`` of a process started by vfork + exec (Python's subprocess
    does so) starts at the peak of the parent it was started from (measured: a child started
    from a 1 GiB parent reports ru_maxrss 1036 MiB and VmHWM 11 MiB).
    """
    hwm = _kib_field("/proc/self/status", "VmHWM:")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # no getrusage on this platform
        return None
    maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def mem_available() -> int | None:
    """The kernel's estimate of memory available to start new work (``MemAvailable``), in bytes,
    or None where there is no /proc/meminfo."""
    return _kib_field("/proc/meminfo", "MemAvailable:")


def anon_rss_bytes() -> int | None:
    """This process's resident anonymous memory (``RssAnon``) in bytes, or None where it cannot be read."""
    return _kib_field("/proc/self/status", "RssAnon:")


def release_free_memory() -> int | None:
    """Collect garbage and hand the allocator's free pages back to the kernel (glibc ``malloc_trim``),
    before this process waits on a child that needs the memory. Returns how many bytes of anonymous
    memory that gave back, or None where it cannot be read (or there is no glibc)."""
    import ctypes
    import gc

    before = anon_rss_bytes()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    after = anon_rss_bytes()
    return None if before is None or after is None else before - after


def mem_total() -> int | None:
    """Physical memory (``MemTotal``), in bytes, or None where there is no /proc/meminfo."""
    return _kib_field("/proc/meminfo", "MemTotal:")


def _kib_field(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a /proc file, in bytes; None when the file or the line is missing."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
