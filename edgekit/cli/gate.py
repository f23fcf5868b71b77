"""`edgekit gate RESULT --fail-on ...`: apply thresholds to a stored result; the exit code is the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.options import gate_options


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
