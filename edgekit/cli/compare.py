"""`edgekit compare A [B]`: compare stored results; human table or --json/--markdown on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.errors import EXIT_OK
from edgekit.results.compare import compare_result, compare_results
from edgekit.results.records import load_result


@click.command("compare")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path), required=False)
@click.option("--role", type=click.Choice(["candidate", "baseline"]), default="candidate", show_default=True,
              help="With two results: which bundle of each to compare.")
@click.option("--allow-mismatch", is_flag=True, help="Compare even when key settings differ (device, prompt "
              "lengths, threads, backend, runtime versions, bundle model).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison records as JSON.")
@click.option("--markdown", "as_md", is_flag=True, help="Print Markdown instead of a terminal table.")
def command(a: Path, b: Path | None, role: str, allow_mismatch: bool, as_json: bool, as_md: bool) -> int:
    """Compare A (candidate) against B (baseline); with only A, its candidate against its baseline.

    Per metric: medians, change, two-sided Mann-Whitney U p-value and a verdict
    (better, worse, not significant, insufficient data). Differing key settings
    exit 4 unless --allow-mismatch.
    """
    from edgekit.report.markdown import render_comparison as md
    from edgekit.report.terminal import render_comparison as term

    ra = load_result(a)
    if b is None:
        cmp = compare_result(ra, allow_mismatch=allow_mismatch)
    else:
        rb = load_result(b)
        labels = (f"{_name(a)} {role} {ra.bundles[role].label}" if role in ra.bundles else None,
                  f"{_name(b)} {role} {rb.bundles[role].label}" if role in rb.bundles else None)
        cmp = compare_results(ra, rb, role=role, allow_mismatch=allow_mismatch, labels=labels)
    if as_json:
        click.echo(json.dumps(cmp.to_dict(), indent=2))
    elif as_md:
        click.echo(md(cmp), nl=False)
    else:
        click.echo(term(cmp))
    return EXIT_OK


def _name(p: Path) -> str:
    return p.parent.name if p.name == "result.json" else p.name
