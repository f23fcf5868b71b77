"""End to end on both stand-ins: push a real bundle, run the harness with the runner, pull and check traces.

rpi5-standin (ssh): the Python runner (copied runtime tree on PYTHONPATH) under the harness.
pixel8-standin (adb): the litert_lm_main-compatible binary under the harness with taskset.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest

from edgekit.bench.traces import parse_trace_dir
from edgekit.devices import open_transport
from edgekit.devices.profiles import load_profile
from edgekit.fsutil import sha256_file
from edgekit.runtime import runner

pytestmark = [pytest.mark.targets, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "android_harness" / "harness.sh"
COMPAT = ROOT / "scripts" / "litert_lm_main_compat"
P, D = 16, 8


@pytest.fixture(scope="session")
def e2e_bundle(request):
    if os.environ.get("EDGEKIT_TEST_BUNDLE"):
        return Path(os.environ["EDGEKIT_TEST_BUNDLE"])
    bundles = request.getfixturevalue("tiny_bundles")
    return Path(bundles.get("wNa8o8") or next(iter(bundles.values())))


def _check_mem(tr, low_kb=10_000):
    # a tiny bundle runs for well under a second: at the profile's interval that is a few rows
    assert len(tr.mem) >= 2 and tr.harness["samples"] == len(tr.mem)
    anon = tr.peak("rss_anon_kb")
    assert low_kb < anon < 8 * 1024 * 1024  # more than an empty process, less than 8 GiB
    assert tr.peak("vmhwm_kb") >= max(m.vmrss_kb for m in tr.mem)
    assert all(m.rss_file_kb is not None for m in tr.mem)
    # Pss is read on the first row and then about once a second (harness -p)
    assert any(m.pss_kb is not None for m in tr.mem)
    ts = [m.t_ms for m in tr.mem]
    assert ts == sorted(ts)


def test_ssh_standin_runner_under_harness(ssh_target, e2e_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_PROFILES", str(ssh_target.profile_dir))
    prof = load_profile(ssh_target.profile_name)
    with open_transport(prof) as t:
        work = posixpath.join(t.expand(prof.work_dir), "e2e")
        bundle = posixpath.join(work, "bundles", e2e_bundle.name)
        r = t.push(e2e_bundle, bundle)
        assert r.sha256 == sha256_file(e2e_bundle) == t.sha256(bundle)
        assert not t.push(e2e_bundle, bundle).sent
        harness = t.push(HARNESS, posixpath.join(work, "harness.sh")).remote
        py = posixpath.join(work, "py")
        for local, rel in runner.runtime_files():
            t.push(local, posixpath.join(py, rel))
        out = posixpath.join(work, "runs", "run 1")
        res = t.shell(["sh", harness, "-o", out, "-i", str(prof.sampling.interval_ms), "--",
                       "env", f"PYTHONPATH={py}", t.expand(prof.runner.python), "-m", "edgekit.runtime.runner",
                       bundle, "--prefill", str(P), "--decode", str(D), "--warmup", "1", "--reps", "2",
                       "--threads", str(prof.cpu.threads), "--backend", prof.runner.backend, "--token-times"],
                      check=False, timeout=600)
        local = tmp_path / "trace"
        names = t.pull_dir(out, local)
    assert res.exit_code == 0, (local / "runner.err").read_text()[-2000:] if local.exists() else res.stderr
    assert set(names) >= {"runner.out", "runner.err", "mem.tsv", "thermal.tsv", "cpufreq.tsv", "harness.tsv"}
    tr = parse_trace_dir(local)
    assert tr.ok and tr.source == "runner" and tr.exit_status == 0
    assert tr.start["bundle_sha256"] == sha256_file(e2e_bundle)
    assert tr.start["runner_path"] == posixpath.join(py, "edgekit", "runtime", "runner.py")
    assert [it.phase for it in tr.iterations] == ["warmup", "measure", "measure"]
    for it in tr.iterations:
        assert it.prefill_tokens == P and len(it.token_ms) == D == it.decode_tokens
        assert all(0 < x < 10_000 for x in it.token_ms)
        # litert_lm: the engine's decode turn, the stamped gaps sum to about the same. Each stamp is taken in
        # the Python stream callback, which adds its own time to every gap (about 30 us per token measured
        # here under load, a large share of a 3 ms tiny decode): so the sum is not below the engine's turn
        # and exceeds it by at most 10% plus 0.1 ms per token; a stamp series that timed prefill or engine
        # set-up too would be far outside that
        assert 0.9 * it.decode_ms <= sum(it.token_ms) <= 1.1 * it.decode_ms + 0.1 * D, (it.decode_ms, sum(it.token_ms))
        # the runner's own wall clock sits inside the harness's window
        assert tr.harness["start_epoch_ms"] / 1000 - 1 <= it.t_start <= it.t_end <= tr.harness["end_epoch_ms"] / 1000 + 1
    _check_mem(tr)
    # the device's sh (dash here) moved the sampler to a shell that waits and reads the clock without a process
    assert tr.harness["wait"] == "read_t" and tr.harness["clock"] == "epochrealtime"


def test_adb_standin_native_binary_under_harness(adb_target, e2e_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_PROFILES", str(adb_target.profile_dir))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    prof = load_profile(adb_target.profile_name)
    with open_transport(prof) as t:
        work = posixpath.join(prof.work_dir, "e2e")
        bundle = posixpath.join(work, "bundles", e2e_bundle.name)
        r = t.push(e2e_bundle, bundle)
        assert r.sha256 == sha256_file(e2e_bundle) == t.sha256(bundle)
        assert sha256_file(adb_target.host_path(bundle)) == r.sha256
        assert not t.push(e2e_bundle, bundle).sent
        harness = t.push(HARNESS, posixpath.join(work, "harness.sh")).remote
        binary = t.push(COMPAT, posixpath.join(work, "bin", "litert_lm_main")).remote
        t.shell(["chmod", "755", binary])
        out = posixpath.join(work, "runs", "run 1")
        argv = ["sh", harness, "-o", out, "-i", str(prof.sampling.interval_ms)]
        if prof.cpu.affinity:
            argv += ["-a", prof.cpu.affinity]
        argv += ["--", binary, f"--model_path={bundle}", *prof.runner.args, "--benchmark",
                 f"--benchmark_prefill_tokens={P}", f"--benchmark_decode_tokens={D}", "--async=false",
                 "--num_iterations=2", "--report_peak_memory_footprint", f"--num_cpu_threads={prof.cpu.threads}"]
        res = t.shell(argv, check=False, timeout=600)
        local = tmp_path / "trace"
        t.pull_dir(out, local)
    assert res.exit_code == 0, (local / "runner.err").read_text()[-3000:]
    tr = parse_trace_dir(local)
    assert tr.ok and tr.source == "native" and len(tr.iterations) == 2 and tr.summary["iterations"] == 2
    for it in tr.iterations:
        assert it.prefill_tokens == P and it.decode_tokens == D
        assert it.decode_tps == pytest.approx(D / (it.decode_ms / 1000), rel=1e-3, abs=0.01)
    _check_mem(tr)
    # the binary's getrusage peak and the harness's VmHWM describe the same process
    assert max(i.peak_mem_mb for i in tr.iterations) == pytest.approx(tr.peak("vmhwm_kb") / 1024, rel=0.15)
    assert str(tr.harness["affinity"]) == str(prof.cpu.affinity)
