"""Write every view of a result into its folder (atomically, one file at a time)."""

from __future__ import annotations

from pathlib import Path

from edgekit.fsutil import atomic_write_text
from edgekit.report.context import ReportContext
from edgekit.report.csv import render_csv
from edgekit.report.html import render_html
from edgekit.report.junit import render_junit
from edgekit.report.markdown import render_markdown

SUMMARY = "summary.md"
HTML = "report.html"
JUNIT = "junit.xml"
CSV = "runs.csv"


def write_views(folder: str | Path, ctx: ReportContext, junit: str | Path | None = None) -> dict[str, Path]:
    """summary.md, report.html and runs.csv in ``folder``; JUnit XML at ``junit`` when asked and a gate was run."""
    folder = Path(folder)
    out = {
        "summary": atomic_write_text(folder / SUMMARY, render_markdown(ctx)),
        "html": atomic_write_text(folder / HTML, render_html(ctx)),
        "csv": atomic_write_text(folder / CSV, render_csv(ctx.result)),
    }
    if junit is not None and ctx.gate is not None:
        out["junit"] = atomic_write_text(Path(junit), render_junit(ctx.gate, timestamp=ctx.result.created))
    return out
