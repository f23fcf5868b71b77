"""Smoke tests of the helpers in scripts/bench/_common.py (the benchmarks themselves are not tests)."""

from __future__ import annotations

import importlib.util
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def C():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "scripts" / "bench" / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_run_measured_sees_memory_of_a_grandchild(C):
    # the parent allocates nothing; a grandchild holds ~200 MB for a moment
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'b = bytearray(200 * 2**20); import time; time.sleep(0.8)'])")
    r = C.run_measured([sys.executable, "-c", code], interval=0.05)
    assert r.returncode == 0
    assert r.mem.samples >= 3
    assert 180 * C.MIB < r.mem.peak_tree_rss < 600 * C.MIB
    # the child's own rusage holds the grandchild it reaped, with or without sampling
    assert 180 * C.MIB < r.rusage_maxrss < 600 * C.MIB
    assert r.peak_rss >= r.mem.peak_tree_rss
    small = C.run_measured([sys.executable, "-c", "import time; time.sleep(0.3)"], interval=0.05)
    assert small.peak_rss < r.peak_rss - 150 * C.MIB


def test_run_measured_ignores_other_children_of_the_process(C):
    """A big child of this process that is reaped while a small command runs is not the command's memory.

    getrusage(RUSAGE_CHILDREN) of the measuring process would grow to the big child's peak
    here (Popen's own clean-up of finished children reaps them at any later Popen); the
    figure must be the measured command's alone, whatever ran before in the process.
    """
    big = subprocess.Popen([sys.executable, "-c", "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])"])

    class Reap:
        """A watcher that reaps the big child while the measured command runs."""

        def __init__(self, pid, t0):
            big.wait()

        def stop(self):
            pass

    r = C.run_measured([sys.executable, "-c", "import time; time.sleep(0.3)"], interval=0.05, watchers=[Reap])
    assert big.returncode == 0
    assert r.returncode == 0
    assert 0 < r.rusage_maxrss < 100 * C.MIB, r.rusage_maxrss
    assert r.peak_rss < 100 * C.MIB, r.peak_rss


def test_run_measured_does_not_charge_the_callers_size(C):
    """A command started from a big process is not charged that process's size.

    ru_maxrss of a forked child starts at the parent's resident size (kept across exec), so a
    pytest process that has loaded torch would make a `sleep` look hundreds of MB big; the
    launcher run_measured starts is small and fresh.
    """
    ballast = bytearray(400 * C.MIB)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # resident, not only reserved
    try:
        r = C.run_measured([sys.executable, "-c", "import time; time.sleep(0.3)"], interval=0.05)
    finally:
        del ballast
    assert r.returncode == 0
    assert 0 < r.rusage_maxrss < 100 * C.MIB, r.rusage_maxrss
    assert r.peak_rss < 100 * C.MIB, r.peak_rss


def test_run_measured_timeout_kills_the_command(C):
    t0 = time.monotonic()
    r = C.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], interval=0.05, timeout=0.5)
    assert r.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 10


def test_run_measured_timestamps_stderr_and_keeps_stdout(C):
    code = "import sys, time; print('a', file=sys.stderr, flush=True); time.sleep(0.4); print('b', file=sys.stderr); print('out')"
    r = C.run_measured([sys.executable, "-c", code], interval=0.05)
    assert r.stdout.strip() == "out"
    (t_a, a), (t_b, b) = r.stderr_lines
    assert (a.strip(), b.strip()) == ("a", "b")
    assert t_b - t_a >= 0.35
    assert r.line_before(t_a + 0.1) == "a"
    assert r.line_before(t_b + 0.01) == "b"


def test_targets_and_rows(C):
    assert C.verdict(C.target(">=", 2.5), 2.5) == "PASS"
    assert C.verdict(C.target(">=", 2.5), 2.49) == "MISS"
    assert C.verdict(C.target("<=", 0.8), 0.81) == "MISS"
    assert C.verdict(C.target("within", 0.05), 0.951) == "PASS"
    assert C.verdict(C.target("within", 0.05), 1.06) == "MISS"
    assert C.verdict(C.target("<=", 1), None) == "n/a"
    assert C.verdict(C.target("<=", 1), float("nan")) == "n/a"
    rows = [C.Row("decode", 30.0, 10.0, C.ratio(30.0, 10.0), C.target(">=", 2.5)),
            C.Row("ttft", 9.0, 10.0, C.ratio(9.0, 10.0), C.target("<=", 0.8))]
    text = C.table(rows, ("metric", "q", "f", "q/f"))
    assert "| decode | 30 | 10 | 3x | >= 2.5x | PASS |" in text
    assert "| ttft | 9 | 10 | 0.9x | <= 0.8x | MISS |" in text
    assert C.verdicts(rows) == {"PASS": 1, "MISS": 1, "n/a": 0}
    assert C.ratio(1.0, 0) is None


def test_cv(C):
    assert math.isnan(C.cv([1.0]))
    assert C.cv([10.0, 10.0, 10.0]) == 0.0
    assert C.cv([9.0, 11.0]) == pytest.approx(2**0.5 / 10)


def test_update_results_replaces_only_its_section(C, tmp_path):
    p = tmp_path / "RESULTS.md"
    C.update_results("push", "## push\nfirst", p)
    C.update_results("overhead", "## overhead\nx", p)
    C.update_results("push", "## push\nsecond", p)
    text = p.read_text()
    assert "first" not in text and "second" in text and "## overhead\nx" in text
    assert text.count("<!-- bench:push start -->") == 1
    assert text.index("bench:push start") < text.index("bench:overhead start")


def test_machine_and_commit(C):
    m = C.machine_info()
    assert m["cores"] >= 1 and m["ram_gib"] > 0
    lines = C.header_lines()
    assert lines[0].startswith("- date: ") and lines[1].startswith("- commit: ")
    assert "cores" in lines[2]


def test_summary_copies_target_rows_of_real_sections_only(C, tmp_path):
    p = tmp_path / "RESULTS.md"
    rows = [C.Row("decode tok/s", 30.0, 10.0, 3.0, C.target(">=", 2.5)), C.Row("info", 1.0, 2.0, 0.5)]
    C.update_results("bundle_vs_fp16", C.section("t", rows, ("m", "a", "b", "r")), p)
    C.update_results("push-tiny", C.section("t", [C.Row("x", 1.0, 1.0, 9.0, C.target("<=", 1))], ("m", "a", "b", "r")), p)
    text = p.read_text()
    summary = text[text.index("bench:summary start"):text.index("bench:summary end")]
    assert "| bundle_vs_fp16 | decode tok/s | 3x | >= 2.5x | PASS |" in summary
    assert "info" not in summary and "push-tiny" not in summary
    C.update_results("bundle_vs_fp16", C.section("t", rows[:1], ("m", "a", "b", "r")), p)
    assert p.read_text().count("bench:summary start") == 1


def test_medians_take_the_decode_window_memory_from_the_package(C, tmp_path):
    """The scripts' anonymous-memory-while-decoding figure is edgekit.bench.traces' decode window
    over the stored run's RssAnon samples (MB), median over the measured runs."""
    import json

    tdir = tmp_path / "traces" / "01-candidate-measure-0"
    tdir.mkdir(parents=True)
    (tdir / "runner.out").write_text(
        '{"event":"start","schema":1}\n'
        '{"event":"run","phase":"measure","index":0,"decode_ms":400.0,"t_end":1002.4}\n{"event":"end","status":"ok"}\n')
    (tdir / "harness.tsv").write_text("start_epoch_ms\t1000000\nexit_status\t0\n")
    run = {"role": "candidate", "phase": "measure", "status": "ok", "t_start": 1000.0,
           "trace_dir": "traces/01-candidate-measure-0", "metrics": {"decode_tps": 10.0, "ttft_ms": None},
           "mem": [[500.0, 90.0, 70.0], [2100.0, 50.0, 30.0], [2300.0, 60.0, 40.0], [2600.0, 99.0, 80.0]]}
    assert C.decode_anon_mb(run, tmp_path) == 40.0
    assert C.decode_anon_mb(dict(run, t_start=None), tmp_path) is None
    data = {"result": {"runs": [run, dict(run, phase="warmup", mem=[[2200.0, 1.0, 999.0]])]}}
    m = C.medians(data, tmp_path, "candidate")
    assert m["decode_anon_mb"] == 40.0 and m["runs"] == 1 and m["decode_tps"] == 10.0
    assert m["ttft_ms"] is None  # no value: absent, not 0
    json.dumps(m)


def test_fullsize_write_keeps_the_rows_it_did_not_measure(C, tmp_path):
    """Building one scheme alone (here fp16) keeps the other's measured rows and build note, marked as kept;
    the new figures replace nothing they did not measure."""
    spec = importlib.util.spec_from_file_location("bench_fullsize", ROOT / "scripts" / "bench" / "fullsize.py")
    fs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fs)
    old_rows = [C.Row("full e4b text-only: peak build RSS, GiB", "14.5 min", "exit 0", 10.04, fs.TARGETS["peak_build_gib"],
                      unit=" GiB"),
                C.Row("full e4b text-only: bundle bytes, GB", "3,197,851,536", "n/a", 3.2, None, unit=" GB"),
                C.Row("full e4b text-only: anon while decoding, GB", "765 MB", "n/a", 0.803,
                      fs.TARGETS["anon_gb"]["e4b"], unit=" GB")]
    body = C.section("fullsize-e4b: t", old_rows, ("metric", "wNa8o8 / time", "fp16 / exit", "value"),
                     notes=["bench result folder: /x/bench/1", "wNa8o8 build: commit abc, 14.5 min, peak 10.04 GiB",
                            "builds: the streamed route"])
    new = [C.Row("full e4b text-only: peak build RSS, GiB", "not built", "", None, fs.TARGETS["peak_build_gib"], unit=" GiB"),
           C.Row("full e4b text-only fp16: peak build RSS, GiB", "9.0 min", "exit 0", 6.5, fs.TARGETS["peak_build_gib"],
                 unit=" GiB"),
           C.Row("full e4b text-only: bundle bytes, GB", "not built", "fp16 16,273,348,672", None, None, unit=" GB"),
           C.Row("full e4b text-only: anon while decoding, GB", "not measured", "", None, fs.TARGETS["anon_gb"]["e4b"],
                 unit=" GB")]
    rows, notes = fs.keep_unmeasured("e4b", new, ["fp16 build: commit def, 9.0 min, peak 6.50 GiB"], body=body)
    by = {r.name: r for r in rows}
    assert set(by) == {r.name for r in new}  # the table's header is not a row
    kept = by["full e4b text-only: peak build RSS, GiB"]
    # the figure as the table shows it (10.04 is written "10 GiB")
    assert (kept.a, kept.value, kept.verdict) == ("14.5 min", 10.0, "PASS") and kept.note.startswith("kept from ")
    assert by["full e4b text-only fp16: peak build RSS, GiB"].value == 6.5 and not by[
        "full e4b text-only fp16: peak build RSS, GiB"].note
    b = by["full e4b text-only: bundle bytes, GB"]
    assert (b.a, b.b, b.value) == ("3,197,851,536", "fp16 16,273,348,672", 3.2)  # the new fp16 bytes stay
    assert by["full e4b text-only: anon while decoding, GB"].value == 0.803
    assert notes[0] == "fp16 build: commit def, 9.0 min, peak 6.50 GiB"
    assert any(n.startswith("wNa8o8 build: commit abc") and "kept from" in n for n in notes)
    assert any(n.startswith("bench result folder: /x/bench/1") for n in notes)
    assert not any(n.startswith("builds:") for n in notes)  # the script writes its own method notes
    # nothing on record: the rows stay as measured
    assert fs.keep_unmeasured("e4b", new, [], body="") == (new, [])


def test_memory_cgroup_reclaims_file_pages_and_kills_anonymous_memory_over_its_limit(C, tmp_path):
    """fullsize.py --memory-limit: a command in the group runs as on a machine of that size."""
    try:
        g = C.MemoryCgroup(256 * 2**20, f"edgekit-test-{time.monotonic_ns()}")
    except SystemExit as exc:
        pytest.skip(f"no memory cgroup here: {exc}")
    try:
        data = tmp_path / "file.bin"
        # a 512 MiB file written in the group (its pages are charged there, as a build's bundle and the
        # engine's weight cache are) and read through a mapping twice: its pages are reclaimed to stay
        # under the limit, and the command completes
        code = ("import mmap, sys; w = open(sys.argv[1], 'wb'); [w.write(b'\\1' * 2**24) for _ in range(32)]; "
                "w.close(); f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
                "print(sum(m[i] for r in range(2) for i in range(0, len(m), 4096)))")
        r = C.run_measured(g.argv([sys.executable, "-c", code, str(data)]))
        assert r.returncode == 0 and int(r.stdout) == 2 * 512 * 2**20 // 4096
        # the limit, plus the interpreter's and libraries' pages already cached and charged elsewhere
        assert r.mem.peak_tree_rss <= (256 + 32) * 2**20
        s = g.stats()
        assert s["limit_bytes"] == 256 * 2**20 and s["limit_hits"] > 0 and not s["oom_kills"]
        # 400 MiB of anonymous memory does not fit: killed by the kernel
        r = C.run_measured(g.argv([sys.executable, "-c", "a = bytearray(400 * 2**20)"]))
        assert r.returncode == -9 and g.stats()["oom_kills"] >= 1
    finally:
        g.remove()
    assert not g.path.exists()
