"""Result records: immutability, JSON round trip, schema version check, warmups kept apart."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgekit.errors import ConfigError, UsageError
from edgekit.results.metrics import METRICS, QUALITY_METRICS, RUN_METRICS
from edgekit.results.records import SCHEMA_VERSION, BenchResult, Run, load_result, save_result
from fixtures_results import FIXTURES


def _load(name: str) -> BenchResult:
    return load_result(FIXTURES / name / "result.json")


def test_every_metric_has_unit_and_direction():
    assert set(RUN_METRICS) >= {"init_ms", "ttft_ms", "prefill_tps", "decode_tps", "token_p50_ms", "token_p90_ms",
                                "token_p99_ms", "peak_rss_mb", "peak_anon_mb", "peak_file_mb", "peak_pss_mb"}
    assert set(QUALITY_METRICS) == {"ppl_ratio", "top1_agreement", "kl_mean"}
    for m in METRICS.values():
        assert m.direction in ("higher", "lower")
        assert m.description
    assert METRICS["decode_tps"].higher_is_better and not METRICS["peak_anon_mb"].higher_is_better
    assert METRICS["top1_agreement"].higher_is_better and not METRICS["ppl_ratio"].higher_is_better


def test_round_trip_is_lossless(tmp_path):
    r = _load("synth-pixel8-wna8o8-vs-fp16")
    p = save_result(r, tmp_path / "result.json")
    r2 = load_result(p)
    assert r2 == r
    stored = json.loads((FIXTURES / "synth-pixel8-wna8o8-vs-fp16" / "result.json").read_text())
    # a result stored before bench modes existed reads back as cold (one process per run)
    assert r2.settings.mode == "cold" and "mode" not in stored["settings"]
    assert r2.to_dict() == stored | {"metrics": r2.to_dict()["metrics"], "settings": stored["settings"] | {"mode": "cold"}}


def test_records_are_immutable():
    r = _load("synth-pixel8-wna8o8-vs-fp16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = "failed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.runs[0].metrics["decode_tps"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        r.bundles["candidate"].manifest["x"] = 1  # type: ignore[index]


def test_warmups_never_in_samples():
    r = _load("synth-pixel8-wna8o8-vs-fp16")
    warm = r.warmups("candidate")
    assert len(warm) == r.settings.warmup == 1
    meas = r.measured("candidate")
    assert len(meas) == r.settings.reps == 5
    assert all(x.phase == "measure" for x in meas)
    vals = r.samples("candidate", "decode_tps")
    assert vals == [x.value("decode_tps") for x in meas]
    assert warm[0].value("decode_tps") not in vals


def test_failed_runs_excluded_from_samples():
    r = _load("synth-pixel8-wna8o8-vs-fp16")
    runs = list(r.runs)
    i = next(i for i, x in enumerate(runs) if x.role == "candidate" and x.phase == "measure")
    runs[i] = dataclasses.replace(runs[i], status="failed", error="boom")
    r2 = r.with_runs(runs)
    assert len(r2.samples("candidate", "decode_tps")) == 4


def test_quality_read_from_manifest():
    r = _load("synth-pixel8-wna8o8-vs-fp16")
    assert r.samples("candidate", "top1_agreement") == [r.bundles["candidate"].manifest["quality"]["top1_agreement"]]


def test_unknown_schema_version_refused(tmp_path):
    d = json.loads((FIXTURES / "synth-pixel8-3reps" / "result.json").read_text())
    d["schema"] = SCHEMA_VERSION + 1
    p = tmp_path / "result.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=f"schema {SCHEMA_VERSION + 1}"):
        load_result(p)


def test_not_a_result_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="not an edgekit bench result"):
        load_result(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_result(p)
    with pytest.raises(UsageError):
        load_result(tmp_path / "missing.json")


def test_bad_role_refused():
    with pytest.raises(ConfigError):
        Run(role="other", phase="measure", index=0, order=0)


def test_csv_view_matches_records():
    import csv
    import io

    from edgekit.report.csv import render_csv

    r = _load("synth-pixel8-wna8o8-vs-fp16")
    rows = list(csv.DictReader(io.StringIO(render_csv(r))))
    assert len(rows) == len(r.runs)
    for row, run in zip(rows, sorted(r.runs, key=lambda x: x.order)):
        assert (row["role"], row["phase"], int(row["index"])) == (run.role, run.phase, run.index)
        assert float(row["decode_tps"]) == run.value("decode_tps")
        assert float(row["peak_anon_mb"]) == run.value("peak_anon_mb")


def test_one_registry_serves_bench_eval_and_sweep():
    from edgekit.results.metrics import EVAL_METRICS, REGISTRY

    # a bench result lists the run and quality metrics; eval's record the quality and detail figures
    assert set(METRICS) == {n for n, m in REGISTRY.items() if m.source in ("run", "quality")}
    assert set(QUALITY_METRICS) <= set(EVAL_METRICS) and not set(RUN_METRICS) & set(EVAL_METRICS)
    assert {"ppl_candidate", "ppl_baseline", "kl_max", "top1_accuracy_candidate"} <= set(EVAL_METRICS)
    for m in REGISTRY.values():
        assert m.direction in ("higher", "lower") and m.description and m.label
    with pytest.raises(UsageError):
        from edgekit.results.metrics import metric

        metric("speed")


def test_a_malformed_metric_table_is_refused(tmp_path):
    from edgekit.results import metrics

    bad = tmp_path / "metrics.toml"
    bad.write_text('[speed]\nunit = "x"\ndirection = "faster"\nlabel = "s"\nsource = "run"\ndescription = "d"\n')
    with pytest.raises(ValueError, match="malformed metric"):
        metrics._load(bad)
    bad.write_text('[speed]\nunit = "x"\ndirection = "higher"\nlabel = "s"\nsource = "run"\n')
    with pytest.raises((ValueError, KeyError)):
        metrics._load(bad)
    assert [m.name for m in metrics._load()] == list(metrics.REGISTRY)
