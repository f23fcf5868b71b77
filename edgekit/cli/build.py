"""`edgekit build MODEL`: build a .litertlm bundle + manifest.json; prints the bundle path on stdout."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click


def _progress(stage: str, message: str, seconds: float | None) -> None:
    if seconds is None:
        click.echo(f"[{stage}] {message} ...", err=True)
    else:
        click.echo(f"[{stage}] {message}: done in {seconds:.2f} s", err=True)


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
@click.option("--prefill", type=int, default=32, show_default=True, help="Prefill signature length.")
@click.option("--cache-length", type=int, default=256, show_default=True, help="KV-cache length.")
@click.option("--no-quality", is_flag=True, help="Skip the quality comparison against an existing fp16 build.")
@click.option("--requantize", is_flag=True,
              help="QAT checkpoint: naive min-max re-quantization + calibration instead of its exact integers "
                   "and SRQ scales (for comparison).")
def command(model, checkpoint, random_weights, width_div, seed, scheme, text_only, calibration, output, force,
            prefill, cache_length, no_quality, requantize) -> int:
    """Build MODEL (e2b, e4b, tiny) into dist/<model>-<scheme>[-text]/ (bundle + manifest.json).

    Progress goes to stderr (stage and seconds); the bundle path is printed on stdout.
    """
    from edgekit.build.pipeline import build
    from edgekit.models.presets import get_preset

    preset = get_preset(model)
    # Toolchain libraries print to stdout; keep stdout for the result.
    with contextlib.redirect_stdout(sys.stderr):
        res = build(
            preset.name,
            checkpoint=checkpoint,
            random_weights=random_weights,
            width_div=width_div,
            seed=seed,
            scheme=scheme or preset.default_scheme,
            text_only=text_only,
            calibration=calibration,
            output=output,
            force=force,
            prefill=prefill,
            cache_length=cache_length,
            quality=not no_quality,
            progress=_progress,
            requantize=requantize,
        )
    b = res.manifest["build"]
    click.echo(
        f"built {res.bundle.name}: {res.manifest['bundle']['bytes']:,} bytes in {b['seconds']:.1f} s, "
        f"peak RSS {b['peak_rss_bytes'] / 2**20:.0f} MiB",
        err=True,
    )
    click.echo(str(res.bundle))
    return 0
