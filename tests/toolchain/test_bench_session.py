"""Session pieces without a device: schedule, traces -> run records, dist/ lookup, comparability."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgekit.bench.session import (
    bundle_info, check_bundles_comparable, default_baseline, latest_build, run_from_trace, schedule,
)
from edgekit.bench.traces import parse_trace_dir
from edgekit.errors import NotComparable, UsageError
from fixtures_results import FIXTURES

TRACE = FIXTURES / "trace-host-run"  # a harness folder pulled from a real host run


def test_schedule_warmups_first_then_interleaved():
    s = schedule(1, 3, True)
    assert s[:2] == [("candidate", "warmup", 0), ("baseline", "warmup", 0)]
    assert [r for r, _, _ in s[2:]] == ["candidate", "baseline"] * 3
    assert [i for _, p, i in s if p == "measure"] == [0, 0, 1, 1, 2, 2]
    assert schedule(0, 2, False) == [("candidate", "measure", 0), ("candidate", "measure", 1)]


def test_run_from_real_trace():
    trace = parse_trace_dir(TRACE)
    run = run_from_trace(trace, "baseline", "measure", 0, 3, "traces/x")
    assert run.ok and run.error is None
    rec = [json.loads(line) for line in (TRACE / "runner.out").read_text().splitlines()]
    it = next(r for r in rec if r["event"] == "run")
    assert run.metrics["decode_tps"] == pytest.approx(it["decode_tps"])
    assert run.metrics["ttft_ms"] == pytest.approx(it["ttft_ms"])
    assert run.metrics["init_ms"] == pytest.approx(next(r for r in rec if r["event"] == "init")["init_ms"])
    # this run's 16 stamps came in one burst (the first after 87% of the decode time): they time
    # stream callbacks, not tokens, so no token percentile is given, and the basis says why
    assert np.percentile(it["token_ms"], 50) < 0.2 < it["decode_ms"] / it["decode_tokens"]
    for name in ("token_p50_ms", "token_p90_ms", "token_p99_ms"):
        assert run.metrics[name] is None and run.basis[name].flag == "bursty"
        assert "one burst" in run.reason(name) and run.basis[name].samples == 16
    rows = [line.split("\t") for line in (TRACE / "mem.tsv").read_text().splitlines()[1:]]
    assert run.metrics["peak_anon_mb"] == pytest.approx(max(int(r[3]) for r in rows) / 1024, abs=1e-3)
    assert run.metrics["peak_file_mb"] == pytest.approx(max(int(r[4]) for r in rows) / 1024, abs=1e-3)
    assert run.metrics["peak_rss_mb"] == pytest.approx(max(int(r[2]) for r in rows) / 1024, abs=1e-3)
    assert len(run.mem) == len(rows)
    assert run.thermal is None and run.cpufreq == ()  # this VM has no thermal zones: nothing invented
    assert run.t_end > run.t_start


def test_thermal_and_cpufreq_summaries(tmp_path):
    d = tmp_path / "t"
    shutil.copytree(TRACE, d)
    (d / "thermal.tsv").write_text(
        "t_ms\tphase\tzone\ttype\ttemp_mc\n"
        "0\tbefore\tthermal_zone0\tBIG\t41000\n0\tbefore\tthermal_zone1\tLITTLE\t39000\n"
        "100\tduring\tthermal_zone0\tBIG\t47500\n100\tduring\tthermal_zone1\tLITTLE\t44000\n"
        "900\tafter\tthermal_zone0\tBIG\t45000\n900\tafter\tthermal_zone1\tLITTLE\t43000\n")
    (d / "cpufreq.tsv").write_text(
        "t_ms\tphase\tcpu\tcur_khz\n0\tbefore\t0\t1700000\n100\tduring\t0\t2900000\n200\tduring\t0\t2400000\n"
        "900\tafter\t0\t1800000\n")
    run = run_from_trace(parse_trace_dir(d), "candidate", "measure", 0, 0, "t")
    assert (run.thermal.start_c, run.thermal.max_c, run.thermal.end_c, run.thermal.zone) == (41.0, 47.5, 45.0, "BIG")
    c = run.cpufreq[0]
    assert (c.cpu, c.start_khz, c.min_khz, c.max_khz, c.end_khz) == (0, 1700000, 2400000, 2900000, 1800000)


def test_failed_trace_is_failed_run(tmp_path):
    d = tmp_path / "t"
    shutil.copytree(TRACE, d)
    lines = (d / "runner.out").read_text().splitlines()
    (d / "runner.out").write_text(lines[0] + "\n" + json.dumps({"event": "error", "message": "bad bundle"}) + "\n")
    (d / "harness.tsv").write_text((d / "harness.tsv").read_text().replace("exit_status\t0", "exit_status\t1"))
    run = run_from_trace(parse_trace_dir(d), "candidate", "measure", 0, 0, "t")
    assert not run.ok and "bad bundle" in run.error
    assert run.metrics["decode_tps"] is None  # nothing invented


def _mk(dist, name, manifest=None):
    d = dist / name
    d.mkdir(parents=True)
    f = d / "model.litertlm"
    f.write_bytes(name.encode())
    if manifest is not None:
        (d / "manifest.json").write_text(json.dumps(manifest))
    return f


def test_dist_lookup(tmp_path):
    dist = tmp_path / "dist"
    # the keys the builder writes (edgekit/results/manifest.py), in a folder named by the rule
    q = _mk(dist, "tiny-wNa8o8-text", {"model": {"preset": "tiny"}, "scheme": {"name": "wNa8o8"},
                                       "build": {"text_only": True}})
    _mk(dist, "tiny-wNa8o8")
    assert latest_build(dist, "tiny", True) == q
    info = bundle_info(q, check=False)  # name bytes, not a bundle: the lookup is under test
    assert (info.model, info.scheme, info.text_only, info.label) == ("tiny", "wNa8o8", True, "tiny-wNa8o8-text")
    with pytest.raises(UsageError) as e:
        default_baseline(info, dist)
    assert "edgekit build tiny --scheme fp16 --text-only" in e.value.hint
    base = _mk(dist, "tiny-fp16-text")
    assert default_baseline(info, dist) == base
    with pytest.raises(UsageError, match="no e2b build"):
        latest_build(dist, "e2b", False)


def test_bundles_of_other_models_refused(tmp_path):
    dist = tmp_path / "dist"
    a = bundle_info(_mk(dist, "e2b-wNa8o8-text"), check=False)
    b = bundle_info(_mk(dist, "e4b-fp16-text"), check=False)
    c = bundle_info(_mk(dist, "e2b-fp16"), check=False)
    with pytest.raises(NotComparable, match="e2b-text .* vs e4b-text"):
        check_bundles_comparable(a, b, False)
    with pytest.raises(NotComparable):  # text-only vs full model
        check_bundles_comparable(a, c, False)
    assert check_bundles_comparable(a, b, True)
