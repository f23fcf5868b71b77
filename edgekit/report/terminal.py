"""Plain-text tables for the terminal (stdout), views of the same records as the reports."""

from __future__ import annotations

from edgekit.report.context import ReportContext
from edgekit.results.compare import Comparison
from edgekit.results.gate import GateResult
from edgekit.results.metrics import METRICS


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.2f}"


def table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def render_comparison(cmp: Comparison) -> str:
    rows = []
    for m in cmp.metrics:
        rows.append([m.metric, METRICS[m.metric].unit, _fmt(m.candidate.median), _fmt(m.baseline.median),
                     "n/a" if m.change is None else f"{m.change * 100:+.1f}%",
                     "n/a" if m.p_value is None else f"{m.p_value:.3f}", m.verdict])
    out = [f"{cmp.candidate}  vs  {cmp.baseline}"]
    if cmp.mismatches:
        out.append("key settings differ (allowed): " + "; ".join(str(x) for x in cmp.mismatches))
    out.append(table(["metric", "unit", "candidate", "baseline", "change", "p", "verdict"], rows, {2, 3, 4, 5}))
    out += [f"  {names}: {note}" for names, note in grouped_notes(cmp)]
    out.append("verdict: " + cmp.summary_line())
    return "\n".join(out)


def grouped_notes(cmp: Comparison) -> list[tuple[str, str]]:
    """(metrics, note) for every note of a metric that was not decided, metrics with the same note
    joined, so a figure with no valid measurement says why next to its n/a."""
    order: list[str] = []
    names: dict[str, list[str]] = {}
    for m in cmp.metrics:
        if m.note and m.verdict != "not comparable":
            if m.note not in names:
                order.append(m.note)
                names[m.note] = []
            names[m.note].append(m.metric)
    return [(", ".join(names[n]), n) for n in order]


def render_gate(gate: GateResult) -> str:
    rows = [[c.status.upper(), c.threshold.text, c.threshold.source, c.message] for c in gate.checks]
    out = []
    if rows:
        out.append(table(["status", "threshold", "from", "detail"], rows))
    out.append(f"{gate.reason} (exit {gate.exit_code})")
    return "\n".join(out)


def render_context(ctx: ReportContext) -> str:
    out = [ctx.title]
    if ctx.comparison is not None and not (ctx.comparison_note or "").startswith("not comparable"):
        out.append(render_comparison(ctx.comparison))
    if ctx.comparison_note:
        out.append(f"note: {ctx.comparison_note}")
    if ctx.gate is not None:
        out.append(render_gate(ctx.gate))
    return "\n".join(out)
