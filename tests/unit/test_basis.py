"""A figure with no valid measurement is absent, never a number (issue 12, section 2).

Fixtures captured on this machine with the harness reading Pss about once a second:
``trace-host-pss-once-a-second`` (one tiny run: 9 RSS readings, 1 Pss reading taken
before the runner loaded anything) and ``host-tiny-pss-once-a-second`` (the result of
`edgekit bench --device host --model tiny --text-only --reps 5` written by the code
before bases existed: schema 1, peak_pss_mb 0.10 MB in every run).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil

import pytest

from edgekit.bench.session import metrics_from_trace, run_from_trace
from edgekit.bench.traces import parse_trace_dir
from edgekit.cli.main import main
from edgekit.results.basis import MIN_MEM_SAMPLES, Basis, bursty, min_stamps, summarize_reasons
from edgekit.results.compare import INSUFFICIENT, compare_metric, compare_result
from edgekit.results.gate import EXIT_UNDECIDED, UNDECIDED, evaluate, parse_thresholds
from edgekit.results.records import BenchResult, load_result, save_result
from fixtures_results import FIXTURES

TRACE = FIXTURES / "trace-host-pss-once-a-second"
OLD = FIXTURES / "host-tiny-pss-once-a-second"


def _rows(path):
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def test_trace_with_one_pss_reading_gives_na_pss_not_a_tiny_number():
    rows = _rows(TRACE / "mem.tsv")
    assert len(rows) >= MIN_MEM_SAMPLES and sum(1 for r in rows if r[7].strip()) == 1
    trace = parse_trace_dir(TRACE)
    assert trace.count("pss_kb") == 1 and trace.count("rss_anon_kb") == len(rows)
    run = run_from_trace(trace, "candidate", "measure", 0, 0, "t")
    assert run.ok
    assert run.metrics["peak_pss_mb"] is None  # was 0.1 MB: the one reading is of the shell before exec
    b = run.basis["peak_pss_mb"]
    assert (b.samples, b.minimum, b.of) == (1, MIN_MEM_SAMPLES, "PSS readings") and not b.valid
    assert "1 PSS reading (at least 3 needed)" in run.reason("peak_pss_mb") and "once a second" in b.reason
    # RSS kinds are read every sample: those peaks stand, with their counts
    assert run.metrics["peak_anon_mb"] == pytest.approx(max(int(r[3]) for r in rows) / 1024, abs=1e-3)
    assert run.basis["peak_anon_mb"].samples == len(rows) and run.basis["peak_rss_mb"].valid
    # the scripts' entry point agrees
    assert metrics_from_trace(trace)[0]["peak_pss_mb"] is None


def test_trace_with_no_pss_reading(tmp_path):
    d = tmp_path / "t"
    shutil.copytree(TRACE, d)
    lines = (d / "mem.tsv").read_text().splitlines()
    (d / "mem.tsv").write_text("\n".join([lines[0]] + ["\t".join(x.split("\t")[:7] + [""]) for x in lines[1:]])
                               + "\n")
    run = run_from_trace(parse_trace_dir(d), "candidate", "measure", 0, 0, "t")
    assert run.metrics["peak_pss_mb"] is None and run.basis["peak_pss_mb"].samples == 0
    assert run.reason("peak_pss_mb").startswith("0 PSS readings")


def test_process_shorter_than_sampling_has_no_memory_peaks(tmp_path):
    d = tmp_path / "t"
    shutil.copytree(TRACE, d)
    lines = (d / "mem.tsv").read_text().splitlines()
    (d / "mem.tsv").write_text("\n".join(lines[:2]) + "\n")  # one sample, taken before exec
    run = run_from_trace(parse_trace_dir(d), "candidate", "measure", 0, 0, "t")
    for name in ("peak_rss_mb", "peak_anon_mb", "peak_file_mb", "peak_pss_mb"):
        assert run.metrics[name] is None and run.basis[name].samples <= 1, name
    assert run.metrics["decode_tps"] > 0  # the runner's own figures stand


def _with_thresholds(result, *texts):
    cmp = compare_result(result, raise_on_mismatch=False)
    return evaluate(result, parse_thresholds(texts), cmp)


def test_gate_on_pss_without_readings_is_undecided_with_reason():
    trace = parse_trace_dir(TRACE)
    r = load_result(OLD)
    run = run_from_trace(trace, "candidate", "measure", 0, 2, "traces/x")
    res = r.with_runs([run if (x.role, x.phase, x.index) == ("candidate", "measure", 0) else x for x in r.runs])
    g = _with_thresholds(res, "peak_pss_mb<=2600")
    assert g.exit_code == EXIT_UNDECIDED and g.checks[0].status == UNDECIDED
    assert "PSS reading" in g.checks[0].message and "PSS reading" in g.reason


def test_old_result_pss_budget_exit_4_and_reason_in_every_view(tmp_path, capsys):
    """The schema 1 result passed `peak_pss_mb<=2600` on 0.10 MB; read today it is undecided."""
    raw = json.loads((OLD / "result.json").read_text())
    assert raw["schema"] == 1
    assert all(run["metrics"]["peak_pss_mb"] < 0.2 for run in raw["runs"])  # what the old code wrote
    assert main(["gate", str(OLD), "--no-profile-thresholds", "--fail-on", "peak_pss_mb<=2600"]) == 4
    out = capsys.readouterr().out
    assert "UNDECIDED" in out and "1 PSS reading per run (at least 3 needed)" in out and "exit 4" in out
    # comparison: no verdict on no data
    assert main(["compare", str(OLD)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("peak_pss_mb"))
    assert line.split()[2:5] == ["n/a", "n/a", "n/a"] and line.endswith("insufficient data")
    assert "0.10" not in line and "peak_pss_mb: candidate and baseline: n/a in 5 of 5 measured runs" in out
    # Markdown, HTML, CSV and JSON views of the same result
    d = tmp_path / "res"
    shutil.copytree(OLD, d)
    assert main(["report", str(d), "--no-profile-thresholds", "--fail-on", "peak_pss_mb<=2600"]) == 0  # a view
    md = (d / "summary.md").read_text()
    assert "| peak_pss_mb | MB | 0 | n/a |" in md
    assert "- peak_pss_mb: n/a in 5 of 5 measured runs: 1 PSS reading per run (at least 3 needed)" in md
    assert "gate undecided" in md and "PSS reading" in md.split("## Gate")[1].split("##")[0]
    html = (d / "report.html").read_text()
    assert "peak_pss_mb: n/a in 5 of 5 measured runs" in html
    rows = list(csv.DictReader(io.StringIO((d / "runs.csv").read_text())))
    assert all(row["peak_pss_mb"] == "n/a" and row["peak_pss_mb_samples"] == "1" for row in rows)
    assert all("peak_pss_mb: 1 PSS reading" in row["na_reasons"] for row in rows)
    capsys.readouterr()
    assert main(["compare", str(OLD), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    pss = next(m for m in cmp["metrics"] if m["metric"] == "peak_pss_mb")
    assert pss["verdict"] == INSUFFICIENT and pss["change"] is None and "PSS reading" in pss["note"]
    # the result re-saved in the current schema keeps count and reason per run
    p = save_result(load_result(OLD), tmp_path / "result.json")
    data = json.loads(p.read_text())
    assert data["schema"] == 2
    b = data["runs"][2]["basis"]["peak_pss_mb"]
    assert (b["samples"], b["minimum"], data["runs"][2]["metrics"]["peak_pss_mb"]) == (1, 3, None)
    assert "PSS reading" in b["reason"]
    assert load_result(p) == load_result(OLD)


def test_no_pss_on_one_side_is_insufficient_not_minus_100_percent():
    """e2b width/4: short wNa8o8 runs (no Pss reading) against long fp16 runs (several)."""
    data = json.loads((FIXTURES / "synth-pixel8-wna8o8-vs-fp16" / "result.json").read_text())
    pss = data["runs"][0]["mem_fields"].index("pss_mb")
    for run in data["runs"]:
        if run["role"] == "candidate":
            for row in run["mem"][1:]:
                row[pss] = None
            run["mem"][0][pss] = 0.1
            run["metrics"]["peak_pss_mb"] = 0.1  # what a reader that ignores the count would take
            run.pop("basis")
    data["schema"] = 1
    r = BenchResult.from_dict(data)
    m = compare_result(r).get("peak_pss_mb")
    assert m.verdict == INSUFFICIENT and m.ratio is None and m.change is None and m.p_value is None
    assert "candidate: n/a in 5 of 5 measured runs: 1 PSS reading per run" in m.note
    assert m.phrase == "insufficient data (peak PSS: n/a)"
    g = _with_thresholds(r, "peak_pss_mb:+10%")
    assert g.exit_code == 4 and "insufficient data" in g.checks[0].message


def test_partial_values_do_not_decide_a_budget():
    r = load_result(FIXTURES / "synth-pixel8-wna8o8-vs-fp16")
    short = Basis(1, "RssAnon readings", 3, "1 RssAnon reading (at least 3 needed)")
    runs, n = [], 0
    for x in r.runs:
        if x.role == "candidate" and x.phase == "measure" and n < 3:
            n += 1
            x = dataclasses.replace(x, basis={**x.basis, "peak_anon_mb": short})
        runs.append(x)
    r2 = r.with_runs(runs)
    assert len(r2.samples("candidate", "peak_anon_mb")) == 2
    g = evaluate(r2, parse_thresholds(["peak_anon_mb<=100000"]), None)
    assert g.exit_code == 4 and "only 2 of 5 measured runs" in g.checks[0].message
    # nor a change against the baseline, even with 3+ values on each side
    m = compare_metric("peak_anon_mb", [300.0, 301.0, 302.0], [570.0, 571.0, 572.0, 573.0, 574.0],
                       cand_missing="n/a in 3 of 6 measured runs: x", cand_runs=7, base_runs=5)
    assert m.verdict == INSUFFICIENT and "3 of 7 candidate" in m.note and "at least half" in m.note


def test_token_percentiles_need_stamps_and_no_bursts():
    assert (min_stamps(50), min_stamps(90), min_stamps(99)) == (8, 10, 100)
    steady = [10.0 + 0.1 * (i % 3) for i in range(64)]
    assert bursty(steady) is None
    chunked = [10.0, 0.02, 9.9, 0.03, 10.1, 0.02, 10.0, 0.02] * 4
    assert "bursts" in bursty(chunked)
    held_back = [11.7] + [0.11] * 15  # the engine decoded everything, then called back 16 times
    assert "one burst" in bursty(held_back)
    m = compare_metric("token_p50_ms", [1.0, 1.1, 1.2, 1.0, 1.1], [], cand_missing=None,
                       base_missing="n/a in 5 of 5 measured runs: token stamps arrive in bursts")
    assert m.verdict == INSUFFICIENT and "baseline: n/a in 5 of 5" in m.note


def test_reasons_summarized_with_count_ranges():
    s = summarize_reasons(["1 PSS reading (at least 3 needed): x", "2 PSS readings (at least 3 needed): x", None], 3)
    assert s == "n/a in 2 of 3 measured runs: 1-2 PSS readings per run (at least 3 needed): x"
    assert summarize_reasons([None, None], 2) is None
    assert summarize_reasons(["0 PSS readings (at least 3 needed)", "1 PSS reading (at least 3 needed)"], 2) == \
        "n/a in 2 of 2 measured runs: 0-1 PSS readings per run (at least 3 needed)"


def test_thermal_max_absent_when_no_reading_during_the_run(tmp_path):
    d = tmp_path / "t"
    shutil.copytree(TRACE, d)
    (d / "thermal.tsv").write_text("t_ms\tphase\tzone\ttype\ttemp_mc\n0\tbefore\tthermal_zone0\tBIG\t41000\n"
                                   "600\tafter\tthermal_zone0\tBIG\t43000\n")
    run = run_from_trace(parse_trace_dir(d), "candidate", "measure", 0, 0, "t")
    t = run.thermal
    assert (t.start_c, t.max_c, t.end_c, t.during_samples) == (41.0, None, 43.0, 0)


def test_bursty_stamps_are_not_plotted_as_token_latency():
    from edgekit.report.plots import token_latency_png

    old = load_result(FIXTURES / "host-tiny-fp16-vs-wna8o8")  # every run's stamps arrive in bursts
    assert all(r.token_ms and r.basis["token_p50_ms"].flag == "bursty" for r in old.runs if r.phase == "measure")
    assert token_latency_png(old) is None
    assert token_latency_png(load_result(FIXTURES / "synth-pixel8-wna8o8-vs-fp16")) is not None
