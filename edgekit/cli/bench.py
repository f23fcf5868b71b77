"""`edgekit bench --device NAME`: bench a bundle against its FP16 baseline on a device, report and gate."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.options import gate_options


@click.command("bench")
@click.option("--device", "device", required=True, metavar="NAME", help="Device profile (see `edgekit devices`).")
@click.option("--bundle", type=click.Path(path_type=Path), help="Candidate .litertlm bundle.")
@click.option("--model", metavar="MODEL", help="Candidate = the latest non-fp16 build of MODEL in --dist.")
@click.option("--text-only", is_flag=True, help="With --model: the text-only build.")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="Baseline bundle (default: the fp16 build of the same model).")
@click.option("--no-baseline", is_flag=True, help="Bench the candidate alone (no comparison, absolute budgets only).")
@click.option("--dist", type=click.Path(path_type=Path), default=Path("dist"), show_default=True,
              help="Folder of builds (dist/<model>-<scheme>[-text]/).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warmup runs per bundle (kept apart).")
@click.option("--reps", type=int, default=5, show_default=True, help="Measured runs per bundle.")
@click.option("--cooldown", "cooldown", type=float, default=0.0, show_default=True, metavar="S",
              help="Seconds of idle time between runs.")
@click.option("--prefill", type=int, default=128, show_default=True, help="Prompt tokens per run.")
@click.option("--decode", type=int, default=64, show_default=True, help="Generated tokens per run.")
@click.option("--threads", type=int, help="CPU threads (default: the profile's [cpu] threads).")
@click.option("--backend", type=click.Choice(["auto", "litert_lm", "interpreter"]),
              help="Python runner backend (default: the profile's).")
@click.option("--mode", type=click.Choice(["cold", "warm"]), default="cold", show_default=True,
              help="cold: one process per run (engine load every run: init time and per-run memory peaks); warm: one "
                   "process per bundle, --warmup then --reps iterations on one engine, like litert_lm_main "
                   "--num_iterations (steady-state speed; init and memory peaks are not per run). Results of "
                   "different modes are never compared.")
@gate_options
@click.option("--json", "as_json", is_flag=True, help="Print the result records and gate as JSON on stdout.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Parent folder of results/<time>-<device>/.")
@click.option("--accept-new-host-key", is_flag=True, help="ssh: record an unknown host key instead of refusing it.")
def command(as_json: bool, **options) -> int:
    """Benchmark a bundle against its FP16 baseline on DEVICE, write results/<time>-<device>/, gate.

    Runs are interleaved (candidate, baseline, ...) after warmups; traces are pulled
    and kept. Exit codes: 0 pass, 1 gate failed, 2 usage, 3 device/run failure,
    4 not comparable / insufficient data.
    """
    from edgekit.bench.gated import BenchRequest, run_gated_bench
    from edgekit.report.terminal import render_context

    run = run_gated_bench(BenchRequest.from_options(options), note=lambda s: click.echo(s, err=True))
    outcome, ctx = run.outcome, run.context
    for w in ctx.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps({"result": outcome.result.to_dict(), "folder": str(outcome.folder),
                               "comparison": ctx.comparison.to_dict() if ctx.comparison else None,
                               "gate": ctx.gate.to_dict() if ctx.gate else None}, indent=2))
    else:
        click.echo(render_context(ctx))
    click.echo(f"result: {outcome.folder}/result.json", err=True)
    click.echo(f"report: {outcome.folder}/report.html", err=True)
    return run.exit_code
