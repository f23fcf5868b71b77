"""`edgekit gate RESULT --fail-on ...`: apply thresholds to a stored result; the exit code is the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.results.gate import resolve_thresholds
from edgekit.results.records import load_result


def gate_options(fn):
    """The threshold options shared by `gate`, `bench` and `report`."""
    options = [
        click.option("--fail-on", "fail_on", multiple=True, metavar="THRESHOLD",
                     help="decode_tps:-5%, peak_anon_mb:+10% (vs baseline) or peak_anon_mb<=1000 (absolute). "
                          "Repeatable."),
        click.option("--profile-thresholds/--no-profile-thresholds", default=True, show_default=True,
                     help="Also apply the device profile's [gate] fail_on and budget "
                          "(--fail-on replaces the same metric)."),
        click.option("--allow-mismatch", is_flag=True, help="Compare even when key settings differ."),
        click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML (one testcase per threshold)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("gate")
@click.argument("result", type=click.Path(path_type=Path))
@gate_options
@click.option("--json", "as_json", is_flag=True, help="Print the gate verdict as JSON on stdout.")
def command(result: Path, fail_on: tuple[str, ...], profile_thresholds: bool, allow_mismatch: bool,
            junit: Path | None, as_json: bool) -> int:
    """Apply thresholds to RESULT (a result.json or results/<time>-<device>/ folder).

    A relative threshold fails only when the change is statistically significant
    and past the threshold; an absolute budget fails when the candidate's median
    breaks it. Exit codes: 0 pass, 1 failed, 2 bad threshold, 3 the bench had failed,
    4 not comparable / insufficient data.
    """
    from edgekit.fsutil import atomic_write_text
    from edgekit.report.context import build_context
    from edgekit.report.junit import render_junit
    from edgekit.report.terminal import render_gate

    res = load_result(result)
    thresholds = resolve_thresholds(fail_on, res.device.profile, "baseline" in res.bundles, profile_thresholds,
                                    note=lambda s: click.echo(s, err=True))
    ctx = build_context(res, thresholds, allow_mismatch=allow_mismatch)
    gate = ctx.gate
    assert gate is not None
    if junit is not None:
        atomic_write_text(junit, render_junit(gate, timestamp=res.created))
    if as_json:
        click.echo(json.dumps(gate.to_dict(), indent=2))
    else:
        if ctx.comparison_note:
            click.echo(f"note: {ctx.comparison_note}", err=True)
        click.echo(render_gate(gate))
    if not thresholds:
        click.echo("warning: no thresholds given (--fail-on) and none in the device profile", err=True)
    return gate.exit_code
