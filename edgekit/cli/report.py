"""`edgekit report DIR`: regenerate summary.md, report.html (and JUnit) from a stored result."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.options import gate_options
from edgekit.errors import EXIT_OK


@click.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@gate_options
@click.option("--json", "as_json", is_flag=True, help="Print the result records as JSON on stdout.")
def command(folder: Path, as_json: bool, junit: Path | None, **gate) -> int:
    """Regenerate the views of FOLDER (results/<time>-<device>/) from its result.json.

    Prints the paths written (or, with --json, the records); the gate is not
    enforced here: use `edgekit gate` for an exit code.
    """
    from edgekit.bench.gated import gate_stored
    from edgekit.report.folder import write_views
    from edgekit.report.terminal import render_context

    stored = gate_stored(folder, **gate, note=lambda s: click.echo(s, err=True))
    ctx = stored.context
    paths = write_views(folder if folder.is_dir() else folder.parent, ctx, junit=junit)
    if as_json:
        click.echo(json.dumps(stored.result.to_dict(), indent=2))
    else:
        click.echo(render_context(ctx))
        for kind, p in paths.items():
            click.echo(f"{kind}: {p}")
    for w in ctx.warnings:
        click.echo(f"warning: {w}", err=True)
    return EXIT_OK
