"""android_harness/harness.sh under the shells phones and Pis have: dash, mksh, busybox sh."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.bench.traces import parse_trace_dir

HARNESS = Path(__file__).resolve().parents[2] / "android_harness" / "harness.sh"
SHELLS = {"dash": ["dash"], "mksh": ["mksh"], "busybox": ["busybox", "sh"], "posh": ["posh"]}
ALLOC_MB = 64

CHILD = f"""
import sys, time
b = bytearray({ALLOC_MB} * 1024 * 1024)
for i in range(0, len(b), 4096):
    b[i] = 1
print("allocated", flush=True)
print("to stderr", file=sys.stderr)
time.sleep(0.6)
sys.exit(3)
"""


def _shell(name):
    argv = SHELLS[name]
    if shutil.which(argv[0]) is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide {argv[0]} (make system-deps)")
        pytest.skip(f"{argv[0]} not installed (make system-deps)")
    return argv


@pytest.mark.parametrize("shell", ["dash", "mksh", "busybox", "posh"])
def test_harness_samples_and_propagates_status(shell, tmp_path):
    out = tmp_path / "out dir 'x'"
    t0 = time.time()
    p = subprocess.run(
        [*_shell(shell), str(HARNESS), "-o", str(out), "-i", "40", "--", sys.executable, "-c", CHILD],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, EDGEKIT_HARNESS_REEXEC="0"),  # this very shell, not one it would move to
    )
    t1 = time.time()
    assert p.returncode == 3, p.stderr
    assert (out / "runner.out").read_text() == "allocated\n"
    assert (out / "runner.err").read_text() == "to stderr\n"
    tr = parse_trace_dir(out)
    h = tr.harness
    assert h["exit_status"] == 3 and tr.exit_status == 3 and h["interval_ms"] == 40
    assert t0 * 1000 - 1000 <= h["start_epoch_ms"] <= h["end_epoch_ms"] <= t1 * 1000 + 1000
    assert h["end_epoch_ms"] - h["start_epoch_ms"] >= 600
    # memory rows: the child held 64 MiB of touched anonymous memory for 0.6 s
    assert len(tr.mem) >= 5 and h["samples"] == len(tr.mem)
    peak_anon = tr.peak("rss_anon_kb")
    assert ALLOC_MB * 1024 <= peak_anon <= ALLOC_MB * 1024 + 200 * 1024
    assert tr.peak("vmhwm_kb") >= peak_anon
    for m in tr.mem:
        assert m.vmrss_kb is not None and m.rss_file_kb is not None and m.vmswap_kb is not None
        assert m.vmrss_kb <= m.vmhwm_kb + 1024  # the kernel sums per-CPU RSS counters separately for each line
        # Pss is read a moment after /proc/PID/status, so bound it by the peak, not the same row;
        # it is read every pss_every samples (1000 ms / 40 ms here), other rows leave it empty
        assert m.pss_kb is None or 0 < m.pss_kb <= tr.peak("vmhwm_kb") + 1024
    every = int(h["pss_every"])
    assert every == 1000 // 40
    with_pss = [i for i, m in enumerate(tr.mem) if m.pss_kb is not None]
    assert with_pss and with_pss[0] == 0 and all(i % every == 0 for i in with_pss)
    ts = [m.t_ms for m in tr.mem]
    assert ts == sorted(ts) and ts[-1] - ts[0] >= 400
    # nothing invented where the machine has no thermal zones / cpufreq
    have_thermal = any(Path("/sys/class/thermal").glob("thermal_zone*/temp"))
    assert bool(tr.thermal) == have_thermal
    have_freq = any(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
    assert bool(tr.cpufreq) == have_freq
    # the command is gone, and no sampler is left behind
    pid = h["pid"]
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_harness_uptime_clock_and_affinity(tmp_path):
    if shutil.which("taskset") is None:
        pytest.skip("taskset missing")
    env = dict(os.environ, EDGEKIT_HARNESS_CLOCK="uptime")
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    p = subprocess.run([*_shell("mksh"), str(HARNESS), "-o", str(tmp_path), "-i", "20", "-a", "1", "--",
                        sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "runner.out").read_text().strip() == "[0]"
    tr = parse_trace_dir(tmp_path)
    assert tr.harness["clock"] == "uptime" and str(tr.harness["affinity"]) == "1"
    assert str(tr.harness["start_epoch_ms"]).endswith("000")  # seconds resolution in that mode


def test_harness_command_not_found_and_usage(tmp_path):
    p = subprocess.run(["dash", str(HARNESS), "-o", str(tmp_path), "-i", "50", "--", "/nonexistent/litert_lm_main"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 127
    assert parse_trace_dir(tmp_path).exit_status == 127
    p = subprocess.run(["dash", str(HARNESS), "-i", "50"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 125 and "usage" in p.stderr
    p = subprocess.run(["dash", str(HARNESS), "-o", str(tmp_path), "-i", "fast", "--", "true"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 125


def test_harness_stopped_kills_command(tmp_path):
    proc = subprocess.Popen(["dash", str(HARNESS), "-o", str(tmp_path), "-i", "50", "--", "sleep", "30"])
    deadline = time.time() + 10
    pid = None
    while time.time() < deadline:
        try:
            pid = int(subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "sleep"], capture_output=True,
                                     text=True).stdout.split()[0])
            break
        except (IndexError, ValueError):
            time.sleep(0.05)
    assert pid is not None
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 143
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the command outlived the harness"


def _logging_path(tmp_path, names=("date", "sleep", "printf", "cat", "awk", "sed", "mv", "mkfifo", "rm", "taskset")):
    """A PATH whose first folder has wrappers logging every start of these commands."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "execs.log"
    for name in names:
        real = shutil.which(name)
        if real is None:
            continue
        w = bindir / name
        w.write_text(f"#!/bin/sh\necho {name} >> '{log}'\nexec '{real}' \"$@\"\n")
        w.chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}", log


@pytest.mark.parametrize("shell", ["mksh", "busybox", "dash"])
def test_harness_sampling_forks_nothing_per_sample(shell, tmp_path):
    """The sampler's own processes take CPU from the measured command: none per sample where the shell allows."""
    path, log = _logging_path(tmp_path)
    env = dict(os.environ, PATH=path)
    out = tmp_path / "out"
    p = subprocess.run([*_shell(shell), str(HARNESS), "-o", str(out), "-i", "20", "--", sys.executable, "-c",
                        "import time; time.sleep(1.5)"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # nothing from the sampler (e.g. an interrupted read) on the harness's stderr
    tr = parse_trace_dir(out)
    starts = log.read_text().split() if log.exists() else []
    samples = len(tr.mem)
    assert samples >= 30
    # dash has no `read -t`: it moves to a shell that has it (mksh, bash or busybox, when installed)
    assert tr.harness["wait"] == "read_t" and tr.harness["clock"] == "epochrealtime"
    assert tr.harness["shell"] in (("mksh", "bash", "sh") if shell == "dash" else ("mksh" if shell == "mksh" else "sh",))
    # a fixed number of helper starts (epochs, FIFO, harness.tsv), however many samples
    assert len(starts) < 30 and "sleep" not in starts[1:], (samples, starts)
    ts = [m.t_ms for m in tr.mem]
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert all(g >= 0 for g in gaps) and sorted(gaps)[len(gaps) // 2] >= 15  # the wait really waits ~20 ms


def test_harness_without_read_t_still_samples(tmp_path):
    """dash kept (EDGEKIT_HARNESS_REEXEC=0): /proc/uptime clock and one `sleep` per sample, the documented fallback."""
    path, log = _logging_path(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(["dash", str(HARNESS), "-o", str(out), "-i", "20", "--", sys.executable, "-c",
                        "import time; time.sleep(0.8)"], env=dict(os.environ, PATH=path, EDGEKIT_HARNESS_REEXEC="0"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    tr = parse_trace_dir(out)
    assert tr.harness["shell"] == "sh" and tr.harness["wait"] == "sleep" and tr.harness["clock"] == "uptime"
    starts = log.read_text().split()
    assert starts.count("sleep") >= len(tr.mem) - 2 and starts.count("date") <= 3  # no clock command per sample


def test_harness_sampler_leaves_the_command_its_cpus(tmp_path):
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and 2 CPUs")
    cpus = sorted(os.sched_getaffinity(0))
    if cpus[:2] != [0, 1]:
        pytest.skip("CPUs 0 and 1 not both available")
    out = tmp_path / "out"
    code = "import os, time; time.sleep(0.3); print(sorted(os.sched_getaffinity(os.getppid())), sorted(os.sched_getaffinity(0)))"
    p = subprocess.run(["mksh", str(HARNESS), "-o", str(out), "-i", "20", "-a", "1", "--", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    tr = parse_trace_dir(out)
    assert str(tr.harness["affinity"]) == "1"
    sampler = int(str(tr.harness["sampler_affinity"]), 16)
    assert sampler and not sampler & 1  # every online CPU but CPU 0
    parent, child = (out / "runner.out").read_text().strip().split("] [")
    assert child.strip("[]") == "0"  # the command: its mask
    # the process that started the command (taskset exec'd into it, so its parent is the harness)
    assert "0" not in parent.strip("[]").replace(" ", "").split(",")
