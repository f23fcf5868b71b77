"""`edgekit push BUNDLE --device NAME`: checksummed push, skipped when the device already has it."""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path

import click

from edgekit.devices import load_profile, open_transport
from edgekit.devices.bundle_check import check_bundle
from edgekit.devices.transport import default_progress
from edgekit.errors import EXIT_OK, UsageError


@click.command("push")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--device", "-d", required=True, help="Device profile name (see `edgekit devices`).")
@click.option("--remote", default=None, help="Path on the device (default WORK_DIR/bundles/NAME).")
@click.option("--serial", default=None, help="adb serial (overrides the profile and ANDROID_SERIAL).")
@click.option("--accept-new-host-key", is_flag=True, help="Accept and record an unknown ssh host key.")
@click.option("--rehash", "--verify", "rehash", is_flag=True,
              help="Do not trust the device's recorded checksum: hash the device's file in full.")
@click.option("--no-check", is_flag=True,
              help="Push any file: skip the local bundle check (LITERTLM header, sections, manifest beside it).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(bundle: Path, device: str, remote: str | None, serial: str | None, accept_new_host_key: bool,
            rehash: bool, no_check: bool, as_json: bool) -> int:
    """Push BUNDLE to the device: checked locally first (a file that is not a usable
    .litertlm bundle, or disagrees with the manifest beside it, exits 10 and nothing is
    sent), written under a temporary name, sha256 verified on the device, then renamed;
    an identical file already there is not sent again."""
    if not bundle.is_file():
        raise UsageError(f"{bundle}: no such file", hint="pass the path of a built .litertlm bundle")
    profile = load_profile(device)
    if not no_check:  # header, sections, manifest: a bad bundle is refused (exit 10) before any connection
        check_bundle(bundle)
    opts = {}
    if serial:
        opts["serial"] = serial
    if accept_new_host_key:
        opts["accept_new_host_key"] = True
    with open_transport(profile, **opts) as t:
        dest = remote or posixpath.join(profile.work_dir, "bundles", bundle.name)
        progress = default_progress(f"push {bundle.name}")
        r = t.push(bundle, dest, progress=progress, verify=rehash)
    rate = r.bytes / r.seconds / 1e6 if r.sent and r.seconds > 0 else None
    if as_json:
        click.echo(json.dumps({"device": profile.name, "local": os.fspath(bundle), "remote": r.remote,
                               "sent": r.sent, "bytes": r.bytes, "seconds": r.seconds, "sha256": r.sha256,
                               "mb_per_s": rate}, indent=2))
        return EXIT_OK
    verb = "sent" if r.sent else "skipped (identical file already on the device)"
    click.echo(f"{verb}: {bundle.name} -> {profile.name}:{r.remote}")
    line = f"bytes: {r.bytes}  seconds: {r.seconds:.2f}"
    if rate is not None:
        line += f"  ({rate:.1f} MB/s)"
    click.echo(line)
    click.echo(f"sha256: {r.sha256} (verified on the device)")
    return EXIT_OK
