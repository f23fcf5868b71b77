"""`edgekit build MODEL`: build a .litertlm bundle + manifest.json; prints the bundle path on stdout.

stdout carries only the result (the bundle path; with --verify-lock one MATCH/DIFF
line per input group, option, header, section and the bundle). stderr carries
edgekit's stages (a bar with percent, rate and ETA on a terminal, plain lines
otherwise). The toolchain's own output goes to the build's log file (named in the
error when a stage fails).
"""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.errors import EXIT_OK


@click.command("build")
@click.argument("model")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer).")
@click.option("--random-weights", is_flag=True, help="Shape-exact random weights (fixed --seed).")
@click.option("--width-div", type=int, default=1, show_default=True,
              help="Divide widths by K (random weights); vocab and layer structure unchanged.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random-weights.")
@click.option("--scheme", default=None, help="wNa8o8 (default), fp16, or a scheme .toml file.")
@click.option("--text-only", is_flag=True, help="No vision/audio encoder sections.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Calibration prompt file (replaces the shipped set).")
@click.option("--output", type=click.Path(path_type=Path), default=Path("dist"), show_default=True,
              help="Folder that receives <model>-<scheme>[-text]/.")
@click.option("--force", is_flag=True, help="Build even when the memory/disk estimate says it will not fit.")
@click.option("--prefill", type=int, default=None,
              help="Prefill signature length (default: 128 for e2b/e4b, litert-torch's export default; 32 for tiny).")
@click.option("--cache-length", type=int, default=None,
              help="KV-cache length (default: 4096 for e2b/e4b, litert-torch's export default; 256 for tiny).")
@click.option("--no-quality", is_flag=True, help="Skip the quality comparison against an existing fp16 build.")
@click.option("--requantize", is_flag=True,
              help="QAT checkpoint: naive min-max re-quantization + calibration instead of its exact integers "
                   "and SRQ scales (for comparison).")
@click.option("--kv-cache", "kv_cache", type=click.Choice(["float", "int8"]), default=None,
              help="KV cache dtype (default: the scheme's, float for wNa8o8). int8: one calibrated scale per "
                   "cache, classic route; the bundle is named <scheme>-kv8.")
@click.option("--route", type=click.Choice(["auto", "classic", "streamed"]), default="auto", show_default=True,
              help="streamed: convert a stand-in with shared weights and write the checkpoint's weights into it "
                   "(full-size E2B/E4B within 20 GiB); auto picks it for e2b/e4b, classic for tiny.")
@click.option("--verify-lock", "verify_lock", type=click.Path(path_type=Path), default=None, metavar="MANIFEST",
              help="Rebuild into a temporary folder and compare with MANIFEST's lock: MATCH/DIFF per section on "
                   "stdout; exit 0 all match, 10 something differs, 4 the lock's toolchain differs (refused).")
def command(model: str, scheme: str | None, output: Path, no_quality: bool, verify_lock: Path | None,
            **options) -> int:
    """Build MODEL (e2b, e4b, tiny) into dist/<model>-<scheme>[-text]/ (bundle + manifest.json).

    Progress goes to stderr; the bundle path is printed on stdout. The toolchain's
    output goes to a log file in the build's work folder (kept when a stage fails).
    """
    from edgekit.builder.pipeline import build
    from edgekit.builder.toolchain_log import StageProgress
    from edgekit.models.presets import get_preset

    preset = get_preset(model)
    # the remaining options are build()'s keyword arguments under the same names
    kwargs = dict(options, scheme=scheme or preset.default_scheme)
    progress = StageProgress()
    ok = False
    try:
        if verify_lock is not None:
            return _verify(preset.name, verify_lock, progress, kwargs)
        res = build(preset.name, output=output, quality=not no_quality, progress=progress, **kwargs)
        ok = True
    finally:
        progress.close(ok)
    from edgekit.results.manifest import Manifest

    m = Manifest.of(res.manifest)
    b = m.build or {}
    click.echo(
        f"built {res.bundle.name}: {m.bundle_bytes:,} bytes in {b['seconds']:.1f} s, "
        f"peak RSS {b['peak_rss_bytes'] / 2**20:.0f} MiB; toolchain log: {b.get('toolchain_log') or 'n/a'}",
        err=True,
    )
    click.echo(str(res.bundle))
    return EXIT_OK


def _verify(model: str, manifest: Path, progress, kwargs: dict) -> int:
    from edgekit.builder.pipeline import verify_lock
    from edgekit.bundle.lock import format_rows
    from edgekit.errors import InspectionFailed

    check = verify_lock(manifest, progress=progress, model=model, **kwargs)
    progress.close(True)
    for line in format_rows(check.rows):
        click.echo(line)
    for note in check.notes:
        click.echo(f"note: {note}", err=True)
    if not check.ok:
        bad = [r for r in check.rows if r["status"] == "DIFF"]
        raise InspectionFailed(
            f"the rebuild differs from the lock in {manifest}: {len(bad)} DIFF ("
            + ", ".join(f"{r['what']} {r['name']}" for r in bad[:6]) + (", ..." if len(bad) > 6 else "") + ")",
            hint="same inputs, options and toolchain give the same bytes: see the DIFF lines on stdout",
        )
    return EXIT_OK
