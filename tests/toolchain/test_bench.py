"""`edgekit bench` end to end on this machine (`host`, LocalTransport) with the tiny bundles.

One bench (fp16 as candidate, wNa8o8 as baseline, 4 reps so Mann-Whitney can reach
p < 0.05) is shared by several checks; the expected gate exit code is recomputed
from the measured samples with scipy, not assumed. Cheap failure paths (mismatched
baseline, missing fp16 build, a run that crashes) run on their own.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from scipy.stats import mannwhitneyu

from edgekit.cli.main import main
from edgekit.results.records import load_result

FAST = ["--warmup", "1", "--prefill", "8", "--decode", "8"]


def expected_gate(c: list[float], b: list[float], limit: float = -0.05) -> int:
    """decode_tps:-5% from first principles: significant (two-sided MWU p<0.05) and past -5% -> 1."""
    n1, n2 = len(c), len(b)
    from math import comb

    if n1 < 3 or n2 < 3 or 2 / comb(n1 + n2, n1) > 0.05:
        return 4
    change = statistics.median(c) / statistics.median(b) - 1
    p = 1.0 if set(c) == set(b) and len(set(c)) == 1 else mannwhitneyu(c, b, alternative="two-sided").pvalue
    return 1 if (p < 0.05 and change < limit) else 0


@pytest.fixture(scope="module")
def host_bench(bench_bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    junit = out / "ci-junit.xml"
    code = main(["bench", "--device", "host", "--bundle", str(bench_bundles["fp16"]),
                 "--baseline", str(bench_bundles["wNa8o8"]), "--reps", "4", *FAST, "--no-profile-thresholds",
                 "--fail-on", "decode_tps:-5%", "--fail-on", "peak_anon_mb<=100000", "--junit", str(junit),
                 "--output", str(out / "results")])
    folders = [d for d in (out / "results").iterdir() if not d.name.startswith(".")]
    assert len(folders) == 1, folders
    return code, folders[0], junit


@pytest.mark.slow
def test_host_bench_writes_complete_folder(host_bench):
    code, folder, junit = host_bench
    for name in ("result.json", "summary.md", "report.html", "runs.csv", "junit.xml"):
        assert (folder / name).is_file(), name
    r = load_result(folder)
    assert r.status == "ok" and r.device.profile == "host" and r.device.identity
    assert len(r.runs) == 2 * (1 + 4)
    assert [x.phase for x in r.runs[:2]] == ["warmup", "warmup"]
    assert [x.role for x in r.runs[2:6]] == ["candidate", "baseline", "candidate", "baseline"]  # interleaved
    assert len(r.measured("candidate")) == len(r.measured("baseline")) == 4
    for run in r.runs:
        t = folder / run.trace_dir
        assert (t / "runner.out").is_file() and (t / "mem.tsv").is_file() and (t / "harness.tsv").is_file()
        assert run.metrics["decode_tps"] > 0 and run.metrics["ttft_ms"] > 0 and run.metrics["init_ms"] > 0
        # litert_lm decodes without Python per token (no per-token times, nothing invented); the interpreter times each
        assert len(run.token_ms) == (0 if r.runtime.get("backend") == "litert_lm" else 8)
        assert run.metrics["peak_anon_mb"] > 0 and run.metrics["peak_file_mb"] > 0
        assert run.metrics["peak_rss_mb"] >= run.metrics["peak_anon_mb"]
        assert run.mem, "memory timeline sampled"
    cand = r.bundles["candidate"]
    assert cand.sha256 == __import__("edgekit.fsutil", fromlist=["x"]).sha256_file(cand.path)
    assert r.runtime.get("runtime"), "runtime versions from the runner's start record"
    html = (folder / "report.html").read_text()
    # the per-token latency plot only when tokens were timed (none is drawn from nothing)
    assert html.count("data:image/png;base64,") == (3 if any(x.token_ms for x in r.runs) else 2)
    md = (folder / "summary.md").read_text()
    assert "## Candidate vs baseline" in md and "decode_tps" in md


@pytest.mark.slow
def test_host_bench_gate_matches_measurements(host_bench, capsys):
    code, folder, junit = host_bench
    r = load_result(folder)
    exp = expected_gate(r.samples("candidate", "decode_tps"), r.samples("baseline", "decode_tps"))
    assert code == exp
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    dec = cases["decode_tps:-5%"]
    assert (dec.find("failure") is not None) == (exp == 1)
    assert cases["peak_anon_mb<=100000"].find("failure") is None
    # the stored result gates the same way without a device
    assert main(["gate", str(folder), "--no-profile-thresholds", "--fail-on", "decode_tps:-5%"]) == exp
    # an absolute budget the tiny model cannot meet fails regardless of significance
    assert main(["gate", str(folder), "--no-profile-thresholds", "--fail-on", "peak_rss_mb<=1"]) == 1
    capsys.readouterr()
    assert main(["compare", str(folder / "result.json"), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert {m["metric"] for m in cmp["metrics"]} >= {"decode_tps", "peak_anon_mb"}


@pytest.mark.slow
def test_report_regenerates_views(host_bench, tmp_path, capsys):
    _, folder, _ = host_bench
    d = tmp_path / "copy"
    shutil.copytree(folder, d)
    (d / "summary.md").unlink()
    (d / "report.html").unlink()
    assert main(["report", str(d), "--no-profile-thresholds", "--fail-on", "decode_tps:-5%",
                 "--fail-on", "peak_anon_mb<=100000"]) == 0
    # the same records and thresholds give the same Markdown, byte for byte
    assert (d / "summary.md").read_text() == (folder / "summary.md").read_text()
    assert (d / "report.html").read_text().count("data:image/png;base64,") == \
        (folder / "report.html").read_text().count("data:image/png;base64,") >= 2


def _dist_copy(tmp: Path, src: Path, name: str, manifest: dict | None = None) -> Path:
    """Copy a built bundle and its manifest into tmp/dist/name; ``manifest`` overrides the
    identity fields in the shape `edgekit build` writes (model.preset, scheme.name, build.text_only)."""
    d = tmp / "dist" / name
    d.mkdir(parents=True, exist_ok=True)
    dst = d / src.name
    shutil.copyfile(src, dst)
    data = json.loads((src.parent / "manifest.json").read_text())
    over = manifest or {}
    if "model" in over:
        data["model"]["preset"] = over["model"]
    if "scheme" in over:
        data["scheme"]["name"] = over["scheme"]
    if "text_only" in over:
        data["build"]["text_only"] = over["text_only"]
    (d / "manifest.json").write_text(json.dumps(data))
    return dst


def test_mismatched_baseline_exit_4_with_junit(bench_bundles, tmp_path, capsys):
    cand = _dist_copy(tmp_path, bench_bundles["wNa8o8"], "tiny-wNa8o8-text",
                      {"model": "tiny", "scheme": "wNa8o8", "text_only": True})
    base = _dist_copy(tmp_path, bench_bundles["fp16"], "other-fp16-text",
                      {"model": "other", "scheme": "fp16", "text_only": True})
    junit = tmp_path / "j.xml"
    code = main(["bench", "--device", "host", "--bundle", str(cand), "--baseline", str(base), "--reps", "3", *FAST,
                 "--no-profile-thresholds", "--fail-on", "decode_tps:-5%", "--junit", str(junit),
                 "--output", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 4 and "not comparable" in err and "bundle model: tiny-text" in err
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.find("testcase/error") is not None
    assert not (tmp_path / "results").exists()  # refused before touching the device


def test_missing_fp16_baseline_names_build_command(bench_bundles, tmp_path, capsys):
    _dist_copy(tmp_path, bench_bundles["wNa8o8"], "tiny-wNa8o8-text", {"model": "tiny", "scheme": "wNa8o8",
                                                                        "text_only": True})
    code = main(["bench", "--device", "host", "--model", "tiny", "--text-only", "--dist", str(tmp_path / "dist"),
                 "--output", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert "no fp16 baseline for tiny" in err and "edgekit build tiny --scheme fp16 --text-only" in err


def test_bad_threshold_exit_2_before_running(bench_bundles, tmp_path, capsys):
    code = main(["bench", "--device", "host", "--bundle", str(bench_bundles["wNa8o8"]), "--baseline",
                 str(bench_bundles["fp16"]), "--fail-on", "decode_tps<<3", "--output", str(tmp_path / "r")])
    assert code == 2 and "bad threshold" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_failing_run_keeps_partial_traces_exit_3(bench_bundles, tmp_path, capsys):
    cand = _dist_copy(tmp_path, bench_bundles["wNa8o8"], "tiny-wNa8o8-text",
                      {"model": "tiny", "scheme": "wNa8o8", "text_only": True})
    # a bundle whose header and sections pass the local check but whose model is garbage: the runner must fail
    bad = _dist_copy(tmp_path, bench_bundles["fp16"], "tiny-fp16-text")
    (bad.parent / "manifest.json").unlink()  # the manifest's sha256 would refuse the changed file before the run
    from edgekit.runtime.litertlm_file import read_header

    sec = next(s for s in read_header(bad).sections if s.name == "tf_lite_prefill_decode")
    with open(bad, "r+b") as f:
        f.seek(sec.begin + 8)  # after the flatbuffer's root offset and TFL3 identifier
        f.write(os.urandom(min(4096, sec.size - 8)))
    code = main(["bench", "--device", "host", "--model", "tiny", "--text-only", "--dist", str(tmp_path / "dist"),
                 "--reps", "3", *FAST, "--no-profile-thresholds", "--fail-on", "decode_tps:-5%",
                 "--junit", str(tmp_path / "j.xml"), "--output", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "run 1 (baseline warmup #0" in err and "partial" in err
    folder = next(d for d in (tmp_path / "results").iterdir() if not d.name.startswith("."))
    r = load_result(folder)
    assert r.status == "failed" and r.failed_run == 1
    assert [x.status for x in r.runs] == ["ok", "failed"]
    failed = r.runs[1]
    assert failed.error and (folder / failed.trace_dir / "runner.err").is_file()
    assert (folder / "summary.md").is_file() and "FAILED" in (folder / "summary.md").read_text()
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite.find("properties/property").get("value") == "3"


@pytest.mark.slow
def test_no_baseline_bench_applies_budgets_only(bench_bundles, tmp_path, capsys):
    code = main(["bench", "--device", "host", "--bundle", str(bench_bundles["wNa8o8"]), "--no-baseline",
                 "--reps", "3", *FAST, "--fail-on", "peak_rss_mb<=1", "--output", str(tmp_path / "results")])
    cap = capsys.readouterr()
    assert code == 1  # the command-line budget is broken; the profile's relative thresholds are not applied
    assert "relative thresholds are not applied" in cap.err
    from edgekit.devices.profiles import load_profile
    from edgekit.results.gate import parse_threshold

    for b in load_profile("host").gate.budget:  # the host profile's budgets still are
        assert parse_threshold(b).text in cap.out
    folder = next((tmp_path / "results").iterdir())
    r = load_result(folder)
    assert r.roles() == ("candidate",) and len(r.measured("candidate")) == 3
    assert "no baseline in this result" in (folder / "summary.md").read_text()


@pytest.mark.slow
def test_bench_built_bundle_moved_to_a_renamed_folder(bench_bundles, tmp_path, capsys):
    """A real built bundle copied (with its manifest.json) into a folder whose name does not follow
    ``<model>-<scheme>[-text]``: bench takes its identity from the manifest's ``model.preset`` /
    ``scheme.name`` / ``build.text_only`` and finds the fp16 baseline of that model in --dist."""
    from edgekit.results.manifest import MANIFEST_FILE, parse_bundle_name

    src = bench_bundles["wNa8o8"]
    moved = tmp_path / "moved" / "release_candidate_7"
    moved.mkdir(parents=True)
    cand = moved / "model.litertlm"
    shutil.copyfile(src, cand)
    shutil.copyfile(src.parent / MANIFEST_FILE, moved / MANIFEST_FILE)
    assert parse_bundle_name(moved.name) == (None, None, None)  # the folder name tells nothing
    _dist_copy(tmp_path, bench_bundles["fp16"], "tiny-fp16-text")
    code = main(["bench", "--device", "host", "--bundle", str(cand), "--dist", str(tmp_path / "dist"),
                 "--reps", "2", "--warmup", "0", "--prefill", "8", "--decode", "4", "--no-profile-thresholds",
                 "--output", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 0, err
    folder = next(d for d in (tmp_path / "results").iterdir() if not d.name.startswith("."))
    r = load_result(folder)
    c, b = r.bundles["candidate"], r.bundles["baseline"]
    assert (c.model, c.scheme, c.text_only, c.label) == ("tiny", "wNa8o8", True, "tiny-wNa8o8-text")
    assert c.path == str(cand) and b.label == "tiny-fp16-text"
    assert b.path == str(tmp_path / "dist" / "tiny-fp16-text" / bench_bundles["fp16"].name)
    # the manifest is carried into the result whole, as the builder wrote it
    assert dict(c.record.to_dict()) == json.loads((moved / MANIFEST_FILE).read_text())
    assert len(r.measured("candidate")) == len(r.measured("baseline")) == 2 and len(r.runs) == 4
    assert all(x.ok and x.phase == "measure" for x in r.runs)
