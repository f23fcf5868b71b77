"""Pure comparison of a candidate against a baseline, metric by metric.

For every measured metric: medians, their ratio with the metric's direction, a
two-sided Mann-Whitney U test on the run samples, and a verdict
(:data:`BETTER`, :data:`WORSE`, :data:`NOT_SIGNIFICANT`, :data:`NOT_COMPARABLE`,
:data:`INSUFFICIENT`) with a human phrase ("2.1x faster decode",
"-46% peak anonymous memory", "not significant").

Before any number is compared the key settings of both sides are checked
(device identity, prompt lengths, threads, backend, runtime versions, bundle
model); a mismatch raises :class:`~edgekit.errors.NotComparable` unless
``allow_mismatch`` is given, in which case the mismatches are carried along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from edgekit.errors import InsufficientData, NotComparable
from edgekit.results.records import (
    BASELINE,
    CANDIDATE,
    BenchResult,
    BundleInfo,
    DeviceInfo,
    Settings,
)
from edgekit.results.metrics import METRICS, RUN_METRICS
from edgekit.results.stats import Summary, summarize

BETTER = "better"
WORSE = "worse"
NOT_SIGNIFICANT = "not significant"
NOT_COMPARABLE = "not comparable"
INSUFFICIENT = "insufficient data"
VERDICTS = (BETTER, WORSE, NOT_SIGNIFICANT, NOT_COMPARABLE, INSUFFICIENT)

ALPHA = 0.05
MIN_SAMPLES = 3


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a bundle's measured samples and how they were made."""

    label: str
    bundle: BundleInfo
    device: DeviceInfo
    settings: Settings
    runtime: Mapping[str, Any]
    samples: Mapping[str, tuple[float, ...]]
    missing: Mapping[str, str] = field(default_factory=dict)  # metric -> why some/all runs have no value
    runs: int = 0  # measured runs of this side (0: not known)

    def key(self) -> dict[str, Any]:
        """The settings that must be equal for numbers to be comparable."""
        rt = self.runtime or {}
        versions = rt.get("runtime") if isinstance(rt.get("runtime"), Mapping) else {}
        return {
            "device": self.device.key(),
            "prefill tokens": self.settings.prefill,
            "decode tokens": self.settings.decode,
            "threads": self.settings.threads,
            "backend": rt.get("backend") or self.settings.backend,
            "mode": getattr(self.settings, "mode", "cold"),
            "runtime versions": dict(versions or {}),
            "bundle model": self.bundle.model_key,
        }


def side_of(result: BenchResult, role: str = CANDIDATE, label: str | None = None) -> Side:
    if role not in result.bundles:
        raise InsufficientData(f"the result has no {role} bundle",
                               hint="bench with a baseline, or compare two result files")
    bundle = result.bundles[role]
    samples = {name: tuple(result.samples(role, name)) for name in RUN_METRICS}
    missing = {name: why for name in RUN_METRICS if (why := result.na_reason(role, name))}
    return Side(
        label=label or f"{role} {bundle.label}",
        bundle=bundle,
        device=result.device,
        settings=result.settings,
        runtime=result.runtime,
        samples=samples,
        missing=missing,
        runs=len(result.measured(role)),
    )


@dataclass(frozen=True)
class Mismatch:
    key: str
    candidate: Any
    baseline: Any

    def __str__(self) -> str:
        return f"{self.key}: {_short(self.candidate)} vs {_short(self.baseline)}"


def _short(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}={v[k]}" for k in sorted(v)) + "}"
    return str(v)


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    candidate: Summary
    baseline: Summary
    ratio: float | None  # candidate median / baseline median
    change: float | None  # ratio - 1
    p_value: float | None
    verdict: str
    phrase: str
    note: str | None = None  # why the verdict is insufficient / not comparable

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "unit": METRICS[self.metric].unit,
            "direction": METRICS[self.metric].direction,
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "ratio": self.ratio,
            "change": self.change,
            "p_value": self.p_value,
            "verdict": self.verdict,
            "phrase": self.phrase,
            "note": self.note,
        }


@dataclass(frozen=True)
class Comparison:
    candidate: str
    baseline: str
    metrics: tuple[MetricComparison, ...]
    mismatches: tuple[Mismatch, ...] = ()
    alpha: float = ALPHA
    candidate_key: Mapping[str, Any] = field(default_factory=dict)
    baseline_key: Mapping[str, Any] = field(default_factory=dict)

    @property
    def comparable(self) -> bool:
        return not self.mismatches

    def get(self, name: str) -> MetricComparison | None:
        for m in self.metrics:
            if m.metric == name:
                return m
        return None

    def headline(self) -> list[str]:
        """Significant changes, most important first (as listed in METRICS)."""
        return [m.phrase for m in self.metrics if m.verdict in (BETTER, WORSE)]

    def summary_line(self) -> str:
        """The headline, or why there is none."""
        head = self.headline()
        if head:
            return "; ".join(head)
        n_ins = sum(1 for m in self.metrics if m.verdict == INSUFFICIENT)
        if n_ins == len(self.metrics) and self.metrics:
            return "insufficient data to decide any change"
        if n_ins:
            return f"no significant change ({n_ins} metric{'' if n_ins == 1 else 's'} with insufficient data)"
        return "no significant change"

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "alpha": self.alpha,
            "comparable": self.comparable,
            "mismatches": [{"key": m.key, "candidate": m.candidate, "baseline": m.baseline}
                           for m in self.mismatches],
            "metrics": [m.to_dict() for m in self.metrics],
        }


def check_comparable(candidate: Side, baseline: Side) -> tuple[Mismatch, ...]:
    ck, bk = candidate.key(), baseline.key()
    return tuple(Mismatch(k, ck[k], bk[k]) for k in ck if ck[k] != bk.get(k))


def min_p_value(n1: int, n2: int) -> float:
    """Smallest two-sided p-value an exact Mann-Whitney U test can give for n1 vs n2 samples."""
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value; 1.0 when both samples are one and the same constant."""
    if len(set(x)) == 1 and set(x) == set(y):
        return 1.0
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(list(x), list(y), alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def _trim(x: float) -> str:
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return s


def describe_change(name: str, ratio: float | None) -> str:
    """'2.1x faster decode', '-46% peak anonymous memory', '+3.2% time to first token'."""
    m = METRICS[name]
    if ratio is None:
        return f"{m.label}: n/a"
    if m.unit == "tok/s":
        if ratio >= 1.0:
            return f"{_trim(ratio)}x faster {m.label}"
        if ratio <= 0:
            return f"{m.label} fell to 0"
        return f"{_trim(1.0 / ratio)}x slower {m.label}"
    change = (ratio - 1.0) * 100.0
    pct = f"{change:+.1f}%" if abs(change) < 10 else f"{change:+.0f}%"
    return f"{pct} {m.label}"


def compare_metric(name: str, cand: Sequence[float], base: Sequence[float], alpha: float = ALPHA,
                   cand_missing: str | None = None, base_missing: str | None = None,
                   cand_runs: int = 0, base_runs: int = 0) -> MetricComparison:
    """One metric's verdict. ``cand_missing`` / ``base_missing``: why runs of that side have
    no value (their figures rest on too few readings); ``cand_runs`` / ``base_runs``: the
    side's measured runs. A side is compared on the runs that have a value only when they
    are at least MIN_SAMPLES and at least half its runs (the others may be the short ones)."""
    m = METRICS[name]
    cs, bs = summarize(cand), summarize(base)
    ratio = None
    if cs.median is not None and bs.median not in (None, 0):
        ratio = cs.median / bs.median
    change = None if ratio is None else ratio - 1.0
    desc = describe_change(name, ratio)
    if cand_missing and cand_missing == base_missing:
        why = f"candidate and baseline: {cand_missing}"
    else:
        why = "; ".join(f"{side}: {text}" for side, text in (("candidate", cand_missing),
                                                              ("baseline", base_missing)) if text)
    if cs.n < MIN_SAMPLES or bs.n < MIN_SAMPLES or 2 * cs.n < cand_runs or 2 * bs.n < base_runs:
        if cs.n < MIN_SAMPLES or bs.n < MIN_SAMPLES:
            note = f"{cs.n} candidate and {bs.n} baseline samples; at least {MIN_SAMPLES} each are needed"
        else:
            note = (f"{cs.n} of {cand_runs} candidate and {bs.n} of {base_runs} baseline runs have a value; "
                    "at least half of each side's runs are needed")
        if why:
            note = why if (cs.n == 0 or bs.n == 0) else f"{why}; {note}"
        if cs.n == 0 or bs.n == 0:  # no change can be stated on a side with no valid figure
            ratio = change = None
            desc = describe_change(name, None)
        return MetricComparison(name, cs, bs, ratio, change, None, INSUFFICIENT, f"insufficient data ({desc})", note)
    floor = min_p_value(cs.n, bs.n)
    p = mann_whitney(cand, base)
    if floor > alpha:
        note = (f"with {cs.n} and {bs.n} runs the smallest possible p-value is {floor:.3f} > {alpha}; "
                "more --reps are needed to detect any change")
        return MetricComparison(name, cs, bs, ratio, change, p, INSUFFICIENT, f"insufficient data ({desc})", note)
    partial = f"compared on the runs with a value ({why})" if why else None
    if p >= alpha:
        return MetricComparison(name, cs, bs, ratio, change, p, NOT_SIGNIFICANT,
                                f"not significant ({desc}, p={p:.2f})", partial)
    diff = (cs.median - bs.median) if cs.median != bs.median else (cs.mean - bs.mean)
    improved = diff > 0 if m.higher_is_better else diff < 0
    verdict = BETTER if improved else WORSE
    return MetricComparison(name, cs, bs, ratio, change, p, verdict, desc, partial)


def compare(candidate: Side, baseline: Side, *, allow_mismatch: bool = False, alpha: float = ALPHA,
            metrics: Sequence[str] = RUN_METRICS, raise_on_mismatch: bool = True) -> Comparison:
    """Compare two sides.

    Differing key settings raise NotComparable unless ``allow_mismatch``; with
    ``raise_on_mismatch=False`` every metric gets the verdict "not comparable"
    instead (the gate uses this to still write one JUnit testcase per threshold).
    """
    mismatches = check_comparable(candidate, baseline)
    if mismatches and not allow_mismatch:
        message = (f"{candidate.label} and {baseline.label} differ in key settings: "
                   + "; ".join(str(m) for m in mismatches))
        if raise_on_mismatch:
            raise NotComparable(message)
        out = []
        for name in metrics:
            cs = summarize(candidate.samples.get(name, ()))
            bs = summarize(baseline.samples.get(name, ()))
            out.append(MetricComparison(name, cs, bs, None, None, None, NOT_COMPARABLE, NOT_COMPARABLE, message))
        return Comparison(candidate.label, baseline.label, tuple(out), mismatches, alpha,
                          candidate.key(), baseline.key())
    out = []
    for name in metrics:
        out.append(compare_metric(name, candidate.samples.get(name, ()), baseline.samples.get(name, ()), alpha,
                                  candidate.missing.get(name), baseline.missing.get(name),
                                  candidate.runs, baseline.runs))
    return Comparison(candidate.label, baseline.label, tuple(out), mismatches, alpha,
                      candidate.key(), baseline.key())


def compare_result(result: BenchResult, *, allow_mismatch: bool = False, alpha: float = ALPHA,
                   raise_on_mismatch: bool = True) -> Comparison:
    """Candidate vs baseline inside one bench result."""
    return compare(side_of(result, CANDIDATE), side_of(result, BASELINE), allow_mismatch=allow_mismatch,
                   alpha=alpha, raise_on_mismatch=raise_on_mismatch)


def compare_results(a: BenchResult, b: BenchResult, *, role: str = CANDIDATE, allow_mismatch: bool = False,
                    alpha: float = ALPHA, labels: tuple[str, str] | None = None,
                    raise_on_mismatch: bool = True) -> Comparison:
    """The same role of two stored results: A is the candidate, B the baseline."""
    la, lb = labels or (None, None)
    return compare(side_of(a, role, la), side_of(b, role, lb), allow_mismatch=allow_mismatch, alpha=alpha,
                   raise_on_mismatch=raise_on_mismatch)
