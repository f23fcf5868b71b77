"""`edgekit bench`, `gate` and `report` as library calls: resolve the thresholds, (run,) gate, write.

:func:`run_gated_bench` takes a :class:`BenchRequest` (everything the command line can set)
and returns a :class:`GatedBench`: the session's outcome (result records and folder) and the
report context (comparison, gate, warnings). :func:`gate_stored` does the same for a stored
result (``edgekit gate`` and ``edgekit report``). The CLI parses, calls one and renders.

Order matters for the user: option conflicts and threshold syntax fail before any work (exit
2), then the device profile loads, then the bundles are chosen. A run whose baseline is of
another model is not comparable (exit 4); with ``junit`` the CI still gets one testcase per
threshold, each "not comparable", before the error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from edgekit.bench.session import BenchOutcome, BenchPlan, stderr_progress
from edgekit.errors import EXIT_OK, NotComparable, UsageError


@dataclass(frozen=True)
class BenchRequest:
    """What `edgekit bench` was asked: the bundles, the plan, the thresholds and the outputs."""

    device: str
    bundle: Path | None = None
    model: str | None = None
    text_only: bool = False
    baseline: Path | None = None
    no_baseline: bool = False
    dist: Path = Path("dist")
    warmup: int = 1
    reps: int = 5
    cooldown: float = 0.0
    prefill: int = 128
    decode: int = 64
    threads: int | None = None
    backend: str | None = None
    mode: str = "cold"
    fail_on: tuple[str, ...] = ()
    profile_thresholds: bool = True
    allow_mismatch: bool = False
    junit: Path | None = None
    output: Path = Path("results")
    accept_new_host_key: bool = False

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "BenchRequest":
        """From the command's parsed options (names as in the dataclass; others are refused)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown bench options: {', '.join(unknown)}")
        return cls(**options)

    def check(self) -> None:
        """Option conflicts, before any work."""
        if (self.bundle is None) == (self.model is None):
            raise UsageError("give exactly one of --bundle PATH or --model MODEL",
                             hint="e.g. edgekit bench --device host --model tiny --text-only")
        if self.text_only and self.model is None:
            raise UsageError("--text-only goes with --model", hint="with --bundle, pass the text-only bundle's path")
        if self.baseline is not None and self.no_baseline:
            raise UsageError("--baseline and --no-baseline exclude each other")


@dataclass(frozen=True)
class GatedBench:
    outcome: BenchOutcome
    context: Any  # edgekit.report.context.ReportContext: comparison, gate, warnings

    @property
    def exit_code(self) -> int:
        gate = self.context.gate
        return gate.exit_code if gate is not None else EXIT_OK


def significance_note(reps: int, has_baseline: bool, thresholds) -> str | None:
    """Why relative thresholds cannot fail with so few runs (None when they can)."""
    from edgekit.results.compare import ALPHA, min_p_value
    from edgekit.results.gate import RELATIVE

    if has_baseline and any(t.kind == RELATIVE for t in thresholds) and reps >= 1 \
            and (reps < 3 or min_p_value(reps, reps) > ALPHA):
        return (f"note: with {reps} runs per bundle no change can be significant at p<{ALPHA}; relative "
                "thresholds will be undecided (exit 4). Use --reps 4 or more.")
    return None


def run_gated_bench(req: BenchRequest, note: Callable[[str], None] = stderr_progress) -> GatedBench:
    """Bench ``req``'s candidate (against its baseline) on ``req.device``, write the result folder
    and its views (and ``req.junit``), and gate it. ``note`` gets the notes for people."""
    from edgekit.bench.session import bundle_info, default_baseline, latest_build, run_bench
    from edgekit.devices.profiles import load_profile
    from edgekit.fsutil import atomic_write_text
    from edgekit.report.context import build_context
    from edgekit.report.folder import write_views
    from edgekit.report.junit import render_junit
    from edgekit.report.plots import preload as preload_reports
    from edgekit.results.compare import NOT_COMPARABLE
    from edgekit.results.gate import parse_thresholds, resolve_thresholds, undecided_gate

    req.check()
    parse_thresholds(req.fail_on, source="command line")  # bad syntax: exit 2 before any work
    profile = load_profile(req.device)
    candidate = req.bundle if req.bundle is not None else latest_build(req.dist, req.model, req.text_only)
    baseline = req.baseline
    if baseline is None and not req.no_baseline:
        baseline = default_baseline(bundle_info(candidate), req.dist)
    # the profile is the one loaded above (its name may differ from what was typed)
    thresholds = resolve_thresholds(req.fail_on, profile.name, baseline is not None, req.profile_thresholds, note)
    msg = significance_note(req.reps, baseline is not None, thresholds)
    if msg:
        note(msg)
    plan = BenchPlan(candidate=candidate, baseline=baseline, warmup=req.warmup, reps=req.reps,
                     cooldown_s=req.cooldown, prefill=req.prefill, decode=req.decode, threads=req.threads,
                     backend=req.backend, mode=req.mode, allow_mismatch=req.allow_mismatch, output=req.output,
                     accept_new_host_key=req.accept_new_host_key)
    holder: dict = {}

    def finalize(folder: Path, result) -> None:
        ctx = build_context(result, thresholds, allow_mismatch=req.allow_mismatch)
        holder["ctx"] = ctx
        write_views(folder, ctx, junit=folder / "junit.xml" if req.junit is not None else None)
        if req.junit is not None and ctx.gate is not None:
            atomic_write_text(req.junit, render_junit(ctx.gate, timestamp=result.created))

    try:
        outcome = run_bench(profile, plan, finalize=finalize, background=preload_reports)
    except NotComparable as exc:
        if req.junit is not None:  # CI still gets one testcase per threshold, each "not comparable"
            gate = undecided_gate(thresholds, exc.message, profile.name, NOT_COMPARABLE)
            atomic_write_text(req.junit, render_junit(gate))
        raise
    return GatedBench(outcome, holder["ctx"])


@dataclass(frozen=True)
class StoredGate:
    result: Any  # edgekit.results.records.BenchResult
    thresholds: tuple  # edgekit.results.gate.Threshold, as applied
    context: Any  # edgekit.report.context.ReportContext

    @property
    def exit_code(self) -> int:
        gate = self.context.gate
        return gate.exit_code if gate is not None else EXIT_OK


def gate_stored(path: Path, fail_on: tuple[str, ...] = (), profile_thresholds: bool = True,
                allow_mismatch: bool = False, junit: Path | None = None,
                note: Callable[[str], None] = stderr_progress) -> StoredGate:
    """Gate a stored result (a result.json or its results/<time>-<device>/ folder): the command
    line's thresholds and its device profile's (see :func:`edgekit.results.gate.resolve_thresholds`),
    the comparison of its candidate with its baseline; ``junit``: also write the verdict there."""
    from edgekit.fsutil import atomic_write_text
    from edgekit.report.context import build_context
    from edgekit.report.junit import render_junit
    from edgekit.results.gate import resolve_thresholds
    from edgekit.results.records import load_result

    res = load_result(path)
    thresholds = resolve_thresholds(fail_on, res.device.profile, "baseline" in res.bundles, profile_thresholds, note)
    ctx = build_context(res, thresholds, allow_mismatch=allow_mismatch)
    if junit is not None and ctx.gate is not None:
        atomic_write_text(junit, render_junit(ctx.gate, timestamp=res.created))
    return StoredGate(res, tuple(thresholds), ctx)
