"""Summary statistics of measured runs, and hygiene warnings (spread, throttling).

Only measured runs enter statistics; warmups never do (see
:meth:`edgekit.results.records.BenchResult.measured`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from edgekit.results.metrics import QUALITY_METRICS, REGISTRY, RUN_METRICS
from edgekit.results.records import BenchResult

CV_WARN = 0.10  # coefficient of variation above which numbers are not trusted
# ai-edge-quantizer's LLM evaluation guide: teacher-forced top-1 agreement with the float model
# above 0.99 is healthy for int8, below 0.95 needs investigation (the profiles' default gate
# fails there); in between the report warns
TOP1_HEALTHY = 0.99
THERMAL_RISE_WARN_C = 10.0  # rise of the hottest zone over the session
FREQ_DROP_WARN = 0.10  # drop of the highest CPU frequency seen, first vs last measured run


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric's samples."""

    n: int
    median: float | None
    mean: float | None
    stddev: float | None
    cv: float | None
    ci_low: float | None
    ci_high: float | None
    min: float | None
    max: float | None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("n", "median", "mean", "stddev", "cv", "ci_low", "ci_high", "min", "max")}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100]."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Two-sided Student-t confidence interval of the mean (None with fewer than 2 samples)."""
    n = len(values)
    if n < 2:
        return None, None
    from scipy import stats as st

    mean = statistics.fmean(values)
    sd = statistics.stdev(values)
    half = float(st.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def summarize(values: Sequence[float]) -> Summary:
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return Summary(0, None, None, None, None, None, None, None, None)
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if n >= 2 else None
    cv = (sd / abs(mean)) if sd is not None and mean != 0 else None
    lo, hi = t_interval(xs)
    return Summary(n, statistics.median(xs), mean, sd, cv, lo, hi, min(xs), max(xs))


def summarize_result(result: BenchResult) -> dict[str, dict[str, Summary]]:
    """role -> metric -> Summary, over measured runs only."""
    out: dict[str, dict[str, Summary]] = {}
    for role in result.roles():
        out[role] = {name: summarize(result.samples(role, name)) for name in (*RUN_METRICS, *QUALITY_METRICS)}
    return out


def hygiene_warnings(result: BenchResult) -> list[str]:
    """Reasons not to trust the numbers: high spread, thermal rise, CPU frequency drop, failures."""
    warnings: list[str] = []
    for role in result.roles():
        noisy = []
        for name in RUN_METRICS:
            s = summarize(result.samples(role, name))
            if s.cv is not None and s.cv > CV_WARN:
                noisy.append(f"{name} {s.cv * 100:.1f}%")
        if noisy:
            n = len(result.measured(role))
            warnings.append(
                f"{role}: CV above {CV_WARN * 100:.0f}% over {n} runs for " + ", ".join(noisy)
                + "; the spread is too large to trust small differences (more --reps, --cooldown, a quiet device)"
            )
    cand = result.bundles.get("candidate")
    top1 = cand.quality().get("top1_agreement") if cand else None
    if top1 is not None and top1 < TOP1_HEALTHY:
        warnings.append(f"quality: top-1 agreement with fp16 is {top1:.3f}, below the {TOP1_HEALTHY} that "
                        "ai-edge-quantizer's LLM evaluation guide calls healthy for int8 (below 0.95: investigate)")
    measured = sorted((r for r in result.runs if r.phase == "measure" and r.ok), key=lambda r: r.order)
    temps_start = [r.thermal.start_c for r in measured if r.thermal and r.thermal.start_c is not None]
    # the hottest reading during a run, or after it when the run was too short for one during it
    temps_max = [t for r in measured if r.thermal
                 for t in (r.thermal.max_c, r.thermal.end_c) if t is not None]
    if temps_start and temps_max:
        rise = max(temps_max) - temps_start[0]
        if rise >= THERMAL_RISE_WARN_C:
            warnings.append(
                f"thermal: hottest zone rose {rise:.1f} C during the session "
                f"({temps_start[0]:.1f} -> {max(temps_max):.1f} C); throttling may bias later runs (use --cooldown)"
            )
    peaks = [(r, max((c.max_khz for c in r.cpufreq if c.max_khz is not None), default=None)) for r in measured]
    peaks = [(r, p) for r, p in peaks if p is not None]
    if len(peaks) >= 2:
        first, last = peaks[0][1], peaks[-1][1]
        top = max(p for _, p in peaks)
        if last < top * (1.0 - FREQ_DROP_WARN):
            warnings.append(
                f"cpufreq: highest CPU clock fell from {top / 1000:.0f} MHz to {last / 1000:.0f} MHz "
                f"(first measured run {first / 1000:.0f} MHz); the device is likely throttling"
            )
    failed = [r for r in result.runs if not r.ok]
    for r in failed:
        warnings.append(f"run {r.order} ({r.role} {r.phase} #{r.index}) failed: {r.error}")
    return warnings


def fmt_value(name: str, value: float | None) -> str:
    """Number formatted for humans with the metric's unit."""
    if value is None:
        return "n/a"
    m = REGISTRY.get(name)
    unit = m.unit if m else ""
    if unit == "":
        return f"{value:.3f}"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "nats":
        return f"{value:.4f} nats"
    if abs(value) >= 100:
        s = f"{value:.0f}"
    elif abs(value) >= 10:
        s = f"{value:.1f}"
    else:
        s = f"{value:.2f}"
    return f"{s} {unit}"
