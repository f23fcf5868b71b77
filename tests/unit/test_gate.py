"""Gate: threshold syntax, significance AND threshold, budgets, exit codes, JUnit, CLI exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from edgekit.cli.main import main
from edgekit.errors import ConfigError, UsageError
from edgekit.report.junit import render_junit
from edgekit.results.compare import compare_result
from edgekit.results.gate import (
    ABSOLUTE, FAIL, PASS, RELATIVE, UNDECIDED, evaluate, merge_thresholds, parse_threshold, parse_thresholds,
    resolve_thresholds,
)
from edgekit.results.records import load_result
from fixtures_results import FIXTURES


def R(name):
    return load_result(FIXTURES / name)


def gate(name, *ths, allow_mismatch=False):
    r = R(name)
    cmp = compare_result(r, allow_mismatch=allow_mismatch, raise_on_mismatch=False)
    return evaluate(r, parse_thresholds(ths), cmp)


def test_parse():
    t = parse_threshold("decode_tps:-5%")
    assert (t.metric, t.kind, t.op, t.value) == ("decode_tps", RELATIVE, "-", pytest.approx(0.05))
    t = parse_threshold(" peak_anon_mb <= 1000 ")
    assert (t.metric, t.kind, t.op, t.value) == ("peak_anon_mb", ABSOLUTE, "<=", 1000.0)
    assert parse_threshold("top1_agreement>=0.90").value == 0.9
    assert len(parse_thresholds(["decode_tps:-5%,peak_anon_mb:+10%", "ppl_ratio<=1.10"])) == 3


@pytest.mark.parametrize("bad", ["decode_tps:-5", "decode_tps-5%", "nosuch:-5%", "decode_tps:5%", "peak_anon_mb=<3",
                                 "top1_agreement:-1%", "decode_tps:-0%", ""])
def test_bad_syntax_is_usage_error(bad):
    with pytest.raises(UsageError):
        parse_threshold(bad)


def test_bad_profile_threshold_is_config_error():
    with pytest.raises(ConfigError, match="profile x"):
        parse_threshold("decode_tps:-5", source="profile x")


def test_merge_cli_overrides_profile_same_metric_and_kind():
    prof = parse_thresholds(["decode_tps:-5%", "peak_anon_mb<=1500"], source="profile p")
    cli = parse_thresholds(["decode_tps:-10%"])
    merged = merge_thresholds(prof, cli)
    assert [t.text for t in merged] == ["peak_anon_mb<=1500", "decode_tps:-10%"]


def test_fp16_candidate_fails_decode_threshold():
    g = gate("synth-pixel8-fp16-vs-wna8o8", "decode_tps:-5%")
    assert g.exit_code == 1 and g.checks[0].status == FAIL


def test_clear_win_passes():
    g = gate("synth-pixel8-wna8o8-vs-fp16", "decode_tps:-5%", "peak_anon_mb:+10%", "peak_anon_mb<=1000",
             "top1_agreement>=0.90", "ppl_ratio<=1.10")
    assert g.exit_code == 0 and all(c.status == PASS for c in g.checks)


def test_crossed_but_not_significant_passes():
    # the same bundles measured twice: +3.5% init time is past a 1% threshold but only noise
    from edgekit.results.compare import compare_results

    cmp = compare_results(R("synth-pixel8-wna8o8-vs-fp16"), R("synth-pixel8-wna8o8-vs-fp16-rerun"))
    m = cmp.get("init_ms")
    assert m.change > 0.01 and m.p_value >= 0.05
    g = evaluate(R("synth-pixel8-wna8o8-vs-fp16"), parse_thresholds(["init_ms:+1%"]), cmp)
    assert g.checks[0].status == PASS and "not significant" in g.checks[0].message and g.exit_code == 0


def test_absolute_budget_breaks_without_significance():
    g = gate("synth-pixel8-3reps", "peak_anon_mb<=100")
    assert g.exit_code == 1 and g.checks[0].status == FAIL and "breaks" in g.checks[0].message
    g = gate("synth-pixel8-wna8o8-vs-fp16", "top1_agreement>=0.95")
    assert g.exit_code == 1


def test_insufficient_and_mismatch_are_exit_4():
    assert gate("synth-pixel8-3reps", "decode_tps:-5%").exit_code == 4
    g = gate("synth-pixel8-mismatch", "decode_tps:-5%")
    assert g.exit_code == 4 and g.checks[0].status == UNDECIDED and "not comparable" in g.checks[0].message
    assert gate("synth-pixel8-mismatch", "decode_tps:-5%", allow_mismatch=True).exit_code == 0
    # a definite failure outranks an undecided threshold
    assert gate("synth-pixel8-3reps", "decode_tps:-5%", "peak_anon_mb<=100").exit_code == 1


def test_junit_reflects_gate():
    g = gate("synth-pixel8-fp16-vs-wna8o8", "decode_tps:-5%", "peak_anon_mb<=1000")
    root = ET.fromstring(render_junit(g))
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and suite.get("errors") == "0"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["decode_tps:-5%"].find("failure") is not None
    assert cases["peak_anon_mb<=1000"].find("failure") is None
    g = gate("synth-pixel8-mismatch", "decode_tps:-5%")
    suite = ET.fromstring(render_junit(g)).find("testsuite")
    assert suite.get("errors") == "1" and suite.find("testcase/error").get("type") == "not comparable"


@pytest.mark.parametrize("name,ths,code", [
    ("synth-pixel8-fp16-vs-wna8o8", ["decode_tps:-5%"], 1),
    ("synth-pixel8-wna8o8-vs-fp16", ["decode_tps:-5%"], 0),
    ("synth-pixel8-mismatch", ["decode_tps:-5%"], 4),
    ("synth-pixel8-3reps", ["decode_tps:-5%"], 4),
    ("synth-pixel8-3reps", ["decode_tps:-5"], 2),
])
def test_cli_exit_codes(name, ths, code, tmp_path, capsys):
    args = ["gate", str(FIXTURES / name), "--no-profile-thresholds", "--junit", str(tmp_path / "j.xml")]
    for t in ths:
        args += ["--fail-on", t]
    assert main(args) == code
    if code != 2:
        assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite/properties/property").get("value") == str(code)


def test_cli_gate_json(capsys):
    code = main(["gate", str(FIXTURES / "synth-pixel8-fp16-vs-wna8o8"), "--no-profile-thresholds",
                 "--fail-on", "decode_tps:-5%", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == out["exit_code"] == 1 and out["checks"][0]["status"] == "fail"


def test_cli_bad_result_file(tmp_path, capsys):
    p = tmp_path / "r.json"
    p.write_text('{"kind": "edgekit-bench-result", "schema": 99}')
    assert main(["gate", str(p), "--fail-on", "decode_tps:-5%"]) == 5
    err = capsys.readouterr().err
    assert "schema 99" in err and "Traceback" not in err


# --- quality in the default gate (issue 12, section 6) ---------------------------------------------

def test_every_shipped_profile_gates_quality():
    from pathlib import Path

    from edgekit.devices.profiles import read_profile

    files = sorted((Path(__file__).resolve().parents[2] / "device_profiles").glob("*.toml"))
    assert files
    for f in files:
        prof = read_profile(f)
        ths = parse_thresholds([*prof.gate.fail_on, *prof.gate.budget], source=f"profile {prof.name}")
        top1 = [t for t in ths if t.metric == "top1_agreement"]
        assert [(t.kind, t.op, t.value) for t in top1] == [(ABSOLUTE, ">=", 0.95)], f.name
        assert "0.99" in f.read_text() and "0.95" in f.read_text()  # the comment says where it comes from


def test_default_gate_fails_the_tiny_bundle_on_quality(capsys):
    """The tiny wNa8o8 bundle's manifest says top-1 agreement 0.434: the host profile's gate fails on it."""
    from fixtures_results import FIXTURES as F

    src = F / "host-tiny-pss-once-a-second"
    assert R("host-tiny-pss-once-a-second").bundles["candidate"].quality()["top1_agreement"] < 0.5
    assert main(["gate", str(src)]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "top1_agreement>=0.95" in x and "profile host" in x)
    assert line.startswith("FAIL") and "top1_agreement = 0.434 (manifest value) breaks" in line
    assert "gate failed" in out and "top1_agreement>=0.95" in out.splitlines()[-1]


def test_no_quality_figure_is_undecided_not_pass(tmp_path, capsys):
    d = json.loads((FIXTURES / "synth-pixel8-wna8o8-vs-fp16" / "result.json").read_text())
    d["bundles"]["candidate"]["manifest"].pop("quality")
    p = tmp_path / "result.json"
    p.write_text(json.dumps(d))
    r = load_result(p)
    g = evaluate(r, parse_thresholds(["top1_agreement>=0.95"], source="profile pixel8"), None)
    assert g.exit_code == 4 and g.checks[0].status == UNDECIDED
    assert "no quality record" in g.checks[0].message and "no quality record" in g.reason
    assert main(["gate", str(p), "--no-profile-thresholds", "--fail-on", "top1_agreement>=0.95"]) == 4


def test_quality_scored_on_too_few_tokens_is_undecided(tmp_path):
    d = json.loads((FIXTURES / "synth-pixel8-wna8o8-vs-fp16" / "result.json").read_text())
    d["bundles"]["candidate"]["manifest"]["quality"]["tokens"] = 20
    p = tmp_path / "result.json"
    p.write_text(json.dumps(d))
    g = evaluate(load_result(p), parse_thresholds(["top1_agreement>=0.90"]), None)
    assert g.exit_code == 4 and "20 scored tokens (at least 100 needed)" in g.checks[0].message


def test_bench_request_refuses_conflicts_before_any_work(tmp_path):
    from edgekit.bench.gated import BenchRequest, run_gated_bench

    with pytest.raises(UsageError, match="exactly one of --bundle"):
        run_gated_bench(BenchRequest("no-such-device"))
    with pytest.raises(UsageError, match="exclude each other"):
        BenchRequest("host", bundle=tmp_path / "a", baseline=tmp_path / "b", no_baseline=True).check()
    with pytest.raises(UsageError, match="bad threshold"):  # syntax before the profile is even looked up
        run_gated_bench(BenchRequest("no-such-device", bundle=tmp_path / "a", fail_on=("decode_tps=3",)))
    with pytest.raises(TypeError):
        BenchRequest.from_options({"device": "host", "bogus": 1})


def test_resolve_thresholds_drops_relative_profile_thresholds_without_baseline():
    notes: list[str] = []
    ts = resolve_thresholds(("decode_tps:-3%",), "pixel8", has_baseline=False, note=notes.append)
    texts = [t.text for t in ts]
    assert "decode_tps:-3%" in texts  # the command line's stays (it gates undecided without a baseline)
    assert "peak_anon_mb:+10%" not in texts and "top1_agreement>=0.95" in texts
    assert any("relative thresholds are not applied" in n for n in notes)
    assert resolve_thresholds((), "no-such-profile", True, note=notes.append) == []
    assert "no thresholds from device profile" in notes[-1]


def test_gate_stored_is_what_the_gate_command_decides(tmp_path, capsys):
    from edgekit.bench.gated import gate_stored

    path = FIXTURES / "synth-pixel8-wna8o8-vs-fp16"
    stored = gate_stored(path, ("decode_tps:-5%",), junit=tmp_path / "j.xml", note=lambda s: None)
    code = main(["gate", str(path), "--fail-on", "decode_tps:-5%", "--json"])
    assert code == stored.exit_code
    assert json.loads(capsys.readouterr().out) == stored.context.gate.to_dict()
    assert len(list(ET.parse(tmp_path / "j.xml").getroot().iter("testcase"))) == len(stored.thresholds) > 1
