"""Thresholds -> per-threshold verdicts -> one exit code.

Threshold syntax (device profile ``[gate] fail_on`` / ``budget``, or ``--fail-on``):

* relative to the baseline: ``decode_tps:-5%`` (fails when the candidate's median
  is more than 5% below the baseline's), ``peak_anon_mb:+10%`` (more than 10% above);
* absolute budgets on the candidate: ``peak_anon_mb<=1000``, ``top1_agreement>=0.90``,
  ``ppl_ratio<=1.10`` (operators ``<=``, ``<``, ``>=``, ``>``).

This is the one threshold language: ``edgekit gate``, ``bench`` and ``report`` apply it to a
bench result (:func:`evaluate`), ``edgekit eval`` applies its absolute form to one quality
record (:func:`check_record`, metrics of :data:`edgekit.results.metrics.EVAL_METRICS`), and
the benchmark scripts hold their targets with :func:`compare` (plus ``within``, for ratios
that should stay near 1, which only code can write).

A relative threshold fails only when the change is statistically significant
(Mann-Whitney U, see :mod:`edgekit.results.compare`) AND past the threshold. An
absolute budget fails when the candidate's median over measured runs (for
quality metrics: the manifest value) breaks it.

A threshold on a figure that has no valid measurement is undecided, never passed:
no quality record in the manifest, or a run metric that rests on too few readings
(edgekit/results/basis.py) in more than half of the measured runs (a peak PSS of
one reading taken before the model loaded is not a number to hold against a budget).
The check's message and the gate's reason say why.

Exit codes (edgekit/errors.py): 0 pass, 1 a threshold failed, 2 bad threshold
syntax (UsageError), 3 the bench itself failed, 4 not comparable / insufficient
data to decide a threshold (and none failed).
"""

from __future__ import annotations

import math
import operator
import re
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from edgekit.errors import (
    EXIT_DEVICE, EXIT_GATE_FAILED, EXIT_NOT_COMPARABLE, EXIT_OK, ConfigError, EdgekitError, UsageError,
)
from edgekit.results.compare import BETTER, INSUFFICIENT, NOT_COMPARABLE, WORSE, Comparison
from edgekit.results.metrics import METRICS, RUN, Metric
from edgekit.results.records import BenchResult, CANDIDATE
from edgekit.results.stats import fmt_value, summarize

RELATIVE = "relative"
ABSOLUTE = "absolute"

PASS = "pass"
FAIL = "fail"
UNDECIDED = "undecided"  # not comparable / insufficient data / nothing measured

# the gate's verdicts under the names its callers use; the codes are edgekit.errors' table
EXIT_PASS = EXIT_OK
EXIT_FAIL = EXIT_GATE_FAILED
EXIT_INFRA = EXIT_DEVICE
EXIT_UNDECIDED = EXIT_NOT_COMPARABLE

_REL = re.compile(r"^\s*([a-z0-9_]+)\s*:\s*([+-])\s*(\d+(?:\.\d+)?)\s*%\s*$")
_ABS = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
WITHIN = "within"  # |value - 1| <= bound: a ratio that should stay near 1 (benchmark scripts)

SYNTAX_HINT = ("thresholds look like decode_tps:-5% or peak_anon_mb:+10% (relative to the baseline) "
               "or peak_anon_mb<=1000, top1_agreement>=0.90 (absolute)")


@dataclass(frozen=True)
class Threshold:
    metric: str
    kind: str  # RELATIVE | ABSOLUTE
    op: str  # relative: "+" or "-"; absolute: <=, <, >=, >
    value: float  # relative: fraction (0.05); absolute: in the metric's unit
    text: str
    source: str = "command line"

    def describe(self) -> str:
        return self.text

    def __str__(self) -> str:
        """Relative: as written; absolute: the bound in its shortest form (``ppl_ratio<=1.1``)."""
        return self.text if self.kind == RELATIVE else f"{self.metric}{self.op}{self.value:g}"

    def holds(self, value: float | None) -> bool | None:
        """An absolute threshold on one figure: True/False, None when there is no figure."""
        return compare(self.op, value, self.value)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "kind": self.kind, "op": self.op, "value": self.value,
                "text": self.text, "source": self.source}


def compare(op: str, value: float | None, bound: float) -> bool | None:
    """``value OP bound`` (``<=``, ``<``, ``>=``, ``>``, or :data:`WITHIN`); None when there is no
    figure (missing, not a number, NaN): a gate never passes it."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    if op == WITHIN:
        return abs(float(value) - 1.0) <= bound
    return _OPS[op](float(value), bound)


def parse_threshold(text: str, source: str = "command line",
                    metrics: Mapping[str, Metric] = METRICS) -> Threshold:
    """Parse one threshold on one of ``metrics``; bad syntax raises UsageError (command line)
    or ConfigError (a file). A metric that is not measured per run (one figure per bundle,
    from its quality record) takes only an absolute bound."""
    err = UsageError if source == "command line" else ConfigError
    t = str(text).strip()
    m = _REL.match(t)
    if m:
        name, sign, num = m.group(1), m.group(2), float(m.group(3))
        _check_metric(name, t, source, err, metrics)
        if metrics[name].source != RUN:
            raise err(f"bad threshold {t!r} ({source}): {name} is read from the manifest, "
                      "so it takes an absolute budget, not a change against the baseline",
                      hint=f"write e.g. {name}{'>=' if metrics[name].higher_is_better else '<='}VALUE")
        if num == 0:
            raise err(f"bad threshold {t!r} ({source}): a relative threshold of 0% fails on noise",
                      hint=SYNTAX_HINT)
        return Threshold(name, RELATIVE, sign, num / 100.0, f"{name}:{sign}{m.group(3)}%", source)
    m = _ABS.match(t)
    if m:
        name, op, num = m.group(1), m.group(2), float(m.group(3))
        _check_metric(name, t, source, err, metrics)
        return Threshold(name, ABSOLUTE, op, num, f"{name}{op}{m.group(3)}", source)
    raise err(f"bad threshold {t!r} ({source})", hint=SYNTAX_HINT)


def _check_metric(name: str, text: str, source: str, err: type, metrics: Mapping[str, Metric]) -> None:
    if name not in metrics:
        raise err(f"bad threshold {text!r} ({source}): unknown metric {name!r}",
                  hint="known metrics: " + ", ".join(metrics))


def parse_thresholds(texts: Iterable[str], source: str = "command line",
                     metrics: Mapping[str, Metric] = METRICS) -> list[Threshold]:
    out: list[Threshold] = []
    for t in texts:
        for part in str(t).split(","):  # allow "a:-5%,b<=10" in one option
            if part.strip():
                out.append(parse_threshold(part, source, metrics))
    return out


def merge_thresholds(profile: Sequence[Threshold], cli: Sequence[Threshold]) -> list[Threshold]:
    """Command-line thresholds replace the profile's for the same metric and kind."""
    overridden = {(t.metric, t.kind) for t in cli}
    return [t for t in profile if (t.metric, t.kind) not in overridden] + list(cli)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def profile_thresholds(profile_name: str, note: Callable[[str], None] | None = _stderr) -> list[Threshold]:
    """The device profile's ``[gate] fail_on`` and ``budget``; a missing profile gives none
    (``note`` says so; None: silently)."""
    from edgekit.devices.profiles import load_profile

    try:
        profile = load_profile(profile_name)
    except EdgekitError as exc:
        if isinstance(exc, ConfigError) and "not found" not in exc.message and "unknown" not in exc.message:
            raise
        if note is not None:
            note(f"note: no thresholds from device profile {profile_name!r} ({exc.message})")
        return []
    return parse_thresholds([*profile.gate.fail_on, *profile.gate.budget], source=f"profile {profile.name}")


def without_baseline(profile: list[Threshold], has_baseline: bool,
                     note: Callable[[str], None] = _stderr) -> list[Threshold]:
    """Without a baseline the profile's relative thresholds cannot apply; its budgets still do."""
    if has_baseline:
        return profile
    dropped = [t.text for t in profile if t.kind == RELATIVE]
    if dropped:
        note("note: no baseline, so the profile's relative thresholds are not applied: " + ", ".join(dropped))
    return [t for t in profile if t.kind != RELATIVE]


def resolve_thresholds(fail_on: Iterable[str], device: str, has_baseline: bool, use_profile: bool = True,
                       note: Callable[[str], None] = _stderr) -> list[Threshold]:
    """The thresholds a gate applies: the command line's (parsed first: bad syntax fails before
    any work), and the device profile's unless ``use_profile`` is off, its relative ones only
    with a baseline; the command line's replace the profile's for the same metric and kind."""
    cli = parse_thresholds(fail_on, source="command line")
    prof = profile_thresholds(device, note) if use_profile else []
    return merge_thresholds(without_baseline(prof, has_baseline, note), cli)


@dataclass(frozen=True)
class Check:
    threshold: Threshold
    status: str  # PASS | FAIL | UNDECIDED
    message: str
    observed: float | None = None  # relative: change (fraction); absolute: value
    p_value: float | None = None
    verdict: str | None = None  # comparison verdict for relative thresholds

    def to_dict(self) -> dict:
        return {"threshold": self.threshold.to_dict(), "status": self.status, "message": self.message,
                "observed": self.observed, "p_value": self.p_value, "verdict": self.verdict}


@dataclass(frozen=True)
class GateResult:
    checks: tuple[Check, ...]
    exit_code: int
    reason: str
    device: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_PASS

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def undecided(self) -> list[Check]:
        return [c for c in self.checks if c.status == UNDECIDED]

    def to_dict(self) -> dict:
        return {"exit_code": self.exit_code, "reason": self.reason, "device": self.device,
                "checks": [c.to_dict() for c in self.checks]}


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _check_relative(t: Threshold, comparison: Comparison | None) -> Check:
    if comparison is None:
        return Check(t, UNDECIDED, f"{t.text}: no baseline to compare against", verdict=INSUFFICIENT)
    mc = comparison.get(t.metric)
    if mc is None:
        return Check(t, UNDECIDED, f"{t.text}: {t.metric} was not compared", verdict=INSUFFICIENT)
    if mc.verdict == NOT_COMPARABLE:
        return Check(t, UNDECIDED, f"{t.text}: not comparable ({mc.note})", verdict=mc.verdict)
    if mc.verdict == INSUFFICIENT or mc.change is None:
        return Check(t, UNDECIDED, f"{t.text}: insufficient data ({mc.note or 'no values'})",
                     mc.change, mc.p_value, INSUFFICIENT)
    limit = t.value if t.op == "+" else -t.value
    crossed = mc.change > limit if t.op == "+" else mc.change < limit
    significant = mc.verdict in (BETTER, WORSE)
    p = f"p={mc.p_value:.3f}"
    base = (f"{t.metric} {_pct(mc.change)} ({fmt_value(t.metric, mc.candidate.median)} vs "
            f"{fmt_value(t.metric, mc.baseline.median)}, {p})")
    if crossed and significant:
        return Check(t, FAIL, f"{base} is past {t.text} and significant", mc.change, mc.p_value, mc.verdict)
    if crossed:
        return Check(t, PASS, f"{base} is past {t.text} but not significant", mc.change, mc.p_value, mc.verdict)
    return Check(t, PASS, f"{base} is within {t.text}", mc.change, mc.p_value, mc.verdict)


def _check_absolute(t: Threshold, result: BenchResult) -> Check:
    values = result.samples(CANDIDATE, t.metric)
    quality = METRICS[t.metric].source != RUN
    why = result.na_reason(CANDIDATE, t.metric)
    if not values:
        return Check(t, UNDECIDED, f"{t.text}: no value for {t.metric} ({why or 'not measured'})",
                     verdict=INSUFFICIENT)
    runs = len(result.measured(CANDIDATE))
    if not quality and 2 * len(values) < runs:
        # the runs that happen to have a value are not a sample of the others (e.g. the longer ones)
        return Check(t, UNDECIDED, f"{t.text}: {t.metric} has a value in only {len(values)} of {runs} measured "
                                   f"runs ({why})", verdict=INSUFFICIENT)
    value = summarize(values).median
    ok = t.holds(value)
    kind = "manifest value" if quality else f"median of {len(values)} runs"
    if not quality and len(values) < runs:
        kind += f"; {why}"
    msg = f"{t.metric} = {fmt_value(t.metric, value)} ({kind}) {'meets' if ok else 'breaks'} {t.text}"
    return Check(t, PASS if ok else FAIL, msg, value)


def _why_undecided(checks: Sequence[Check]) -> str:
    """The undecided thresholds with their reasons for the gate's one-line verdict, thresholds
    undecided for the same reason named together."""
    groups: dict[str, list[str]] = {}
    for c in checks:
        msg = c.message
        prefix = f"{c.threshold.text}: "
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
        groups.setdefault(msg, []).append(c.threshold.text)
    return "; ".join(f"{', '.join(texts)} ({msg})" for msg, texts in groups.items())


def evaluate(result: BenchResult, thresholds: Sequence[Threshold], comparison: Comparison | None) -> GateResult:
    """Apply thresholds to a result and its candidate-vs-baseline comparison."""
    device = result.device.profile
    checks = []
    for t in thresholds:
        checks.append(_check_relative(t, comparison) if t.kind == RELATIVE else _check_absolute(t, result))
    checks_t = tuple(checks)
    if result.status != "ok":
        return GateResult(checks_t, EXIT_INFRA, f"the bench failed: {result.error}", device)
    fails = [c for c in checks if c.status == FAIL]
    undecided = [c for c in checks if c.status == UNDECIDED]
    if fails:
        return GateResult(checks_t, EXIT_FAIL,
                          f"gate failed: {len(fails)} of {_n(len(checks), 'threshold')} crossed: "
                          + "; ".join(c.threshold.text for c in fails)
                          + (f" (and {len(undecided)} undecided: " + "; ".join(c.threshold.text for c in undecided)
                             + ")" if undecided else ""), device)
    if undecided:
        return GateResult(checks_t, EXIT_UNDECIDED,
                          f"gate undecided: {len(undecided)} of {_n(len(checks), 'threshold')} could not be checked: "
                          + _why_undecided(undecided), device)
    if not checks:
        return GateResult(checks_t, EXIT_PASS, "no thresholds given: nothing to gate", device)
    return GateResult(checks_t, EXIT_PASS, f"gate passed: {_n(len(checks), 'threshold')} held", device)


def check_record(values: Mapping[str, object], thresholds: Sequence[Threshold]) -> GateResult:
    """Absolute thresholds on one flat record of figures (an ``edgekit eval`` result).

    There are no runs to be short of here: a threshold on a figure the record lacks (or holds
    as NaN) fails, it never passes."""
    checks = []
    for t in thresholds:
        if t.kind != ABSOLUTE:
            raise UsageError(f"bad threshold {t.text!r} ({t.source}): a single record takes absolute bounds only",
                             hint="write e.g. ppl_ratio<=1.10 or top1_agreement>=0.90")
        v = values.get(t.metric)
        ok = t.holds(v)  # type: ignore[arg-type]
        value = float(v) if ok is not None else None  # type: ignore[arg-type]
        if ok is None:
            checks.append(Check(t, FAIL, f"{t.metric} has no value: {t} never passes", value))
        else:
            msg = f"{t.metric} = {fmt_value(t.metric, value)} {'meets' if ok else 'breaks'} {t}"
            checks.append(Check(t, PASS if ok else FAIL, msg, value))
    fails = [c for c in checks if c.status == FAIL]
    if fails:
        return GateResult(tuple(checks), EXIT_FAIL, f"gate failed: {len(fails)} of {_n(len(checks), 'threshold')} "
                          "crossed: " + "; ".join(str(c.threshold) for c in fails))
    return GateResult(tuple(checks), EXIT_PASS, f"gate passed: {_n(len(checks), 'threshold')} held"
                      if checks else "no thresholds given: nothing to gate")


def undecided_gate(thresholds: Sequence[Threshold], reason: str, device: str = "",
                   verdict: str = NOT_COMPARABLE) -> GateResult:
    """A gate that could not look at any number (e.g. the baseline is of another model): exit 4."""
    checks = tuple(Check(t, UNDECIDED, f"{t.text}: {verdict} ({reason})", verdict=verdict) for t in thresholds)
    return GateResult(checks, EXIT_UNDECIDED, f"gate undecided: {reason}", device)
