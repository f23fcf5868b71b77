"""`edgekit gate RESULT --fail-on ...`: apply thresholds to a stored result; the exit code is the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import click


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
def command(result: Path, as_json: bool, **gate) -> int:
    """Apply thresholds to RESULT (a result.json or results/<time>-<device>/ folder).

    A relative threshold fails only when the change is statistically significant
    and past the threshold; an absolute budget fails when the candidate's median
    breaks it. Exit codes: 0 pass, 1 failed, 2 bad threshold, 3 the bench had failed,
    4 not comparable / insufficient data.
    """
    from edgekit.bench.gated import gate_stored
    from edgekit.report.terminal import render_gate

    stored = gate_stored(result, **gate, note=lambda s: click.echo(s, err=True))
    ctx = stored.context
    assert ctx.gate is not None
    if as_json:
        click.echo(json.dumps(ctx.gate.to_dict(), indent=2))
    else:
        if ctx.comparison_note:
            click.echo(f"note: {ctx.comparison_note}", err=True)
        click.echo(render_gate(ctx.gate))
    if not stored.thresholds:
        click.echo("warning: no thresholds given (--fail-on) and none in the device profile", err=True)
    return stored.exit_code
