"""`edgekit inspect BUNDLE`: sections, sizes, dtypes per layer, and the check against manifest + scheme."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full report (and violations) as JSON.")
@click.option("--scheme", default=None, help="Check against this scheme instead of the manifest's.")
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path), default=None,
              help="Manifest to check against (default: manifest.json beside the bundle).")
def command(bundle: Path, as_json: bool, scheme: str | None, manifest_path: Path | None) -> int:
    """Read BUNDLE (a .litertlm or its folder) back and check it; exit 10 on violations."""
    from edgekit.bundle.inspect import check_bundle, format_text

    report, violations, checked = check_bundle(bundle, scheme=scheme, manifest_path=manifest_path)
    if as_json:
        click.echo(json.dumps({"report": report, "checked_against": checked, "violations": violations}, indent=2))
    else:
        click.echo(format_text(report, violations if checked else None))
        if checked.get("manifest"):  # QAT build: exactness and agreement of a QAT build
            from edgekit.bundle.exactness import format_qat
            from edgekit.results.manifest import read_manifest

            qrec = read_manifest(checked["manifest"], strict=False).qat
            if qrec:
                click.echo(format_qat(qrec))
        if not checked.get("scheme"):
            click.echo("check: no manifest and no --scheme: nothing to check against", err=True)
    if violations:
        from edgekit.errors import InspectionFailed

        raise InspectionFailed(
            f"{len(violations)} violation(s) in {report['path']}: {violations[0]}",
            hint="rebuild the bundle with `edgekit build`, or check the right scheme with --scheme",
        )
    return 0
