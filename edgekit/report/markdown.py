"""Markdown summary of a bench result (summary.md). A pure function of the records."""

from __future__ import annotations

from edgekit.report.context import ReportContext
from edgekit.results.compare import Comparison
from edgekit.results.gate import FAIL, PASS, GateResult
from edgekit.results.metrics import METRICS, QUALITY_METRICS, RUN_METRICS
from edgekit.results.records import BenchResult
from edgekit.results.stats import fmt_value

_STATUS = {PASS: "pass", FAIL: "**FAIL**", "undecided": "undecided"}


def _esc(s: object) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _num(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]
    return out


def comparison_lines(cmp: Comparison, n_note: bool = True) -> list[str]:
    rows = []
    for m in cmp.metrics:
        meta = METRICS[m.metric]
        rows.append([
            f"{m.metric} ({meta.unit}, {meta.direction} is better)",
            _num(m.candidate.median), _num(m.baseline.median),
            "n/a" if m.change is None else f"{m.change * 100:+.1f}%",
            "n/a" if m.p_value is None else f"{m.p_value:.3f}",
            m.verdict,
        ])
    return _table(["metric", "candidate", "baseline", "change", "p", "verdict"], rows, "lrrrrl")


def gate_lines(gate: GateResult) -> list[str]:
    rows = [[c.threshold.text, c.threshold.source, _STATUS.get(c.status, c.status), c.message] for c in gate.checks]
    out = [f"**{gate.reason}** (exit code {gate.exit_code})", ""]
    if rows:
        out += _table(["threshold", "from", "status", "detail"], rows, "llll")
    return out


def render_comparison(cmp: Comparison, title: str | None = None) -> str:
    """Markdown for `edgekit compare` (two stored results)."""
    lines = [f"# {title or f'{cmp.candidate} vs {cmp.baseline}'}", ""]
    if cmp.mismatches:
        lines += ["Key settings differ (compared with --allow-mismatch): "
                  + "; ".join(_esc(m) for m in cmp.mismatches), ""]
    lines += ["**Verdict:** " + cmp.summary_line(), ""]
    lines += [f"Medians of measured runs; two-sided Mann-Whitney U test, alpha {cmp.alpha}.", ""]
    lines += comparison_lines(cmp)
    notes = [f"- {m.metric}: {m.note}" for m in cmp.metrics if m.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _provenance(result: BenchResult) -> list[str]:
    roles = result.roles()
    rows: list[list[str]] = []

    def row(label: str, f) -> None:
        rows.append([label, *[_esc(f(result.bundles[r])) for r in roles]])

    row("file", lambda b: b.name)
    row("sha256", lambda b: b.sha256)
    row("size", lambda b: f"{b.bytes / 1e6:.2f} MB")
    row("model", lambda b: b.model or "n/a")
    row("scheme", lambda b: b.scheme or "n/a")
    row("text only", lambda b: "n/a" if b.text_only is None else ("yes" if b.text_only else "no"))
    lines = _table(["bundle", *roles], rows, "l" * (1 + len(roles)))
    s = result.settings
    ident = ", ".join(f"{k}={v}" for k, v in sorted(result.device.identity.items()))
    rt = result.runtime or {}
    versions = ", ".join(f"{k} {v}" for k, v in sorted((rt.get("runtime") or {}).items())) or "n/a"
    lines += [
        "",
        f"- device: {_esc(result.device.profile)} via {result.device.transport}" + (f" ({_esc(ident)})" if ident else ""),
        f"- runner: {s.runner or 'n/a'}, backend {rt.get('backend') or s.backend or 'n/a'}, runtime {versions}",
        f"- settings: prefill {s.prefill} tokens, decode {s.decode} tokens, threads {s.threads or 'default'}, "
        f"affinity {s.affinity or 'none'}, warmup {s.warmup}, reps {s.reps}, cool-down {s.cooldown_s:g} s, "
        f"sampling every {s.interval_ms if s.interval_ms is not None else 'n/a'} ms",
        f"- edgekit {result.edgekit_version}, created {result.created}",
    ]
    return lines


def _runs(result: BenchResult) -> list[str]:
    rows = []
    for r in sorted(result.runs, key=lambda r: r.order):
        t = r.thermal
        rows.append([
            str(r.order), r.role, r.phase, str(r.index), r.status if r.ok else f"failed: {r.error}",
            fmt_value("decode_tps", r.value("decode_tps")), fmt_value("ttft_ms", r.value("ttft_ms")),
            fmt_value("peak_anon_mb", r.value("peak_anon_mb")), fmt_value("peak_file_mb", r.value("peak_file_mb")),
            "n/a" if not t or t.max_c is None else f"{t.max_c:.1f} C",
            r.trace_dir or "",
        ])
    return _table(["#", "role", "phase", "idx", "status", "decode", "TTFT", "peak anon", "peak file",
                   "max temp", "trace"], rows, "rllrlrrrrrl")


def na_lines(result: BenchResult, role: str) -> list[str]:
    """'metric: why' for every run metric some measured run of ``role`` has no value for."""
    return [f"{name}: {why}" for name in RUN_METRICS if (why := result.na_reason(role, name))]


def render_markdown(ctx: ReportContext) -> str:
    r = ctx.result
    lines = [f"# {ctx.title}", ""]
    status = "ok" if r.status == "ok" else f"FAILED: {r.error}"
    lines += [f"{r.created} · edgekit {r.edgekit_version} · status {status}", ""]
    if ctx.comparison is not None and not (ctx.comparison.mismatches and ctx.comparison_note
                                           and ctx.comparison_note.startswith("not comparable")):
        lines += ["**Verdict:** " + ctx.comparison.summary_line(), ""]
    if ctx.comparison_note:
        lines += [f"**Note:** {_esc(ctx.comparison_note)}", ""]
    if ctx.gate is not None:
        lines += ["## Gate", ""] + gate_lines(ctx.gate) + [""]
    if ctx.comparison is not None:
        n_c = len(r.measured("candidate"))
        n_b = len(r.measured("baseline"))
        lines += ["## Candidate vs baseline", "",
                  f"Medians of {n_c} candidate and {n_b} baseline measured runs (warmups excluded); "
                  f"two-sided Mann-Whitney U test, alpha {ctx.comparison.alpha}.", ""]
        lines += comparison_lines(ctx.comparison)
        notes = [f"- {m.metric}: {m.note}" for m in ctx.comparison.metrics
                 if m.note and m.verdict != "not comparable"]
        if notes:
            lines += ["", *notes]
        lines.append("")
    for role in r.roles():
        lines += [f"## Statistics: {role} ({r.bundles[role].label})", ""]
        rows = []
        for name in RUN_METRICS:
            s = ctx.summaries[role][name]
            rows.append([name, METRICS[name].unit, str(s.n), _num(s.median), _num(s.mean), _num(s.stddev),
                         "n/a" if s.cv is None else f"{s.cv * 100:.1f}%",
                         "n/a" if s.ci_low is None else f"{_num(s.ci_low)} .. {_num(s.ci_high)}"])
        lines += _table(["metric", "unit", "n", "median", "mean", "stddev", "CV", "95% CI of mean"], rows,
                        "llrrrrrr")
        lines.append("")
        na = na_lines(r, role)
        if na:
            lines += ["Figures with no valid measurement (n/a, not compared, not gated):", ""]
            lines += [f"- {_esc(x)}" for x in na] + [""]
    qrows = []
    for name in QUALITY_METRICS:
        vals = [r.bundles[role].quality().get(name) for role in r.roles()]
        if any(v is not None for v in vals):
            qrows.append([name, *[fmt_value(name, v) for v in vals]])
    if qrows:
        lines += ["## Quality (from the manifests)", ""] + _table(["metric", *r.roles()], qrows) + [""]
    lines += ["## Measurement hygiene", ""]
    lines += [f"- warning: {_esc(w)}" for w in ctx.warnings] or ["- no warnings (CV <= 10%, no throttling seen)"]
    lines += ["", "## Provenance", ""] + _provenance(r) + [""]
    lines += ["## Runs", ""] + _runs(r) + [""]
    return "\n".join(lines)
