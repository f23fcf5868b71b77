"""Shared, cached QAT test material (one copy per pytest process) for tests/test_qat_*.py.

Kept out of conftest/fixture plugins on purpose: only the QAT tests use it. Each
function caches its result for the session, so a checkpoint or bundle is made once.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fixtures_bundles import session_tempdir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_qat_checkpoint.py"


def workdir() -> Path:
    return session_tempdir("edgekit-qat-tests-")


def script_module():
    spec = importlib.util.spec_from_file_location("make_qat_checkpoint", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_script(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))


@functools.lru_cache(maxsize=None)
def random_checkpoint(preset: str = "tiny", width_div: int = 1) -> Path:
    out = workdir() / f"random-{preset}-w{width_div}"
    r = run_script(str(out), "--preset", preset, "--width-div", str(width_div), "--random")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


QAT_STEPS = int(os.environ.get("EDGEKIT_TEST_QAT_STEPS", "40"))


@functools.lru_cache(maxsize=None)
def tiny_qat_checkpoint() -> Path:
    """The tiny model after a short QAT fine-tune (E2B bit map, calibrated SRQ scales)."""
    out = workdir() / "tiny-qat"
    r = run_script(str(out), "--preset", "tiny", "--steps", str(QAT_STEPS))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def copy_checkpoint(src: Path, name: str) -> Path:
    dst = workdir() / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst
