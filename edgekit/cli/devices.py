"""`edgekit devices [--json]`: list device profiles and which devices are reachable now."""

from __future__ import annotations

import json

import click

from edgekit.devices.status import probe_all
from edgekit.errors import EXIT_OK


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list on stdout.")
@click.option("--timeout", type=float, default=8.0, show_default=True, help="Seconds to wait for each device.")
@click.option("--accept-new-host-key", is_flag=True, help="Record unknown ssh host keys (otherwise refused).")
@click.argument("names", nargs=-1)
def command(as_json: bool, timeout: float, accept_new_host_key: bool, names: tuple[str, ...]) -> int:
    """List device profiles (shipped and $EDGEKIT_PROFILES) and probe each one now:
    state, model, SoC, OS version and free storage in its work folder."""
    opts = {"accept_new_host_key": True} if accept_new_host_key else {}
    statuses = probe_all(timeout=timeout, names=list(names) or None, **opts)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
        return EXIT_OK
    rows = [("NAME", "TRANSPORT", "STATE", "MODEL", "SOC", "OS", "FREE")]
    for s in statuses:
        rows.append((s.name, s.transport, s.state, s.model or "-", s.soc or "-", s.os or "-", _size(s.free_bytes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    problems = [s for s in statuses if not s.reachable and s.error]
    for s in problems:
        msg = s.error if s.error.startswith(f"{s.name}:") else f"{s.name}: {s.error}"
        click.echo(msg + (f" (hint: {s.hint})" if s.hint else ""), err=True)
    return EXIT_OK
