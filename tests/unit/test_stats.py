"""Statistics: median/mean/stddev/CV, t-interval (checked against scipy), percentiles, hygiene warnings."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest
from scipy import stats as st

from edgekit.results.records import CpuFreq, Thermal, load_result
from edgekit.results.stats import hygiene_warnings, percentile, summarize
from fixtures_results import FIXTURES


def test_summary_matches_reference():
    xs = [21.0, 22.5, 19.8, 23.1, 20.4]
    s = summarize(xs)
    assert s.n == 5
    assert s.median == statistics.median(xs)
    assert s.mean == pytest.approx(np.mean(xs))
    assert s.stddev == pytest.approx(np.std(xs, ddof=1))
    assert s.cv == pytest.approx(np.std(xs, ddof=1) / np.mean(xs))
    lo, hi = st.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=st.sem(xs))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_summary_small_samples():
    assert summarize([]).n == 0 and summarize([]).median is None
    one = summarize([3.0])
    assert one.median == 3.0 and one.stddev is None and one.ci_low is None


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    xs = list(np.random.default_rng(0).normal(20, 3, 37))
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_no_warnings_on_clean_fixture():
    r = load_result(FIXTURES / "synth-pixel8-wna8o8-vs-fp16")
    # steady numbers: the only warning is the candidate's quality (top-1 0.931 < the healthy 0.99)
    assert hygiene_warnings(r) == [
        "quality: top-1 agreement with fp16 is 0.931, below the 0.99 that ai-edge-quantizer's LLM evaluation "
        "guide calls healthy for int8 (below 0.95: investigate)"]


def test_cv_and_throttling_warnings():
    r = load_result(FIXTURES / "synth-pixel8-wna8o8-vs-fp16")
    runs = []
    for x in r.runs:
        if x.role == "candidate" and x.phase == "measure":
            m = dict(x.metrics)
            m["decode_tps"] = m["decode_tps"] * (1.5 if x.index % 2 else 0.6)  # large spread
            x = dataclasses.replace(x, metrics=m)
        if x.phase == "measure":
            # heat up by 4 C per run and lose clock speed at the end
            hot = Thermal(38.0 + x.order * 4, 40.0 + x.order * 4, 39.0 + x.order * 4, "cpu")
            f = 2_900_000 if x.order < 10 else 1_800_000
            x = dataclasses.replace(x, thermal=hot, cpufreq=(CpuFreq(0, f, f, f, f),))
        runs.append(x)
    w = hygiene_warnings(r.with_runs(runs))
    cv = [s for s in w if s.startswith("candidate: CV above 10%")]
    assert len(cv) == 1 and "decode_tps" in cv[0] and "peak_anon_mb" not in cv[0]
    assert any(s.startswith("thermal:") for s in w)
    assert any(s.startswith("cpufreq:") for s in w)
