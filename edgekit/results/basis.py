"""How many readings a figure rests on, and when that is too few to mean anything.

Every metric of a run is kept with a :class:`Basis`: the number of readings it was
computed from (memory samples of that kind in the run's process, token stamps,
iterations, scored tokens), what a reading is, the minimum the figure needs, and,
when it falls short, why. A figure below its minimum is absent (``None``), never a
number: a peak of one memory reading taken before the model loaded is not a peak.

Minimums (module constants, shown in the reports' reasons):

* sampled memory peaks (``/proc/PID/status`` RSS kinds, ``smaps_rollup`` Pss):
  :data:`MIN_MEM_SAMPLES` readings in the run's process (the first reading is often of the
  harness's child before it became the runner, the second may fall in the load). The harness reads Pss only
  about once a second (``-p PSS_MS``), so a run shorter than ~2 s has no Pss peak;
* a runtime's own peak report (native ``Peak system ram usage``): one report;
* token latency percentile ``pQ``: at least ``max(MIN_TOKEN_STAMPS, ceil(100 / (100 - Q)))``
  stamps, so at least one stamp lies beyond the percentile (p99 needs 100 tokens);
  and the stamps must time tokens, not stream chunks (:func:`chunked_gaps`);
* quality figures: :data:`MIN_QUALITY_TOKENS` scored tokens when the manifest says
  how many (with fewer, one token moves top-1 agreement by more than 0.01, a quarter of
  the band between the 0.95 the gate requires and the 0.99 called healthy).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

MIN_MEM_SAMPLES = 3
MIN_TOKEN_STAMPS = 8
MIN_QUALITY_TOKENS = 100
# a gap shorter than this share of the run's mean gap is a token delivered together with
# the previous one (no decode step is ten times faster than the average one of the same run)
CHUNK_GAP_FRACTION = 0.1
# stamps are flagged bursty when at least this share of the gaps (after the first) are chunked
BURSTY_SHARE = 0.10
# ... or when the first stamp comes after more than this share of the whole decode time
HELD_BACK_SHARE = 0.5

MEM_HINTS = {
    "PSS readings": "Pss is read from smaps_rollup only about once a second (harness -p), "
                    "so runs shorter than about 2 s get too few readings",
}


@dataclass(frozen=True)
class Basis:
    """What one figure rests on. ``reason`` is set exactly when the figure is absent."""

    samples: int | None  # readings the figure rests on; None: not recorded (results older than schema 2)
    of: str  # what a reading is: "PSS readings", "token stamps", "iterations", ...
    minimum: int = 1
    reason: str | None = None
    flag: str | None = None  # "bursty" when token stamps arrive in chunks

    @property
    def valid(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"samples": self.samples, "of": self.of, "minimum": self.minimum, "reason": self.reason}
        if self.flag:
            d["flag"] = self.flag
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Basis":
        n = d.get("samples")
        return cls(None if n is None else int(n), str(d.get("of") or "readings"), int(d.get("minimum") or 1),
                   d.get("reason"), d.get("flag"))


def count_basis(n: int, of: str, minimum: int, hint: str | None = None) -> Basis:
    """A figure resting on ``n`` readings; absent below ``minimum``."""
    if n >= minimum:
        return Basis(n, of, minimum)
    reason = f"{n} {of[:-1] if n == 1 and of.endswith('s') else of} (at least {minimum} needed)"
    if hint:
        reason += f": {hint}"
    return Basis(n, of, minimum, reason)


def mem_basis(n: int, of: str) -> Basis:
    """A sampled memory peak of ``n`` readings of one kind."""
    return count_basis(n, of, MIN_MEM_SAMPLES, MEM_HINTS.get(of))


def min_stamps(q: float) -> int:
    """Token stamps a ``q``-th percentile needs: one stamp at least must lie beyond it."""
    return max(MIN_TOKEN_STAMPS, math.ceil(100.0 / (100.0 - q) - 1e-9))


def chunked_gaps(gaps: Sequence[float]) -> int:
    """How many gaps after the first are far shorter than the run's mean gap (tokens that
    arrived in one stream chunk with the previous one). The mean, not the median: when
    tokens come in pairs, half the gaps are near zero and the median is one of them."""
    later = [g for g in gaps[1:] if g is not None]
    if len(later) < 2 or not gaps:
        return 0
    mean = sum(gaps) / len(gaps)
    return sum(1 for g in later if g < CHUNK_GAP_FRACTION * mean)


def bursty(gaps: Sequence[float]) -> str | None:
    """Why the stamps time stream chunks rather than tokens, or None.

    Two shapes: many gaps far below the run's mean gap (tokens delivered in small
    chunks), or a first gap holding most of the decode time (tokens held back and
    delivered in one burst: the later gaps are callback overhead, not decode steps).
    """
    k = chunked_gaps(gaps)
    n = max(0, len(gaps) - 1)
    if n and k / n >= BURSTY_SHARE:
        return ("token stamps arrive in bursts (gaps far under the run's mean gap): "
                "they time stream callbacks, not tokens")
    total = sum(gaps)
    if len(gaps) >= MIN_TOKEN_STAMPS and total > 0 and gaps[0] > HELD_BACK_SHARE * total:
        return ("token stamps arrive in one burst (the first stamp came after most of the decode time): "
                "they time stream callbacks, not tokens")
    return None


def token_basis(stamps: int, q: float, burst: str | None = None, timing: str | None = None) -> Basis:
    """Basis of a token-latency percentile over ``stamps`` per-token gaps."""
    if timing:
        return Basis(stamps, "token stamps", min_stamps(q), f"no per-token stamps ({timing})", "bursty")
    if burst:
        return Basis(stamps, "token stamps", min_stamps(q), burst, "bursty")
    if not stamps:
        return Basis(0, "token stamps", min_stamps(q),
                     "no per-token stamps recorded (the litert_lm runner stamps tokens only with --token-times: "
                     "the stream callback slows decode; native binaries print none)")
    hint = f"p{q:g} of fewer stamps is the largest gap, not a percentile (more --decode tokens)"
    return count_basis(stamps, "token stamps", min_stamps(q), hint)


def quality_basis(record: Mapping[str, Any] | None, name: str) -> Basis:
    """Basis of a manifest quality figure: the tokens it was scored on."""
    rec = record if isinstance(record, Mapping) else {}
    tokens = rec.get("tokens")
    if tokens is None or isinstance(tokens, bool):
        return Basis(None, "scored tokens", MIN_QUALITY_TOKENS)
    try:
        n = int(tokens)
    except (TypeError, ValueError):
        return Basis(None, "scored tokens", MIN_QUALITY_TOKENS)
    return count_basis(n, "scored tokens", MIN_QUALITY_TOKENS, "evaluate on more text (edgekit eval --max-tokens)")


_COUNT_REASON = re.compile(r"^(\d+) (.+?) \(at least (\d+) needed\)(.*)$", re.S)


def summarize_reasons(reasons: Sequence[str | None], total: int) -> str | None:
    """'n/a in 5 of 5 measured runs: 1-2 PSS readings (at least 3 needed): ...' over the runs'
    reasons; reasons that differ only in their count are merged into a range."""
    got = [r for r in reasons if r]
    if not got:
        return None
    groups: dict[tuple, list[int]] = {}
    order: list[tuple] = []
    for r in got:
        m = _COUNT_REASON.match(r)
        if m:
            of = m.group(2) if m.group(2).endswith("s") or m.group(1) != "1" else m.group(2) + "s"
            key: tuple = ("count", of, m.group(3), m.group(4))
        else:
            key = ("text", r)
        if key not in groups:
            groups[key] = []
            order.append(key)
        if m:
            groups[key].append(int(m.group(1)))
    parts = []
    for key in order:
        if key[0] == "text":
            parts.append(key[1])
            continue
        _, of, minimum, tail = key
        lo, hi = min(groups[key]), max(groups[key])
        n = f"{lo}" if lo == hi else f"{lo}-{hi}"
        word = of[:-1] if lo == hi == 1 and of.endswith("s") else of
        per = " per run" if total > 1 else ""
        parts.append(f"{n} {word}{per} (at least {minimum} needed){tail}")
    head = f"n/a in {len(got)} of {total} measured run{'' if total == 1 else 's'}"
    return f"{head}: " + "; ".join(parts)
