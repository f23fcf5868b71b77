"""`edgekit setup --device NAME`: install the runner on a device (Pi / host) or push the native binary (phone)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from edgekit.devices import load_profile, open_transport
from edgekit.devices.setup import setup_device
from edgekit.errors import EXIT_OK


@click.command("setup")
@click.option("--device", "-d", required=True, help="Device profile name (see `edgekit devices`).")
@click.option("--accept-new-host-key", is_flag=True, help="Accept and record an unknown ssh host key.")
@click.option("--serial", default=None, help="adb serial (overrides the profile and ANDROID_SERIAL).")
@click.option("--reuse-packages-from", "reuse", default=None, metavar="PYTHON",
              help="Create the venv from this interpreter on the device and reuse its installed packages "
                   "(no download).")
@click.option("--base-python", default="python3", show_default=True,
              help="Interpreter on the device that creates the venv when pip installs.")
@click.option("--offline", is_flag=True, help="Never download: fail if the runtime is missing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(device: str, accept_new_host_key: bool, serial: str | None, reuse: str | None, base_python: str,
            offline: bool, as_json: bool) -> int:
    """Make DEVICE ready for `edgekit bench`: a venv with litert-lm-api, ai-edge-litert and
    numpy for the Python runner (Pi, host), or the litert_lm_main binary for a phone.
    Does nothing when already installed."""
    profile = load_profile(device)
    opts = {}
    if serial:
        opts["serial"] = serial
    if accept_new_host_key:
        opts["accept_new_host_key"] = True
    kwargs = {}
    if profile.runner.kind == "python":
        kwargs = {"reuse_packages_from": reuse, "allow_download": not offline, "base_python": base_python,
                  "log": lambda m: click.echo(m, err=True)}
    with open_transport(profile, **opts) as t:
        res = setup_device(profile, t, **kwargs)
    if as_json:
        click.echo(json.dumps(asdict(res), indent=2))
        return EXIT_OK
    if res.kind == "python":
        click.echo(f"{profile.name}: runner {res.action}: {res.python}")
        if res.method:
            click.echo(f"method: {res.method}")
        v = res.versions
        click.echo(f"python {v.get('python')} ({v.get('machine')}), litert-lm-api {v.get('litert_lm_api')}, "
                   f"ai-edge-litert {v.get('ai_edge_litert')}, numpy {v.get('numpy')}")
    else:
        click.echo(f"{profile.name}: benchmark binary {res.action}: {res.binary}")
        click.echo(f"sha256: {res.sha256}")
    click.echo(f"seconds: {res.seconds:.1f}")
    return EXIT_OK
