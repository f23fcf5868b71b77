"""compare(): verdicts, Mann-Whitney p-values (recomputed with scipy), phrasing, comparability."""

from __future__ import annotations

import pytest
from scipy.stats import mannwhitneyu

from edgekit.errors import NotComparable
from edgekit.results.compare import (
    BETTER, INSUFFICIENT, NOT_COMPARABLE, NOT_SIGNIFICANT, WORSE, compare_metric, compare_result, compare_results,
    describe_change, min_p_value,
)
from edgekit.results.records import load_result
from fixtures_results import FIXTURES


def R(name):
    return load_result(FIXTURES / name)


def test_clear_win_is_better_with_scipy_p_values():
    r = R("synth-pixel8-wna8o8-vs-fp16")
    cmp = compare_result(r)
    d = cmp.get("decode_tps")
    c, b = r.samples("candidate", "decode_tps"), r.samples("baseline", "decode_tps")
    assert d.p_value == pytest.approx(mannwhitneyu(c, b, alternative="two-sided").pvalue)
    assert d.verdict == BETTER
    assert d.ratio == pytest.approx(sorted(c)[2] / sorted(b)[2])
    assert d.phrase == f"{d.ratio:.2f}".rstrip("0").rstrip(".") + "x faster decode"
    a = cmp.get("peak_anon_mb")
    assert a.verdict == BETTER and a.change < -0.3
    assert a.phrase == f"{a.change * 100:+.0f}% peak anonymous memory"


def test_reversed_roles_are_worse():
    cmp = compare_result(R("synth-pixel8-fp16-vs-wna8o8"))
    assert cmp.get("decode_tps").verdict == WORSE
    assert "slower decode" in cmp.get("decode_tps").phrase
    assert cmp.get("peak_anon_mb").verdict == WORSE


def test_rerun_not_significant():
    cmp = compare_results(R("synth-pixel8-wna8o8-vs-fp16"), R("synth-pixel8-wna8o8-vs-fp16-rerun"))
    assert cmp.get("decode_tps").verdict == NOT_SIGNIFICANT
    assert cmp.get("decode_tps").phrase.startswith("not significant")
    # 32 token stamps per run cannot give a p99 (100 needed): that one metric is insufficient
    assert cmp.get("token_p99_ms").verdict == INSUFFICIENT and "at least 100 needed" in cmp.get("token_p99_ms").note
    assert cmp.summary_line() == "no significant change (1 metric with insufficient data)"


def test_three_reps_insufficient():
    assert min_p_value(3, 3) == pytest.approx(0.1)
    assert min_p_value(4, 4) < 0.05
    cmp = compare_result(R("synth-pixel8-3reps"))
    assert all(m.verdict == INSUFFICIENT for m in cmp.metrics)
    assert "smallest possible p-value" in cmp.get("decode_tps").note


def test_fewer_than_three_samples_insufficient():
    m = compare_metric("decode_tps", [10.0, 11.0], [5.0, 6.0, 5.5, 5.2])
    assert m.verdict == INSUFFICIENT and m.p_value is None


def test_constant_equal_samples_not_significant():
    m = compare_metric("peak_anon_mb", [100.0] * 5, [100.0] * 5)
    assert m.verdict == NOT_SIGNIFICANT and m.p_value == 1.0


def test_direction_lower_is_better():
    m = compare_metric("ttft_ms", [100, 101, 99, 100, 102], [150, 151, 149, 152, 150])
    assert m.verdict == BETTER
    m = compare_metric("ttft_ms", [150, 151, 149, 152, 150], [100, 101, 99, 100, 102])
    assert m.verdict == WORSE


def test_phrases():
    assert describe_change("decode_tps", 2.1) == "2.1x faster decode"
    assert describe_change("decode_tps", 0.5) == "2x slower decode"
    assert describe_change("peak_anon_mb", 0.54) == "-46% peak anonymous memory"
    assert describe_change("ttft_ms", 1.032) == "+3.2% time to first token"


def test_mismatched_model_refused_unless_allowed():
    r = R("synth-pixel8-mismatch")
    with pytest.raises(NotComparable, match="bundle model: e2b-text vs e4b-text"):
        compare_result(r)
    cmp = compare_result(r, allow_mismatch=True)
    assert cmp.mismatches and cmp.get("decode_tps").verdict == BETTER
    marked = compare_result(r, raise_on_mismatch=False)
    assert all(m.verdict == NOT_COMPARABLE for m in marked.metrics)


def test_runtime_version_mismatch_between_results():
    a, b = R("synth-pixel8-wna8o8-vs-fp16"), R("synth-pixel8-runtime-0.19")
    with pytest.raises(NotComparable, match="runtime versions"):
        compare_results(a, b)
    cmp = compare_results(b, a, allow_mismatch=True)
    assert cmp.get("peak_anon_mb").verdict == WORSE  # 0.19 fixture doubled anonymous memory
