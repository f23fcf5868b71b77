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
    e2b, e4b = _est("e2b", "fp16", avail, monkeypatch), _est("e4b", "fp16", avail, monkeypatch)
    assert e2b.peak_rss_bytes == int(1.6 * e2b.bundle_bytes)  # interpreter skipped: 3x a 9 GB bundle
    assert e4b.peak_rss_bytes > avail  # refused with 20 GiB available, before any work


def test_multimodal_adds_the_tower_child(monkeypatch):
    avail = 3 * 2**30  # no interpreter term, so the tower child's share is visible
    t = _est("e2b", "wNa8o8", avail, monkeypatch, text_only=True)
    m = _est("e2b", "wNa8o8", avail, monkeypatch, text_only=False)
    assert m.peak_rss_bytes > t.peak_rss_bytes
