"""The streamed route's memory estimate: which stages it counts (the figures themselves are
measured and compared in scripts/bench, docs/build-memory.md)."""

from __future__ import annotations

from pathlib import Path

from edgekit.builder import pipeline as pl
from edgekit.models.presets import get_preset
from edgekit.schemes import load_scheme


def _est(model: str, scheme: str, avail: int, monkeypatch, text_only: bool = True):
    monkeypatch.setattr(pl, "mem_available", lambda: avail)
    p = get_preset(model)
    return pl.estimate(p, 1, load_scheme(scheme, p), text_only, Path("/tmp"), True, Path("/tmp"), streamed=True)


def test_interpreter_verify_counts_only_when_it_would_run(monkeypatch):
    big, small = 64 * 2**30, 3 * 2**30
    e_big = _est("e4b", "wNa8o8", big, monkeypatch)
    e_small = _est("e4b", "wNa8o8", small, monkeypatch)
    # with room the interpreter check runs and is the largest stage (sections + packed weights)
    assert e_big.peak_rss_bytes > 3.5e9 + e_big.bundle_bytes
    # without room it is skipped (as the build skips it), so the estimate drops to the other stages
    assert e_small.peak_rss_bytes < e_big.peak_rss_bytes


def test_fp16_estimate_is_the_engine_child_and_grows_with_the_model(monkeypatch):
    avail = 20 * 2**30
    e2b = _est("e2b", "fp16", avail, monkeypatch)
    assert e2b.peak_rss_bytes == int(1.6 * e2b.bundle_bytes)  # interpreter skipped: 5x a 9 GB bundle
    e4b_big = _est("e4b", "fp16", 64 * 2**30, monkeypatch)
    assert e4b_big.peak_stage == "verify (engine)" and e4b_big.peak_rss_bytes > e2b.peak_rss_bytes


def test_an_engine_check_that_cannot_fit_is_not_counted(monkeypatch):
    # full E4B fp16 (~16 GB, a 9.2 GB prefill/decode section): the engine would need ~14.3 GB anonymous
    # (float16 weights unpacked to float32); with 12 GiB the build skips that check and names why, so the
    # estimate does not count it
    e4b = _est("e4b", "fp16", 12 * 2**30, monkeypatch)
    assert "verify (engine)" not in e4b.stages
    # full E2B fp16 (4.5 GB section, ~7 GB anonymous in the engine) still runs it
    assert "verify (engine)" in _est("e2b", "fp16", 12 * 2**30, monkeypatch).stages


def test_the_engines_mapped_weight_cache_counts_in_the_rss_not_in_the_need(monkeypatch):
    # 22 GiB available on a 23.5 GiB machine: full E4B fp16's engine check runs; the tree's RSS is bounded
    # by the machine (the float32 weight cache is a mapped file, its pages reclaimed); the need is the
    # builder + the engine's anonymous memory, so the build is not refused
    monkeypatch.setattr(pl, "mem_total", lambda: int(23.5 * 2**30))
    e4b = _est("e4b", "fp16", 22 * 2**30, monkeypatch)
    assert e4b.stages["verify (engine)"] == int(1.6 * e4b.bundle_bytes) < 23.5 * 2**30
    assert e4b.reclaimable["verify (engine)"] > 0
    assert e4b.need_bytes < e4b.peak_rss_bytes and e4b.need_bytes < 22 * 2**30
    # on a 20 GiB machine the RSS cannot pass what it has
    monkeypatch.setattr(pl, "mem_total", lambda: 20 * 2**30)
    assert _est("e4b", "fp16", 19 * 2**30, monkeypatch).stages["verify (engine)"] == 20 * 2**30
    d = e4b.to_dict()
    assert d["need_bytes"] == e4b.need_bytes and d["need_stage"] == e4b.need_stage
    # integer weights: nothing reclaimable, the need is the peak
    w = _est("e4b", "wNa8o8", 22 * 2**30, monkeypatch)
    assert w.reclaimable == {} and w.need_bytes == w.peak_rss_bytes and w.need_stage == w.peak_stage


def test_multimodal_adds_the_tower_child(monkeypatch):
    avail = 3 * 2**30  # no interpreter term, so the tower child's share is visible
    t = _est("e2b", "wNa8o8", avail, monkeypatch, text_only=True)
    m = _est("e2b", "wNa8o8", avail, monkeypatch, text_only=False)
    assert m.peak_rss_bytes > t.peak_rss_bytes


def test_each_stage_is_named_and_the_peak_is_the_largest(monkeypatch):
    e = _est("e4b", "fp16", 64 * 2**30, monkeypatch)
    assert {"export", "fill", "verify (engine)"} <= set(e.stages)
    assert e.peak_rss_bytes == max(e.stages.values()) == e.stages[e.peak_stage]
    assert e.to_dict()["peak_stage"] == e.peak_stage


def test_quality_against_the_fp16_sibling_counts(monkeypatch):
    # 20 GiB: the interpreter route (both bundles, the baseline's fp16 weights as float32) does not fit,
    # the engine children do
    monkeypatch.setattr(pl, "mem_available", lambda: 20 * 2**30)
    p = get_preset("e2b")
    sch = load_scheme("wNa8o8", p)
    args = (p, 1, sch, True, Path("/tmp"), True, Path("/tmp"))
    without = pl.estimate(*args, streamed=True)
    with_q = pl.estimate(*args, streamed=True, quality_baseline_bytes=10 * 10**9)
    assert "quality" not in without.stages
    assert with_q.stages["quality"] == int(1.6 * 10 * 10**9)  # the fp16 engine child, as the fp16 verify
    assert with_q.peak_stage == "quality" and with_q.peak_rss_bytes > without.peak_rss_bytes
    assert with_q.reclaimable["quality"] > 0 and with_q.need_bytes < with_q.peak_rss_bytes
    # full E4B against its 16.3 GB fp16 sibling with 30 GiB available on a 31 GiB machine: the sibling's
    # engine child maps its float32 weight cache (RSS to the machine's size), but what must be available is
    # the builder + its anonymous memory, so the default build is not refused (it was, at 24.2 GiB)
    monkeypatch.setattr(pl, "mem_available", lambda: 30 * 2**30)
    monkeypatch.setattr(pl, "mem_total", lambda: 31 * 2**30)
    p4 = get_preset("e4b")
    args4 = (p4, 1, load_scheme("wNa8o8", p4), True, Path("/tmp"), True, Path("/tmp"))
    e4b = pl.estimate(*args4, streamed=True, quality_baseline_bytes=16_273_348_672)
    assert e4b.stages["quality"] == int(1.6 * 16_273_348_672) and e4b.need_stage == "quality"
    assert e4b.need_bytes < 20 * 2**30
    # with 22.9 GiB available (a 23.5 GiB machine) the sibling's scoring would not stay resident (its
    # ~24.8 GB of float32 cache + anonymous memory): the build skips the stage, the estimate does not count it
    monkeypatch.setattr(pl, "mem_available", lambda: int(22.9 * 2**30))
    assert "quality" not in pl.estimate(*args4, streamed=True, quality_baseline_bytes=16_273_348_672).stages
    # 6 GiB: the fp16 baseline cannot run in the engine either (~7 GB anonymous), the build skips the
    # stage: not counted
    monkeypatch.setattr(pl, "mem_available", lambda: 6 * 2**30)
    assert "quality" not in pl.estimate(*args, streamed=True, quality_baseline_bytes=10 * 10**9).stages


def test_a_scored_baseline_leaves_only_the_candidates_engine_child(monkeypatch):
    """Full E4B against its fp16 sibling whose scores are cached: the quality stage is the candidate's
    child, no longer the fp16 child that maps the machine's memory."""
    monkeypatch.setattr(pl, "mem_available", lambda: 30 * 2**30)
    monkeypatch.setattr(pl, "mem_total", lambda: 31 * 2**30)
    p4 = get_preset("e4b")
    args = (p4, 1, load_scheme("wNa8o8", p4), True, Path("/tmp"), True, Path("/tmp"))
    fresh = pl.estimate(*args, streamed=True, quality_baseline_bytes=16_273_348_672)
    scored = pl.estimate(*args, streamed=True, quality_baseline_bytes=16_273_348_672, baseline_scored=True)
    assert scored.stages["quality"] == int(pl.BUILDER_WAIT_RSS + 1.6 * scored.bundle_bytes)
    assert "quality" not in scored.reclaimable and scored.stages["quality"] < fresh.stages["quality"]
    assert scored.peak_rss_bytes < 20 * 2**30 < fresh.peak_rss_bytes


def test_an_fp16_build_that_scores_itself_counts_a_second_engine_child(monkeypatch):
    monkeypatch.setattr(pl, "mem_available", lambda: 30 * 2**30)
    monkeypatch.setattr(pl, "mem_total", lambda: 31 * 2**30)
    p4 = get_preset("e4b")
    args = (p4, 1, load_scheme("fp16", p4), True, Path("/tmp"), True, Path("/tmp"))
    plain = pl.estimate(*args, streamed=True)
    scoring = pl.estimate(*args, streamed=True, scores_baseline=True)
    assert "quality" not in plain.stages
    assert scoring.stages["quality"] == scoring.stages["verify (engine)"]
    assert scoring.reclaimable["quality"] == scoring.reclaimable["verify (engine)"]
    assert scoring.need_bytes == plain.need_bytes  # the same child again: no more memory needed
    # 22 GiB available: its scoring would not stay resident, so it is not scored (nor counted)
    monkeypatch.setattr(pl, "mem_available", lambda: 22 * 2**30)
    assert "quality" not in pl.estimate(*args, streamed=True, scores_baseline=True).stages
    # tiny: its candidates' quality runs in the interpreter, so the baseline is not scored
    t = get_preset("tiny")
    assert "quality" not in pl.estimate(t, 1, load_scheme("fp16", t), True, Path("/tmp"), True, Path("/tmp"),
                                        streamed=True, scores_baseline=True).stages


def test_cached_towers_run_no_tower_child(monkeypatch):
    avail = 3 * 2**30
    monkeypatch.setattr(pl, "mem_available", lambda: avail)
    p = get_preset("e2b")
    sch = load_scheme("wNa8o8", p)
    args = (p, 1, sch, False, Path("/tmp"), True, Path("/tmp"))
    cold = pl.estimate(*args, streamed=True)
    audio_cached = pl.estimate(*args, streamed=True, towers_cached=("audio",))
    both = pl.estimate(*args, streamed=True, towers_cached=("vision", "audio"))
    assert cold.stages["towers"] > audio_cached.stages["towers"]  # only the vision child is left
    assert "towers" not in both.stages


def test_refusal_names_the_stage_and_the_shortfall(tmp_path, monkeypatch, capsys):
    from edgekit.cli.main import main

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    # 3 GiB: the engine check is skipped (cannot fit), the stand-in export child alone needs more
    monkeypatch.setattr(pl, "mem_available", lambda: 3 * 2**30)
    code = main(["build", "e4b", "--random-weights", "--text-only", "--scheme", "fp16",
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 8, err
    line = [x for x in err.splitlines() if x.startswith("error:")][0]
    assert "GB of memory at its export stage, " in line and "more than the 3.0 GB available" in line, line
    assert not (tmp_path / "cache" / "checkpoints").exists()  # refused before making weights
