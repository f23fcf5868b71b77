"""`edgekit sweep MODEL`: which decoder layers tolerate 2-bit MLPs (one build per layer group vs FP16)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.errors import EXIT_OK
from edgekit.results.evaluation import SweepResult


def render_table(res: "SweepResult") -> str:
    head = ("2-bit MLPs", "types", "ppl_ratio", "top1", "KL", "ppl vs ref", "verdict")
    lines = []
    for r in res.rows:
        types = "".join("F" if t == "full_attention" else "s" for t in r.layer_types)
        if r.decode_layers:
            types += f" kv-shared:{len(r.decode_layers)}"
        verdict = {True: "tolerates", False: "sensitive", None: "-"}[r.tolerates_2bit]
        lines.append((r.label, types or "-", f"{r.ppl_ratio:.4f}", f"{r.top1_agreement:.3f}",
                      f"{r.kl_mean:.4f}", f"{100 * r.ppl_increase_vs_reference:+.2f}%", verdict))
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in lines]
    out.append(
        f"fp16 perplexity {res.ppl_fp16:.3f} over {res.tokens} tokens; reference = {res.scheme} with every "
        f"MLP at {res.reference_mlp_bits} bits; 'tolerates' = perplexity within "
        f"{100 * res.tolerance:.1f}% of the reference; types: s sliding, F full attention; "
        f"{res.scheme} puts layers {list(res.decode_layers)} (KV-shared) at 2 bits"
    )
    return "\n".join(out)


@click.command(help="Find which decoder layers tolerate 2-bit MLPs: for each group of layers, build MODEL with "
               "that group's MLPs at 2 bits and every other MLP at the scheme's width (4 for wNa8o8), score it "
               "against the FP16 build and print a table. One cached float export serves every build.")
@click.argument("model")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Hugging Face checkpoint folder (default: the preset's shipped weights)")
@click.option("--scheme", default="wNa8o8", show_default=True, help="scheme to start from (name or TOML file)")
@click.option("--groups", type=click.IntRange(min=1), default=None, help="number of consecutive layer groups")
@click.option("--group-size", type=click.IntRange(min=1), default=None, help="layers per group")
@click.option("--mlp-bits", type=click.Choice(["4", "8"]), default=None,
              help="width of the MLPs outside the 2-bit group (default: the scheme's non-decode MLP width)")
@click.option("--tolerance", type=click.FloatRange(min=0.0), default=0.02, show_default=True,
              help="largest relative perplexity rise over the reference that still counts as tolerated")
@click.option("--text-only/--multimodal", default=True, show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=Path("dist/sweep"), show_default=True,
              help="where the sweep's bundles go (earlier builds there are reused)")
@click.option("--text", type=click.Path(path_type=Path), default=None, help="evaluation text (default: shipped)")
@click.option("--max-tokens", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--no-scheme-row", is_flag=True, help="do not also build the scheme as shipped")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="also write the JSON result here")
def command(model, mlp_bits, no_scheme_row, text, as_json, out, **options) -> int:
    from edgekit.builder.sweep import run_sweep
    from edgekit.errors import UsageError
    from edgekit.fsutil import atomic_write_json

    if text is not None and not text.is_file():
        raise UsageError(f"evaluation text not found: {text}", hint="pass an existing UTF-8 text file")
    # the other options are run_sweep()'s keyword arguments under the same names
    res = run_sweep(model, mlp_bits=int(mlp_bits) if mlp_bits else None, include_scheme=not no_scheme_row, text=text,
                    progress=lambda s: click.echo(s, err=True), **options)
    if out is not None:
        atomic_write_json(out, res.to_dict())
    click.echo(json.dumps(res.to_dict(), indent=2) if as_json else render_table(res))
    return EXIT_OK
