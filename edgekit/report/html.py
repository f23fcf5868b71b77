"""Self-contained HTML report (report.html): tables plus matplotlib plots as base64 PNG.

No external resources: styles inline, images as data: URIs, no scripts needed.
"""

from __future__ import annotations

import base64
from html import escape

from edgekit.errors import EXIT_GATE_FAILED, EXIT_OK
from edgekit.report.context import ReportContext
from edgekit.report.markdown import na_lines
from edgekit.report.plots import all_plots
from edgekit.report.terminal import grouped_notes
from edgekit.results.metrics import METRICS, QUALITY_METRICS, RUN_METRICS
from edgekit.results.stats import fmt_value

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child,td:last-child,th:last-child{text-align:left}
.better{color:#087f23;font-weight:600}.worse{color:#b00020;font-weight:600}
.fail{color:#b00020;font-weight:700}.pass{color:#087f23}.undecided{color:#a15c00;font-weight:600}
.warn{color:#a15c00}.mono{font-family:ui-monospace,monospace;font-size:.85em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}img{max-width:100%}
"""


def _n(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.2f}"


def _table(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in header)
    body = []
    for row in rows:
        cells = "".join(f"<td>{c if raw else escape(str(c))}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(ctx: ReportContext, plots: list[tuple[str, str, bytes]] | None = None) -> str:
    r = ctx.result
    plots = all_plots(r) if plots is None else plots
    parts = [f"<h1>{escape(ctx.title)}</h1>"]
    status = "ok" if r.status == "ok" else f"FAILED: {r.error}"
    parts.append(f"<p>{escape(r.created)} · edgekit {escape(r.edgekit_version)} · status {escape(status)}</p>")
    cmp = ctx.comparison
    not_comp = (ctx.comparison_note or "").startswith("not comparable")
    if cmp is not None and not not_comp:
        parts.append("<p><b>Verdict:</b> " + escape(cmp.summary_line()) + "</p>")
    if ctx.comparison_note:
        parts.append(f"<p class='warn'><b>Note:</b> {escape(ctx.comparison_note)}</p>")
    if ctx.gate is not None:
        g = ctx.gate
        cls = "pass" if g.exit_code == EXIT_OK else ("fail" if g.exit_code == EXIT_GATE_FAILED else "undecided")
        parts.append(f"<h2>Gate</h2><p class='{cls}'>{escape(g.reason)} (exit code {g.exit_code})</p>")
        rows = [[escape(c.threshold.text), escape(c.threshold.source),
                 f"<span class='{c.status}'>{escape(c.status)}</span>", escape(c.message)] for c in g.checks]
        if rows:
            parts.append(_table(["threshold", "from", "status", "detail"], rows, raw=True))
    if cmp is not None:
        parts.append("<h2>Candidate vs baseline</h2>")
        parts.append(f"<p>Medians of {len(r.measured('candidate'))} candidate and {len(r.measured('baseline'))} "
                     f"baseline measured runs (warmups excluded); two-sided Mann-Whitney U, alpha {cmp.alpha}.</p>")
        rows = []
        for m in cmp.metrics:
            meta = METRICS[m.metric]
            cls = m.verdict.replace(" ", "-")
            rows.append([escape(f"{m.metric} ({meta.unit}, {meta.direction} is better)"),
                         _n(m.candidate.median), _n(m.baseline.median),
                         "n/a" if m.change is None else f"{m.change * 100:+.1f}%",
                         "n/a" if m.p_value is None else f"{m.p_value:.3f}",
                         f"<span class='{cls}'>{escape(m.phrase)}</span>"])
        parts.append(_table(["metric", "candidate", "baseline", "change", "p", "verdict"], rows, raw=True))
        notes = grouped_notes(cmp)
        if notes:
            parts.append("<ul>" + "".join(f"<li class='warn'>{escape(n)}: {escape(t)}</li>" for n, t in notes)
                         + "</ul>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for pid, caption, png in plots:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure id='plot-{pid}'><img class='plot' alt='{escape(caption)}' "
                         f"src='data:image/png;base64,{b64}'><figcaption>{escape(caption)}</figcaption></figure>")
    for role in r.roles():
        parts.append(f"<h2>Statistics: {escape(role)} ({escape(r.bundles[role].label)})</h2>")
        rows = []
        for name in RUN_METRICS:
            s = ctx.summaries[role][name]
            rows.append([name, METRICS[name].unit, s.n, _n(s.median), _n(s.mean), _n(s.stddev),
                         "n/a" if s.cv is None else f"{s.cv * 100:.1f}%",
                         "n/a" if s.ci_low is None else f"{_n(s.ci_low)} .. {_n(s.ci_high)}"])
        parts.append(_table(["metric", "unit", "n", "median", "mean", "stddev", "CV", "95% CI of mean"], rows))
        na = na_lines(r, role)
        if na:
            parts.append("<p>Figures with no valid measurement (n/a, not compared, not gated):</p><ul>"
                         + "".join(f"<li class='warn'>{escape(x)}</li>" for x in na) + "</ul>")
    qrows = [[name, *[fmt_value(name, r.bundles[role].quality().get(name)) for role in r.roles()]]
             for name in QUALITY_METRICS if any(r.bundles[role].quality().get(name) is not None for role in r.roles())]
    if qrows:
        parts.append("<h2>Quality (from the manifests)</h2>" + _table(["metric", *r.roles()], qrows))
    parts.append("<h2>Measurement hygiene</h2>")
    if ctx.warnings:
        parts.append("<ul>" + "".join(f"<li class='warn'>{escape(w)}</li>" for w in ctx.warnings) + "</ul>")
    else:
        parts.append("<p>No warnings (CV &le; 10%, no throttling seen).</p>")
    parts.append("<h2>Provenance</h2>")
    roles = r.roles()
    prow = [
        ["file", *[r.bundles[x].name for x in roles]],
        ["sha256", *[f"<span class='mono'>{escape(r.bundles[x].sha256)}</span>" for x in roles]],
        ["size", *[f"{r.bundles[x].bytes / 1e6:.2f} MB" for x in roles]],
        ["model", *[r.bundles[x].model or "n/a" for x in roles]],
        ["scheme", *[r.bundles[x].scheme or "n/a" for x in roles]],
    ]
    prow = [[escape(str(c)) if not str(c).startswith("<span") else c for c in row] for row in prow]
    parts.append(_table(["bundle", *roles], prow, raw=True))
    s = r.settings
    rt = r.runtime or {}
    versions = ", ".join(f"{k} {v}" for k, v in sorted((rt.get("runtime") or {}).items())) or "n/a"
    ident = ", ".join(f"{k}={v}" for k, v in sorted(r.device.identity.items()))
    parts.append("<ul>" + "".join(f"<li>{escape(x)}</li>" for x in [
        f"device: {r.device.profile} via {r.device.transport}" + (f" ({ident})" if ident else ""),
        f"runner: {s.runner or 'n/a'}, backend {rt.get('backend') or s.backend or 'n/a'}, runtime {versions}",
        f"settings: prefill {s.prefill}, decode {s.decode}, threads {s.threads or 'default'}, affinity "
        f"{s.affinity or 'none'}, warmup {s.warmup}, reps {s.reps}, cool-down {s.cooldown_s:g} s",
        f"edgekit {r.edgekit_version}, created {r.created}",
    ]) + "</ul>")
    parts.append("<h2>Runs</h2>")
    rows = []
    for run in sorted(r.runs, key=lambda x: x.order):
        t = run.thermal
        rows.append([run.order, run.role, run.phase, run.index, run.status if run.ok else f"failed: {run.error}",
                     fmt_value("decode_tps", run.value("decode_tps")), fmt_value("ttft_ms", run.value("ttft_ms")),
                     fmt_value("peak_anon_mb", run.value("peak_anon_mb")),
                     fmt_value("peak_file_mb", run.value("peak_file_mb")),
                     "n/a" if not t or t.max_c is None else f"{t.max_c:.1f} C", run.trace_dir or ""])
    parts.append(_table(["#", "role", "phase", "idx", "status", "decode", "TTFT", "peak anon", "peak file",
                         "max temp", "trace"], rows))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(ctx.title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
