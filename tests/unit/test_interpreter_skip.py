"""One decision for "does the in-process interpreter fit": the verify stage and the estimate ask
``_verify_interpreter_skip``, the quality stage asks ``_quality_interpreter_skip``; both size the
need with ``interpreter_need`` (float16 weights held as float32 per signature) against 0.8 x MemAvailable."""

from __future__ import annotations

from pathlib import Path

from edgekit.builder import pipeline as pl
from edgekit.models.presets import get_preset
from edgekit.schemes import load_scheme

GB = 10**9


def test_need_counts_float16_weights_five_times():
    # measured: e2b width/4 fp16 verify interpreter, 1.82 GB bundle -> 10.8 GB peak (~1.4 GB runtime + 5.2x)
    assert pl.interpreter_need(GB, False) == GB
    assert pl.interpreter_need(GB, True) == 5 * GB


def test_verify_skip_counts_fp16_weights_only_for_a_float16_float_scheme(monkeypatch):
    monkeypatch.setattr(pl, "mem_available", lambda: 10 * GB)  # the interpreter may hold 8 GB
    p = get_preset("e2b")
    fp16, wna8o8 = load_scheme("fp16", p), load_scheme("wNa8o8", p)
    assert pl._verify_interpreter_skip(2 * GB, fp16)  # 10 GB held
    assert pl._verify_interpreter_skip(3 * GB, wna8o8) is None  # 3 GB
    assert pl._verify_interpreter_skip(1 * GB, fp16) is None  # 5 GB
    assert "available" in pl._verify_interpreter_skip(9 * GB, wna8o8)


def test_quality_skip_holds_the_candidate_and_the_float32_baseline(monkeypatch):
    monkeypatch.setattr(pl, "mem_available", lambda: 10 * GB)
    assert pl._quality_interpreter_skip(GB, GB) is None  # 1 + 5 GB
    assert pl._quality_interpreter_skip(4 * GB, GB)  # 4 + 5 GB
    monkeypatch.setattr(pl, "mem_available", lambda: None)  # unknown: never skipped
    assert pl._quality_interpreter_skip(300 * GB, 300 * GB) is None


def test_the_estimate_asks_the_verify_decision_with_the_predicted_bundle(monkeypatch):
    p = get_preset("e4b")
    sch = load_scheme("wNa8o8", p)
    asked = []
    peaks = {}
    for why in (None, "too big"):
        monkeypatch.setattr(pl, "_verify_interpreter_skip", lambda b, s, why=why: asked.append((b, s)) or why)
        est = pl.estimate(p, 1, sch, True, Path("/tmp"), True, Path("/tmp"), streamed=True)
        peaks[why] = est.peak_rss_bytes
    assert asked == [(est.bundle_bytes, sch)] * 2
    assert peaks[None] > peaks["too big"]  # the interpreter term counted only when verify would run it


def test_engine_need_and_skip(monkeypatch):
    # measured peaks of the engine child's anonymous memory: full E2B fp16 7.0 GB for a 4.56 GB
    # prefill/decode section, full E4B fp16 11.4 GB for 9.2 GB (its float32 weight cache, 18.6 GB, is a
    # mapped file); wNa8o8 1.43 GB for 2.13 GB
    assert pl.engine_need(10 * GB, 4 * GB, True) == int(1.55 * 4 * GB)
    assert pl.engine_need(2 * GB, GB, False) == 2 * GB
    assert pl.engine_cache_need(9 * GB, True) == int(2.05 * 9 * GB) and pl.engine_cache_need(GB, False) == 0
    monkeypatch.setattr(pl, "mem_available", lambda: 20 * GB)
    assert pl._engine_skip(10 * GB, 4.56 * GB, True) is None  # full E2B fp16 runs in 20 GB
    assert pl._engine_skip(16 * GB, 9.2 * GB, True) is None  # and full E4B fp16 (14.3 GB anonymous)
    assert pl._engine_skip(16 * GB, 9.2 * GB, False) is None  # the same bytes quantized: no float32 copy
    monkeypatch.setattr(pl, "mem_available", lambda: 12 * GB)
    why = pl._engine_skip(16 * GB, 9.2 * GB, True)  # not in 12 GB
    assert pl._gb(int(1.55 * 9.2 * GB)) in why and "float16 weights unpacked to float32" in why and "more memory" in why
    monkeypatch.setattr(pl, "mem_available", lambda: None)  # unknown: never skipped on memory
    assert pl._engine_skip(300 * GB, 300 * GB, False) is None


def test_engine_skip_names_a_temporary_folder_too_small_for_the_weight_cache(tmp_path, monkeypatch):
    import collections

    monkeypatch.setattr(pl, "mem_available", lambda: 64 * GB)
    monkeypatch.setattr(pl.tempfile, "gettempdir", lambda: str(tmp_path))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(pl.shutil, "disk_usage", lambda p: usage(100 * GB, 90 * GB, 10 * GB))
    why = pl._engine_skip(16 * GB, 9.2 * GB, True)  # an 18.9 GB float32 cache, 10 GB free
    assert why and "weight cache" in why and str(tmp_path) in why and "TMPDIR" in why
    assert pl._engine_skip(16 * GB, 4 * GB, True) is None  # 8.2 GB fits
    assert pl._engine_skip(16 * GB, 9.2 * GB, False) is None  # integer weights: no float32 cache


def test_quality_stage_skips_a_baseline_the_engine_cannot_hold(tmp_path, monkeypatch):
    """Neither route fits: the quality record says why, and no scoring child is started."""
    from edgekit.builder import quality_engine as qe

    cand, base = tmp_path / "cand.litertlm", tmp_path / "base.litertlm"
    for f, size in ((cand, 2 * GB), (base, 15 * GB)):  # sparse: only the sizes are read
        with open(f, "wb") as fh:
            fh.truncate(size)
    monkeypatch.setattr(pl, "mem_available", lambda: 20 * GB)
    monkeypatch.setattr(qe, "evaluate_engine", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored")))
    res = pl._quality_against(pl._Stages(None), cand, base, "sha", "cand vs base")
    assert "more memory" in res["skipped"] and res["interpreter_skipped"]
    assert res["baseline"] == {"bundle": str(base), "sha256": "sha"}


def test_scoring_must_stay_resident(monkeypatch):
    """Engine scoring re-reads every weight per token: full E4B fp16 (9.2 GB prefill/decode section, a
    ~24.8 GB working set) is not scored with 23 GiB available; full E2B fp16 (4.56 GB, ~12.3 GB) is."""
    monkeypatch.setattr(pl, "mem_available", lambda: 23 * GB)
    why = pl._scoring_skip(16 * GB, 9.2 * GB, True)
    assert why and "re-read the cache" in why and pl._gb(pl.scoring_resident(int(9.2 * GB), True)) in why
    assert pl._engine_skip(16 * GB, 9.2 * GB, True) is None  # the few-token engine check still runs
    assert pl._scoring_skip(10 * GB, 4.56 * GB, True) is None
    assert pl._scoring_skip(16 * GB, 9.2 * GB, False) is None  # integer weights: no float32 cache
    monkeypatch.setattr(pl, "mem_available", lambda: 32 * GB)
    assert pl._scoring_skip(16 * GB, 9.2 * GB, True) is None
