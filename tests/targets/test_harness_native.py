"""scripts/litert_lm_main_compat (the stand-in's litert_lm_main) under the harness, parsed by traces.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.bench.traces import parse_trace_dir

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "android_harness" / "harness.sh"
COMPAT = ROOT / "scripts" / "litert_lm_main_compat"
ENV = dict(os.environ, EDGEKIT_COMPAT_PYTHON=sys.executable)


@pytest.fixture(scope="session")
def bundle(request):
    if os.environ.get("EDGEKIT_TEST_BUNDLE"):
        return os.environ["EDGEKIT_TEST_BUNDLE"]
    try:
        bundles = request.getfixturevalue("tiny_bundles")
    except pytest.FixtureLookupError:
        pytest.skip("tests/fixtures_bundles.py has no tiny_bundles fixture yet")
    return str(bundles.get("fp16") or next(iter(bundles.values())))


@pytest.mark.slow
def test_compat_prints_litert_lm_main_format(bundle, tmp_path):
    out = tmp_path / "trace"
    p = subprocess.run(["mksh", str(HARNESS), "-o", str(out), "-i", "25", "--", str(COMPAT),
                        f"--model_path={bundle}", "--backend=cpu", "--benchmark", "--benchmark_prefill_tokens=16",
                        "--benchmark_decode_tokens=8", "--async=false", "--num_iterations=3",
                        "--report_peak_memory_footprint", "--num_cpu_threads=1"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    err = (out / "runner.err").read_text()
    assert p.returncode == 0, err[-3000:]
    tr = parse_trace_dir(out)
    assert tr.ok and tr.source == "native" and len(tr.iterations) == 3
    assert tr.summary["iterations"] == 3
    for it in tr.iterations:
        assert it.prefill_tokens == 16 and it.decode_tokens == 8
        # the speeds printed agree with the durations printed (absl durations, 2-decimal speeds)
        assert it.prefill_tps == pytest.approx(16 / (it.prefill_ms / 1000), rel=1e-3, abs=0.01)
        assert it.decode_tps == pytest.approx(8 / (it.decode_ms / 1000), rel=1e-3, abs=0.01)
        assert it.peak_mem_mb > 20 and 0 < it.peak_private_mb <= it.peak_mem_mb
    assert tr.summary["decode_tps"] == pytest.approx(sorted(i.decode_tps for i in tr.iterations)[1], abs=0.01)
    # the compat's peak RSS (getrusage) agrees with the harness's own VmHWM samples
    assert tr.peak("vmhwm_kb") / 1024 == pytest.approx(max(i.peak_mem_mb for i in tr.iterations), rel=0.15)
    assert tr.init_ms > 0 and "Init Total" in err


def test_compat_failure_aborts_like_the_binary(tmp_path):
    out = tmp_path / "trace"
    p = subprocess.run(["dash", str(HARNESS), "-o", str(out), "-i", "50", "--", str(COMPAT),
                        f"--model_path={tmp_path / 'missing.litertlm'}", "--backend=cpu", "--benchmark",
                        "--benchmark_prefill_tokens=16", "--async=false"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 134  # SIGABRT, as ABSL_CHECK_OK
    tr = parse_trace_dir(out)
    assert not tr.ok and tr.exit_status == 134 and "NOT_FOUND" in tr.error


def test_compat_unknown_flag(tmp_path):
    p = subprocess.run([str(COMPAT), "--model_path=x", "--frobnicate=1"], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and "Unknown command line flag 'frobnicate'" in p.stderr
