"""A build stopped from outside leaves no conversion child running and no half-written output.

CI runners cancel a job with SIGTERM (then SIGKILL); the OOM killer sends SIGKILL. A
conversion child holds GBs at full size, so it must not outlive the builder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"edgekit.builder.export" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_build(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, EDGEKIT_CACHE=str(tmp_path / "cache"))  # cold: the export child must run
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "build", "tiny", "--random-weights", "--text-only",
         "--scheme", "fp16", "--output", str(tmp_path / "out")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        kids = _children(proc.pid)
        if kids:
            return proc, kids[0]
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"no export child appeared (exit {proc.returncode}): {err.decode()[-800:]}")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_stops_the_build_and_its_conversion_child(tmp_path):
    proc, child = _start_build(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    err_s = err.decode()
    assert proc.returncode == 130, err_s  # the Ctrl-C exit code
    assert "error: interrupted by SIGTERM" in err_s
    assert "Traceback" not in err_s
    assert _gone_within(child, 10), "the export child outlived the builder"
    out_dir = tmp_path / "out"
    left = [p.name for p in out_dir.iterdir()] if out_dir.is_dir() else []
    assert not [n for n in left if n.endswith("-text")], left  # no bundle folder that looks complete


def test_a_killed_builder_takes_its_conversion_child_with_it(tmp_path):
    proc, child = _start_build(tmp_path)
    proc.kill()  # SIGKILL: no handler runs in the builder (as with the OOM killer)
    proc.communicate(timeout=60)
    try:
        assert _gone_within(child, 10), "the export child outlived a SIGKILLed builder"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
