"""Everything a view needs, computed once from a result: stats, comparison, gate, warnings.

Every view (Markdown, HTML, terminal, JUnit) renders a :class:`ReportContext`,
so they cannot disagree about a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from edgekit.errors import InsufficientData, NotComparable
from edgekit.results.compare import Comparison, compare_result
from edgekit.results.gate import GateResult, Threshold, evaluate
from edgekit.results.records import BASELINE, CANDIDATE, BenchResult
from edgekit.results.stats import Summary, hygiene_warnings, summarize_result


@dataclass(frozen=True)
class ReportContext:
    result: BenchResult
    summaries: dict[str, dict[str, Summary]]
    comparison: Comparison | None
    comparison_note: str | None  # why there is no comparison / why it is not comparable
    gate: GateResult | None
    warnings: tuple[str, ...]

    @property
    def title(self) -> str:
        r = self.result
        cand = r.bundles.get(CANDIDATE)
        base = r.bundles.get(BASELINE)
        who = cand.label if cand else "?"
        if base:
            who += f" vs {base.label}"
        return f"edgekit bench: {who} on {r.device.label}"


def build_context(result: BenchResult, thresholds: Sequence[Threshold] | None = None,
                  allow_mismatch: bool = False) -> ReportContext:
    """Compute the comparison (when there is a baseline) and, if thresholds are given, the gate."""
    comparison: Comparison | None = None
    note: str | None = None
    if CANDIDATE in result.bundles and BASELINE in result.bundles:
        comparison = compare_result(result, allow_mismatch=allow_mismatch, raise_on_mismatch=False)
        if comparison.mismatches:
            joined = "; ".join(str(m) for m in comparison.mismatches)
            note = (f"not comparable: {joined}" if not allow_mismatch
                    else f"compared despite differing key settings (--allow-mismatch): {joined}")
    else:
        note = "no baseline in this result"
    gate = evaluate(result, thresholds, comparison) if thresholds is not None else None
    return ReportContext(result, summarize_result(result), comparison, note, gate,
                         tuple(hygiene_warnings(result)))


def raise_for_comparison(ctx: ReportContext) -> None:
    """For commands that must refuse: not comparable / no baseline -> exit 4."""
    if ctx.comparison is None:
        raise InsufficientData(ctx.comparison_note or "nothing to compare",
                               hint="bench with a baseline (--baseline) or use `edgekit compare A.json B.json`")
    if ctx.comparison.mismatches and ctx.comparison.metrics and \
            all(m.verdict == "not comparable" for m in ctx.comparison.metrics):
        raise NotComparable(ctx.comparison_note or "not comparable")
