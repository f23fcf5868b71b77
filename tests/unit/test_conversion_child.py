"""The conversion child runner shared by the float export and the per-tower encoder children
(edgekit/builder/export.py ``run_conversion_child``, ``child_failure``): its exit code, its log,
its environment and its peak RSS read from ``wait4``."""

from __future__ import annotations

import sys

from edgekit.builder.export import EXPORT_HASH_SEED, child_failure, run_conversion_child


def test_a_child_that_succeeds_gives_its_code_log_env_and_peak(tmp_path, monkeypatch):
    # the child gets TF_CPP_MIN_LOG_LEVEL=2 unless the caller set one (an earlier import in the same
    # process may have: importing jax sets it to 1)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    log = tmp_path / "child.log"
    code = ("import os, sys\n"
            "buf = bytearray(300 * 2**20)\n"            # zero pages: touch them so they count in RSS
            "for i in range(0, len(buf), 4096): buf[i] = 1\n"
            "print('hash seed', os.environ['PYTHONHASHSEED'])\n"
            "print('tf level', os.environ['TF_CPP_MIN_LOG_LEVEL'], file=sys.stderr)\n")
    rc, seconds, peak = run_conversion_child([sys.executable, "-c", code], log)
    assert rc == 0
    assert seconds > 0
    assert peak >= 300 * 2**20  # the child's own peak, not the test process's
    text = log.read_text()
    assert f"hash seed {EXPORT_HASH_SEED}" in text
    assert "tf level 2" in text  # stderr goes to the same log


def test_a_child_keeps_the_callers_tf_log_level(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    log = tmp_path / "child.log"
    code = "import os; print('tf level', os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    rc, _, _ = run_conversion_child([sys.executable, "-c", code], log)
    assert rc == 0 and "tf level 1" in log.read_text()


def test_a_child_that_raises_is_named_by_its_exception_line(tmp_path):
    log = tmp_path / "child.log"
    rc, _, _ = run_conversion_child([sys.executable, "-c", "print('[ERROR] noise')\nraise ValueError('boom')"], log)
    assert rc == 1
    assert child_failure(rc, log) == "ValueError: boom"


def test_a_killed_child_is_named_by_its_signal(tmp_path):
    log = tmp_path / "child.log"
    rc, _, _ = run_conversion_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                                    log)
    assert rc == -9
    assert child_failure(rc, log) == "killed by signal 9 (out of memory?)"
