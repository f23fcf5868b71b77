"""`edgekit bench --device NAME`: bench a bundle against its FP16 baseline on a device, report and gate."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.gate import gate_options
from edgekit.errors import UsageError


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
def command(device: str, bundle: Path | None, model: str | None, text_only: bool, baseline: Path | None,
            no_baseline: bool, dist: Path, warmup: int, reps: int, cooldown: float, prefill: int, decode: int,
            threads: int | None, backend: str | None, mode: str, fail_on: tuple[str, ...], profile_thresholds: bool,
            allow_mismatch: bool, junit: Path | None, as_json: bool, output: Path, accept_new_host_key: bool) -> int:
    """Benchmark a bundle against its FP16 baseline on DEVICE, write results/<time>-<device>/, gate.

    Runs are interleaved (candidate, baseline, ...) after warmups; traces are pulled
    and kept. Exit codes: 0 pass, 1 gate failed, 2 usage, 3 device/run failure,
    4 not comparable / insufficient data.
    """
    from edgekit.bench.session import BenchPlan, bundle_info, default_baseline, latest_build, run_bench
    from edgekit.cli.gate import profile_thresholds as prof_thr
    from edgekit.cli.gate import without_baseline
    from edgekit.devices.profiles import load_profile
    from edgekit.fsutil import atomic_write_text
    from edgekit.report.context import build_context
    from edgekit.report.folder import write_views
    from edgekit.report.junit import render_junit
    from edgekit.report.plots import preload as preload_reports
    from edgekit.report.terminal import render_context
    from edgekit.errors import NotComparable
    from edgekit.results.compare import NOT_COMPARABLE
    from edgekit.results.gate import merge_thresholds, parse_thresholds, undecided_gate

    if (bundle is None) == (model is None):
        raise UsageError("give exactly one of --bundle PATH or --model MODEL",
                         hint="e.g. edgekit bench --device host --model tiny --text-only")
    if text_only and model is None:
        raise UsageError("--text-only goes with --model", hint="with --bundle, pass the text-only bundle's path")
    if baseline is not None and no_baseline:
        raise UsageError("--baseline and --no-baseline exclude each other")
    cli_thresholds = parse_thresholds(fail_on, source="command line")  # bad syntax: exit 2 before any work
    profile = load_profile(device)
    candidate = bundle if bundle is not None else latest_build(dist, model, text_only)
    if baseline is None and not no_baseline:
        baseline = default_baseline(bundle_info(candidate), dist)
    prof = without_baseline(prof_thr(profile.name) if profile_thresholds else [], baseline is not None)
    thresholds = merge_thresholds(prof, cli_thresholds)
    from edgekit.results.compare import ALPHA, min_p_value
    from edgekit.results.gate import RELATIVE

    if baseline is not None and any(t.kind == RELATIVE for t in thresholds) and reps >= 1 \
            and (reps < 3 or min_p_value(reps, reps) > ALPHA):
        click.echo(f"note: with {reps} runs per bundle no change can be significant at p<{ALPHA}; relative "
                   "thresholds will be undecided (exit 4). Use --reps 4 or more.", err=True)
    plan = BenchPlan(candidate=candidate, baseline=baseline, warmup=warmup, reps=reps, cooldown_s=cooldown,
                     prefill=prefill, decode=decode, threads=threads, backend=backend, mode=mode,
                     allow_mismatch=allow_mismatch, output=output, accept_new_host_key=accept_new_host_key)
    holder: dict = {}

    def finalize(folder: Path, result) -> None:
        ctx = build_context(result, thresholds, allow_mismatch=allow_mismatch)
        holder["ctx"] = ctx
        write_views(folder, ctx, junit=folder / "junit.xml" if junit is not None else None)
        if junit is not None and ctx.gate is not None:
            atomic_write_text(junit, render_junit(ctx.gate, timestamp=result.created))

    try:
        outcome = run_bench(profile, plan, finalize=finalize, background=preload_reports)
    except NotComparable as exc:
        if junit is not None:  # CI still gets one testcase per threshold, each "not comparable"
            gate = undecided_gate(thresholds, exc.message, profile.name, NOT_COMPARABLE)
            atomic_write_text(junit, render_junit(gate))
        raise
    ctx = holder["ctx"]
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
    return ctx.gate.exit_code if ctx.gate is not None else 0
