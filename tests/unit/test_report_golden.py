"""Golden outputs on committed result fixtures: compare, gate (text + JUnit) and the Markdown view.

Regenerate after an intended change: EDGEKIT_REGEN_GOLDEN=1 pytest tests/unit/test_report_golden.py
"""

from __future__ import annotations

import shutil

from edgekit.cli.main import main
from fixtures_results import FIXTURES, check_golden

THRESHOLDS = ["--fail-on", "decode_tps:-5%", "--fail-on", "peak_anon_mb:+10%", "--fail-on", "peak_anon_mb<=1000",
              "--fail-on", "top1_agreement>=0.90", "--fail-on", "ppl_ratio<=1.10"]


def run(capsys, args, code=0):
    assert main(args) == code
    return capsys.readouterr().out


def test_compare_golden(capsys):
    a = str(FIXTURES / "synth-pixel8-wna8o8-vs-fp16")
    b = str(FIXTURES / "synth-pixel8-wna8o8-vs-fp16-rerun")
    check_golden("compare-rerun.txt", run(capsys, ["compare", a, b]))
    check_golden("compare-rerun.md", run(capsys, ["compare", a, b, "--markdown"]))
    check_golden("compare-in-result.txt", run(capsys, ["compare", a]))


def test_gate_golden(capsys, tmp_path):
    j = tmp_path / "junit.xml"
    out = run(capsys, ["gate", str(FIXTURES / "synth-pixel8-fp16-vs-wna8o8"), "--no-profile-thresholds",
                       *THRESHOLDS, "--junit", str(j)], code=1)
    check_golden("gate-fp16-vs-wna8o8.txt", out)
    check_golden("gate-fp16-vs-wna8o8.junit.xml", j.read_text())
    out = run(capsys, ["gate", str(FIXTURES / "synth-pixel8-mismatch"), "--no-profile-thresholds", *THRESHOLDS],
              code=4)
    check_golden("gate-mismatch.txt", out)


def test_markdown_golden(capsys, tmp_path):
    d = tmp_path / "res"
    shutil.copytree(FIXTURES / "synth-pixel8-wna8o8-vs-fp16", d)
    run(capsys, ["report", str(d), "--no-profile-thresholds", *THRESHOLDS])
    check_golden("summary-wna8o8-vs-fp16.md", (d / "summary.md").read_text())
    assert (d / "report.html").stat().st_size > 10_000


def test_real_host_result_golden(capsys, tmp_path):
    """A result captured from a real `edgekit bench --device host` run of the tiny bundles."""
    src = FIXTURES / "host-tiny-fp16-vs-wna8o8"
    out = run(capsys, ["gate", str(src), "--no-profile-thresholds", "--fail-on", "decode_tps:-5%",
                       "--fail-on", "peak_anon_mb:+10%", "--fail-on", "peak_rss_mb<=64"], code=1)
    check_golden("gate-host-tiny.txt", out)
    check_golden("compare-host-tiny.md", run(capsys, ["compare", str(src), "--markdown"]))
    d = tmp_path / "res"
    shutil.copytree(src, d)
    run(capsys, ["report", str(d), "--no-profile-thresholds", "--fail-on", "decode_tps:-5%"])
    check_golden("summary-host-tiny.md", (d / "summary.md").read_text())
