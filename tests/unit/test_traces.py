"""edgekit/bench/traces.py on captured-format fixtures (tests/fixtures/devices/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.bench.traces import parse_absl_duration_ms, parse_trace_dir

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "devices"


def _durations(text, kind):
    """(tokens, seconds) of every '<kind> Turn 1: Processed N tokens in Xs duration.' line."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(f"{kind} Turn 1: Processed"):
            w = line.split()
            out.append((int(w[4]), float(w[7].rstrip("s"))))
    return out


def test_native_single_iteration():
    t = parse_trace_dir(FIX / "native_single")
    assert t.source == "native" and t.error is None and t.exit_status == 0 and t.ok
    assert t.init_ms == pytest.approx(2499.33)  # "Init Total" line
    assert len(t.iterations) == 1
    it = t.iterations[0]
    text = (FIX / "native_single" / "runner.err").read_text()
    (pn, ps), = _durations(text, "Prefill")
    (dn, ds), = _durations(text, "Decode")
    assert it.prefill_tokens == pn == 1024 and it.prefill_ms == pytest.approx(ps * 1000)
    assert it.decode_tokens == dn == 256 and it.decode_ms == pytest.approx(ds * 1000)
    # printed speeds agree with the durations (2 decimals)
    assert it.prefill_tps == pytest.approx(pn / ps, abs=0.01)
    assert it.decode_tps == pytest.approx(dn / ds, abs=0.01)
    # TTFT per BenchmarkInfo::GetTimeToFirstToken, agrees with the printed "1.87 s"
    assert it.ttft_ms == pytest.approx(ps * 1000 + ds * 1000 / dn)
    assert abs(it.ttft_ms / 1000 - 1.87) < 0.006
    assert it.token_ms == [] and it.peak_mem_mb == pytest.approx(1733.52) and it.peak_private_mb == pytest.approx(701.34)
    # harness files
    assert len(t.mem) == 197 and all(m.rss_anon_kb is not None and m.pss_kb is not None for m in t.mem)
    assert [m.t_ms for m in t.mem] == sorted(m.t_ms for m in t.mem)
    assert t.peak("vmhwm_kb") == max(m.vmrss_kb for m in t.mem)
    assert {s.phase for s in t.thermal} == {"before", "during", "after"}
    assert {s.type for s in t.thermal} >= {"BIG", "MID", "LITTLE"}
    assert {s.cpu for s in t.cpufreq} == set(range(9))
    assert t.harness["affinity"] == "f0" and t.harness["interval_ms"] == 50


def test_native_several_iterations_and_aggregate():
    t = parse_trace_dir(FIX / "native_multi")
    assert t.ok and len(t.iterations) == 3
    text = (FIX / "native_multi" / "runner.err").read_text()
    pre = _durations(text, "Prefill")
    assert [it.prefill_ms for it in t.iterations] == pytest.approx([s * 1000 for _, s in pre])
    assert [it.peak_mem_mb for it in t.iterations] == pytest.approx([1741.08, 1752.41, 1749.90])
    # the binary's aggregate is the median of the iterations it printed: check it against ours
    s = t.summary
    assert s["iterations"] == 3
    assert s["decode_tps"] == pytest.approx(sorted(it.decode_tps for it in t.iterations)[1])
    assert s["prefill_tps"] == pytest.approx(sorted(it.prefill_tps for it in t.iterations)[1])
    assert s["peak_mem_mb"] == pytest.approx(sorted(it.peak_mem_mb for it in t.iterations)[1])
    # the aggregate block is not taken as a fourth iteration, and init comes from the first block
    assert t.init_ms == pytest.approx(2487.60)
    t2 = parse_trace_dir(FIX / "native_multi", native_warmup=1)
    assert [it.phase for it in t2.iterations] == ["warmup", "measure", "measure"]
    assert [it.index for it in t2.iterations] == [0, 0, 1]


def test_native_truncated_by_crash():
    t = parse_trace_dir(FIX / "native_crash")
    assert not t.ok and t.exit_status == 134
    assert "Check failed" in t.error and "RESOURCE_EXHAUSTED" in t.error
    assert len(t.iterations) == 1  # the cut-off second iteration is not used
    assert any("incomplete" in w for w in t.warnings)
    assert len(t.mem) == 230  # partial traces kept


def test_runner_jsonl():
    t = parse_trace_dir(FIX / "runner_ok")
    assert t.source == "runner" and t.ok
    assert t.start["backend"] == "litert_lm" and t.start["prefill_tokens"] == 128
    assert t.init_ms == pytest.approx(1412.57)
    assert [it.phase for it in t.iterations] == ["warmup", "measure", "measure", "measure"]
    lines = [json.loads(l) for l in (FIX / "runner_ok" / "runner.out").read_text().splitlines()]
    runs = [l for l in lines if l["event"] == "run"]
    for it, rec in zip(t.iterations, runs):
        assert len(it.token_ms) == rec["decode_tokens"] == 32
        assert it.decode_ms == pytest.approx(sum(it.token_ms), abs=0.01)
    assert t.thermal == [] and t.cpufreq == []  # headers only: nothing invented


def test_runner_killed_mid_line():
    t = parse_trace_dir(FIX / "runner_crash")
    assert not t.ok and t.exit_status == 137
    assert "end record" in t.error and "137" in t.error
    assert len(t.iterations) == 3 and any("not JSON" in w for w in t.warnings)


def test_missing_files_are_empty_not_invented(tmp_path):
    shutil.copy(FIX / "runner_ok" / "runner.out", tmp_path / "runner.out")
    t = parse_trace_dir(tmp_path)
    assert t.mem == [] and t.thermal == [] and t.harness == {} and t.exit_status is None
    assert "harness.tsv" in t.error and not t.ok
    empty = parse_trace_dir(tmp_path / "nothing")
    assert empty.iterations == [] and empty.source is None and empty.error


def test_runner_error_record(tmp_path):
    (tmp_path / "runner.out").write_text(
        '{"event":"start","schema":1}\n{"event":"error","message":"bundle not found: x"}\n')
    (tmp_path / "harness.tsv").write_text("exit_status\t3\n")
    t = parse_trace_dir(tmp_path)
    assert t.error == "bundle not found: x" and t.exit_status == 3


@pytest.mark.parametrize(
    "text, ms",
    [("1.849312714s", 1849.312714), ("523.1ms", 523.1), ("2m3.5s", 123500.0), ("1h0m1s", 3601000.0),
     ("250us", 0.25), ("0", 0.0), ("12ns", 1.2e-5)],
)
def test_absl_duration(text, ms):
    assert parse_absl_duration_ms(text) == pytest.approx(ms)


def test_absl_duration_garbage():
    assert parse_absl_duration_ms("fast") is None and parse_absl_duration_ms("1.5 s") is None


def test_runner_jsonl_after_stray_stdout_lines(tmp_path):
    text = (FIX / "runner_ok" / "runner.out").read_text()
    (tmp_path / "runner.out").write_text("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n" + text)
    shutil.copy(FIX / "runner_ok" / "harness.tsv", tmp_path / "harness.tsv")
    t = parse_trace_dir(tmp_path)
    assert t.source == "runner" and t.ok and len(t.iterations) == 4
    assert any("not JSON" in w for w in t.warnings)


def _decode_trace(d: Path, mem_rows: list[tuple[int, int]], decode_ms: float = 400.0) -> Path:
    """A runner trace: harness started at epoch 1000 s; a warmup decoding 1.0-1.4 s and a measured
    iteration decoding 2.0-2.4 s after the start (t_end - decode_ms)."""
    d.mkdir(parents=True, exist_ok=True)
    recs = [{"event": "start", "schema": 1},
            {"event": "run", "phase": "warmup", "index": 0, "decode_ms": decode_ms, "t_end": 1001.4},
            {"event": "run", "phase": "measure", "index": 0, "decode_ms": decode_ms, "t_end": 1002.4},
            {"event": "end", "status": "ok"}]
    (d / "runner.out").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "harness.tsv").write_text("start_epoch_ms\t1000000\nexit_status\t0\n")
    header = "t_ms\tvmrss_kb\tvmhwm_kb\trss_anon_kb\trss_file_kb\trss_shmem_kb\tvmswap_kb\tpss_kb\n"
    (d / "mem.tsv").write_text(header + "".join(f"{t}\t\t\t{kb}\t\t\t\t\n" for t, kb in mem_rows))
    return d


def test_decode_peak_reads_only_measured_decode_windows(tmp_path):
    from edgekit.bench.traces import decode_windows

    # 9000 kB while the warmup decodes and 7000 kB while loading: neither is the measured decode's
    t = parse_trace_dir(_decode_trace(tmp_path / "a", [(500, 7000), (1200, 9000), (2100, 3000), (2300, 4000),
                                                       (2600, 8000)]))
    assert t.ok
    assert decode_windows(t.measured, 1000.0) == [pytest.approx((2000.0, 2400.0))]
    assert t.decode_peak("rss_anon_kb") == 4000
    assert t.decode_peak("pss_kb") is None  # never sampled: absent, not 0


def test_decode_peak_of_a_decode_shorter_than_the_sampling_interval(tmp_path):
    # no sample inside 2.39-2.4 s: the first one within 200 ms of the decode's start stands for it
    t = parse_trace_dir(_decode_trace(tmp_path / "b", [(2000, 1000), (2450, 5000), (2700, 6000)], decode_ms=10.0))
    assert t.decode_peak() == 5000
    late = parse_trace_dir(_decode_trace(tmp_path / "c", [(2000, 1000), (2700, 6000)], decode_ms=10.0))
    assert late.decode_peak() is None


def test_runner_end_record_is_kept():
    t = parse_trace_dir(FIX / "runner_ok")
    assert t.end.get("event") == "end" and t.end.get("status") == "ok"
    crashed = parse_trace_dir(FIX / "runner_crash")
    assert crashed.end == {} and "end record" in crashed.error
