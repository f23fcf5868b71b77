"""Bench modes: cold (one process per run) and warm (one process per bundle, N iterations on one engine).

The result records the mode; results of different modes are never compared (exit 4);
warm traces become one run record per iteration; the runner and native argv carry the
iteration counts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.bench.session import BenchPlan, Session, iteration_runs, warm_schedule
from edgekit.bench.traces import parse_trace_dir
from edgekit.cli.main import main
from edgekit.errors import NotComparable, UsageError
from edgekit.results.compare import compare_results
from edgekit.results.records import load_result, save_result
from fixtures_results import FIXTURES


def _result(mode: str):
    r = load_result(FIXTURES / "synth-pixel8-wna8o8-vs-fp16" / "result.json")
    return dataclasses.replace(r, settings=dataclasses.replace(r.settings, mode=mode))


def test_mode_is_recorded_and_read_back(tmp_path):
    r = _result("warm")
    p = save_result(r, tmp_path / "result.json")
    assert json.loads(p.read_text())["settings"]["mode"] == "warm"
    assert load_result(p).settings.mode == "warm"


def test_results_of_different_modes_are_not_compared(tmp_path, capsys):
    cold, warm = _result("cold"), _result("warm")
    with pytest.raises(NotComparable, match="mode: warm vs cold"):
        compare_results(warm, cold)
    compare_results(cold, _result("cold"))  # the same mode compares
    a, b = save_result(warm, tmp_path / "a" / "result.json"), save_result(cold, tmp_path / "b" / "result.json")
    assert main(["compare", str(a), str(b)]) == 4
    assert "mode" in capsys.readouterr().err


def test_plan_refuses_an_unknown_mode(tmp_path):
    with pytest.raises(UsageError, match="--mode"):
        BenchPlan(candidate=tmp_path / "x", baseline=None, mode="lukewarm").validate()


def test_warm_schedule_one_process_per_bundle():
    assert warm_schedule(True) == [("candidate", "warm", 0), ("baseline", "warm", 0)]
    assert warm_schedule(False) == [("candidate", "warm", 0)]


def _argv_session(kind: str, mode: str, warmup: int = 2, reps: int = 5) -> Session:
    runner = SimpleNamespace(kind=kind, python="python3", args=["--backend=cpu"])
    profile = SimpleNamespace(runner=runner, transport="local")
    plan = BenchPlan(candidate=Path("c"), baseline=None, warmup=warmup, reps=reps, prefill=128, decode=64, mode=mode)
    s = Session(profile, plan)
    s.pyroot, s.remote_binary = "/r/py", "/r/bin/litert_lm_main"
    return s


@pytest.mark.parametrize("mode,expect,native", [("cold", ("1", "1"), 1), ("warm", ("2", "5"), 7)])
def test_runner_argv_per_mode(mode, expect, native):
    argv, kind = _argv_session("python", mode)._runner_argv("/r/b.litertlm", "ab" * 32, 2, "litert_lm")
    assert kind == "python"
    assert argv[argv.index("--warmup") + 1] == expect[0] and argv[argv.index("--reps") + 1] == expect[1]
    assert argv[argv.index("--mode") + 1] == mode
    # cold: an untimed generation on an engine that is then closed, the measured run on a new one
    assert ("--fresh-engine" in argv) == (mode == "cold")
    argv, kind = _argv_session("native", mode)._runner_argv("/r/b.litertlm", "ab" * 32, 2, None)
    assert kind == "native" and f"--num_iterations={native}" in argv


def _warm_trace(tmp_path: Path) -> Path:
    """A warm runner process: init, 1 warmup + 3 iterations of 0.2 s each, memory sampled every 50 ms."""
    d = tmp_path / "trace"
    d.mkdir()
    t0 = 1_800_000_000.0  # epoch s of the harness start
    recs = [{"event": "start", "schema": 1, "runner": "edgekit-runner", "backend": "litert_lm", "mode": "warm",
             "warmup": 1, "reps": 3},
            {"event": "init", "init_ms": 250.0}]
    for k in range(4):
        s = t0 + 0.3 + k * 0.25
        recs.append({"event": "run", "phase": "warmup" if k == 0 else "measure", "index": 0 if k == 0 else k - 1,
                     "ttft_ms": 10.0 + k, "prefill_ms": 8.0, "prefill_tokens": 128, "prefill_tps": 16000.0,
                     "decode_ms": 100.0, "decode_tokens": 64, "decode_tps": 640.0 + k, "token_ms": [],
                     "t_start": s, "t_end": s + 0.2})
    recs.append({"event": "end", "status": "ok", "t": t0 + 1.4})
    (d / "runner.out").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "runner.err").write_text("")
    rows = ["t_ms\tvmrss_kb\tvmhwm_kb\trss_anon_kb\trss_file_kb\trss_shmem_kb\tvmswap_kb\tpss_kb"]
    for t in range(0, 1400, 50):
        k = (t - 300) // 250 if t >= 300 else -1  # iteration k's window is 300+250k .. 500+250k ms
        anon = 90_000 if k < 0 else 10_000 * (k + 1) + t % 7  # the engine load peaks before the iterations
        rows.append(f"{t}\t{anon + 5000}\t95000\t{anon}\t5000\t0\t0\t")
    (d / "mem.tsv").write_text("\n".join(rows) + "\n")
    (d / "thermal.tsv").write_text("t_ms\tphase\tzone\ttype\ttemp_mc\n")
    (d / "cpufreq.tsv").write_text("t_ms\tphase\tcpu\tcur_khz\n")
    (d / "harness.tsv").write_text(f"start_epoch_ms\t{int(t0 * 1000)}\nend_epoch_ms\t{int(t0 * 1000) + 1450}\n"
                                   "pid\t1\ninterval_ms\t50\nexit_status\t0\nsamples\t28\n")
    return d


def test_warm_trace_gives_one_run_per_iteration(tmp_path):
    d = _warm_trace(tmp_path)
    trace = parse_trace_dir(d)
    assert trace.ok and trace.start["mode"] == "warm"
    runs = iteration_runs(trace, "candidate", 6, "traces/06-candidate-warm")
    assert [(r.phase, r.index, r.order) for r in runs] == [("warmup", 0, 6), ("measure", 0, 7), ("measure", 1, 8),
                                                           ("measure", 2, 9)]
    assert all(r.ok and r.trace_dir == "traces/06-candidate-warm" for r in runs)
    assert [r.metrics["decode_tps"] for r in runs] == [640.0, 641.0, 642.0, 643.0]
    assert [r.metrics["ttft_ms"] for r in runs] == [10.0, 11.0, 12.0, 13.0]
    # one engine load per process: on its first record only, never repeated as if measured per run
    assert runs[0].metrics["init_ms"] == 250.0 and all(r.metrics["init_ms"] is None for r in runs[1:])
    # each iteration's own window of samples; the lifetime VmHWM (the load's 95 MB) is not an iteration's peak
    for k, r in enumerate(runs):
        assert r.t_start == pytest.approx(1_800_000_000.3 + k * 0.25)
        assert all(300 + 250 * k <= m.t_ms <= 500 + 250 * k for m in r.mem)
        anon = r.metrics["peak_anon_mb"]
        assert anon is not None and 10_000 * (k + 1) / 1024 <= anon < (10_000 * (k + 1) + 7) / 1024 + 1e-3
        assert r.metrics["peak_rss_mb"] < 95_000 / 1024


def test_failed_warm_process_is_one_failed_run(tmp_path):
    d = _warm_trace(tmp_path)
    lines = (d / "runner.out").read_text().splitlines()
    (d / "runner.out").write_text("\n".join(lines[:3] + [json.dumps({"event": "error", "message": "oom"})]) + "\n")
    runs = iteration_runs(parse_trace_dir(d), "baseline", 3, "t")
    assert len(runs) == 1 and not runs[0].ok and "oom" in runs[0].error and runs[0].order == 3


@pytest.mark.slow
def test_host_bench_warm_mode(bench_bundles, tmp_path):
    out = tmp_path / "results"
    code = main(["bench", "--device", "host", "--bundle", str(bench_bundles["wNa8o8"]), "--baseline",
                 str(bench_bundles["fp16"]), "--mode", "warm", "--warmup", "1", "--reps", "3", "--prefill", "8",
                 "--decode", "8", "--no-profile-thresholds", "--output", str(out)])
    assert code == 0
    folder = next(d for d in out.iterdir() if not d.name.startswith("."))
    r = load_result(folder / "result.json")
    assert r.settings.mode == "warm"
    assert [(x.role, x.phase) for x in r.runs] == [("candidate", "warmup")] + [("candidate", "measure")] * 3 + \
        [("baseline", "warmup")] + [("baseline", "measure")] * 3
    assert sorted({x.trace_dir for x in r.runs}) == ["traces/00-candidate-warm", "traces/01-baseline-warm"]
    for role in ("candidate", "baseline"):
        start = json.loads((folder / f"traces/{'00' if role == 'candidate' else '01'}-{role}-warm/runner.out")
                           .read_text().splitlines()[0])
        assert start["mode"] == "warm" and (start["warmup"], start["reps"]) == (1, 3)
        assert all(x.metrics["decode_tps"] for x in r.measured(role))
