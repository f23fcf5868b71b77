"""Parse one harness output folder into plain dataclasses (see docs/contracts.md).

A folder written by ``android_harness/harness.sh`` holds ``runner.out`` /
``runner.err`` (what the command printed), ``mem.tsv``, ``thermal.tsv``,
``cpufreq.tsv`` and ``harness.tsv``. The command is either the edgekit runner (JSONL,
``edgekit/runtime/runner.py``) or a ``litert_lm_main``-compatible native benchmark
binary whose ``--benchmark`` log lines (LiteRT-LM's ``BenchmarkInfo`` printout, the
"Peak system ram usage" lines and the "Aggregated BenchmarkInfo (median of N
iterations)" block) are parsed here.

Missing files and fields become ``None`` or empty lists; nothing is invented. A run
that crashed keeps what it printed before the crash, with ``error`` saying why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.results.records import finite_number as _f

MEM_COLUMNS = ("t_ms", "vmrss_kb", "vmhwm_kb", "rss_anon_kb", "rss_file_kb", "rss_shmem_kb", "vmswap_kb", "pss_kb")


@dataclass
class Iteration:
    phase: str  # "warmup" | "measure"
    index: int
    ttft_ms: float | None
    prefill_ms: float | None
    prefill_tokens: int | None
    prefill_tps: float | None
    decode_ms: float | None
    decode_tokens: int | None
    decode_tps: float | None
    token_ms: list[float] = field(default_factory=list)  # per decoded token; empty for native binaries
    t_start: float | None = None  # epoch s (runner JSONL only)
    t_end: float | None = None
    peak_mem_mb: float | None = None  # native: "Peak system ram usage" of this iteration
    peak_private_mb: float | None = None  # native: "Peak private footprint"
    token_timing: str | None = None  # runner: why token_ms is empty (stamps were per stream chunk)


@dataclass
class MemSample:
    t_ms: int
    vmrss_kb: int | None
    vmhwm_kb: int | None
    rss_anon_kb: int | None
    rss_file_kb: int | None
    rss_shmem_kb: int | None
    vmswap_kb: int | None
    pss_kb: int | None


@dataclass
class ThermalSample:
    t_ms: int
    phase: str
    zone: str
    type: str
    temp_mc: int


@dataclass
class CpuFreqSample:
    t_ms: int
    phase: str
    cpu: int
    cur_khz: int


@dataclass
class RunTrace:
    start: dict
    init_ms: float | None
    iterations: list[Iteration]
    mem: list[MemSample]
    thermal: list[ThermalSample]
    cpufreq: list[CpuFreqSample]
    harness: dict
    exit_status: int | None
    error: str | None
    source: str | None = None  # "runner" (JSONL) | "native" | None (nothing recognisable)
    summary: dict = field(default_factory=dict)  # native: the binary's own medians, as printed
    warnings: list[str] = field(default_factory=list)
    end: dict = field(default_factory=dict)  # runner: its end record ({"event": "end", "status", "t"}), {} if none

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status in (0, None) and bool(self.measured)

    @property
    def measured(self) -> list[Iteration]:
        return [it for it in self.iterations if it.phase == "measure"]

    def peak(self, column: str) -> int | None:
        """Largest value of one mem.tsv column (e.g. ``rss_anon_kb``), None if never sampled."""
        vals = [getattr(m, column) for m in self.mem if getattr(m, column) is not None]
        return max(vals) if vals else None

    def decode_peak(self, column: str = "rss_anon_kb") -> int | None:
        """Largest reading of one mem.tsv column taken while a measured iteration decoded
        (see :func:`decode_windows` and :func:`peak_in_windows`); None without runner
        timestamps, the harness's start epoch or a reading."""
        t0 = _f(self.harness.get("start_epoch_ms"))
        if t0 is None:
            return None
        points = [(m.t_ms, getattr(m, column)) for m in self.mem]
        return peak_in_windows(points, decode_windows(self.measured, t0 / 1000.0))

    def count(self, *columns: str) -> int:
        """mem.tsv rows holding a reading of any of ``columns``: what a sampled peak rests on
        (Pss is read only about once a second, so a short run may have one Pss reading or none)."""
        return sum(1 for m in self.mem if any(getattr(m, c) is not None for c in columns))


# --- tsv files ----------------------------------------------------------------------


def _int(s: str) -> int | None:
    s = s.strip()
    if not s:
        return None
    try:
        return int(s)
    except ValueError:
        return None


def _read_tsv(path: Path, warnings: list[str]) -> list[list[str]]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        rows.append(line.split("\t"))
    return rows


def parse_mem_tsv(path: Path, warnings: list[str] | None = None) -> list[MemSample]:
    warnings = warnings if warnings is not None else []
    out = []
    for row in _read_tsv(path, warnings):
        if len(row) < len(MEM_COLUMNS):
            warnings.append(f"{path.name}: short row {row!r} (cut off?)")
            continue
        vals = [_int(v) for v in row[: len(MEM_COLUMNS)]]
        if vals[0] is None:
            continue
        out.append(MemSample(*vals))
    return out


def _typed_rows(path: Path, warnings: list[str] | None, width: int, int_cols: tuple[int, ...]):
    """Rows of at least ``width`` cells, cut to ``width``, with ``int_cols`` as ints; rows where
    one of those is empty or not a number are skipped (a sample not taken, not a zero)."""
    for row in _read_tsv(path, warnings if warnings is not None else []):
        if len(row) < width:
            continue
        cells = [_int(v) if i in int_cols else v for i, v in enumerate(row[:width])]
        if all(cells[i] is not None for i in int_cols):
            yield cells


def parse_thermal_tsv(path: Path, warnings: list[str] | None = None) -> list[ThermalSample]:
    """``t_ms phase zone type temp_mc`` rows."""
    return [ThermalSample(*cells) for cells in _typed_rows(path, warnings, 5, (0, 4))]


def parse_cpufreq_tsv(path: Path, warnings: list[str] | None = None) -> list[CpuFreqSample]:
    """``t_ms phase cpu cur_khz`` rows."""
    return [CpuFreqSample(*cells) for cells in _typed_rows(path, warnings, 4, (0, 2, 3))]


def parse_harness_tsv(path: Path) -> dict:
    out: dict[str, Any] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "\t" not in line:
            continue
        k, v = line.split("\t", 1)
        iv = _int(v)
        out[k.strip()] = iv if iv is not None else v.strip()
    return out


# --- runner JSONL -----------------------------------------------------------------------


def parse_runner_jsonl(text: str, warnings: list[str]) -> tuple[dict, float | None, list[Iteration], str | None, dict]:
    """-> (start record, init_ms, iterations, error message, end record: {} when there is none)."""
    start: dict = {}
    init_ms = None
    iterations: list[Iteration] = []
    error = None
    end: dict = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"runner.out line {n}: not JSON (truncated?): {line[:80]!r}")
            continue
        if not isinstance(rec, dict):
            continue
        ev = rec.get("event")
        if ev == "start":
            start = rec
        elif ev == "init":
            init_ms = _f(rec.get("init_ms"))
        elif ev == "run":
            if rec.get("token_timing"):
                warnings.append(f"runner run {rec.get('phase', 'measure')} {rec.get('index', len(iterations))}: "
                                f"no per-token latencies ({rec['token_timing']})")
            iterations.append(
                Iteration(
                    phase=str(rec.get("phase", "measure")),
                    index=int(rec.get("index", len(iterations))),
                    ttft_ms=_f(rec.get("ttft_ms")),
                    prefill_ms=_f(rec.get("prefill_ms")),
                    prefill_tokens=rec.get("prefill_tokens"),
                    prefill_tps=_f(rec.get("prefill_tps")),
                    decode_ms=_f(rec.get("decode_ms")),
                    decode_tokens=rec.get("decode_tokens"),
                    decode_tps=_f(rec.get("decode_tps")),
                    token_ms=[float(x) for x in rec.get("token_ms") or []],
                    t_start=_f(rec.get("t_start")),
                    t_end=_f(rec.get("t_end")),
                    token_timing=str(rec["token_timing"]) if rec.get("token_timing") else None,
                )
            )
        elif ev == "error":
            error = str(rec.get("message", "runner reported an error"))
        elif ev == "end":
            end = rec
            if rec.get("status") not in (None, "ok"):
                error = error or f"runner ended with status {rec.get('status')!r}"
    return start, init_ms, iterations, error, end


# --- native litert_lm_main --benchmark output ----------------------------------------

# absl log prefix: "I1122 21:51:37.123456   12345 litert_lm_lib.cc:123] " (also "I0000 00:00:1732...")
_ABSL_FULL = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]+\] ?")
_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)")
_DUR_UNITS_MS = {"h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}


def parse_absl_duration_ms(text: str) -> float | None:
    """absl::FormatDuration text ("1.234567s", "523.1ms", "2m3.5s", "0") -> milliseconds."""
    text = text.strip()
    if text in ("0", "-0"):
        return 0.0
    neg = text.startswith("-")
    body = text[1:] if neg else text
    pos = 0
    total = 0.0
    for m in _DUR_PART.finditer(body):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _DUR_UNITS_MS[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        return None
    return -total if neg else total


_RE = {
    "info": re.compile(r"^\s*BenchmarkInfo:\s*$"),
    "agg": re.compile(r"^\s*Aggregated BenchmarkInfo \(median of (\d+) iterations\):"),
    "phase": re.compile(r"^\s*- (Init [^:]+|Model assets|LLM metadata|Executor|Tokenizer|Session|Conversation): ([\d.]+) ms\s*$"),
    "total_init": re.compile(r"^\s*Total init time: ([\d.]+) ms"),
    "ttft": re.compile(r"^\s*Time to first token: ([\d.]+) s\s*$"),
    "turn": re.compile(r"^\s*(Prefill|Decode) Turn (\d+):\s*(?:Processed (\d+) tokens in (\S+) duration\.)?\s*$"),
    "speed": re.compile(r"^\s*(Prefill|Decode) Speed: ([\d.]+) tokens/sec\.\s*$"),
    "peak": re.compile(r"^\s*Peak system ram usage: ([\d.]+) ?MB\.?\s*$"),
    "private": re.compile(r"^\s*Peak private footprint: ([\d.]+) ?MB\.?\s*$"),
}


def _strip_prefix(line: str) -> tuple[str | None, str]:
    m = _ABSL_FULL.match(line)
    if m:
        return m.group(1), line[m.end():]
    return None, line


def parse_native_output(text: str, warnings: list[str], warmup: int = 0) -> tuple[float | None, list[Iteration], dict, str | None]:
    """Parse ``litert_lm_main``/``litert_lm_advanced_main --benchmark`` log output.

    Each ``BenchmarkInfo:`` block is one iteration (first prefill and decode turn);
    the "Peak system ram usage" / "Peak private footprint" lines that follow belong
    to it. The aggregated block goes to ``summary``. Returns
    (init_ms of the first iteration, iterations, summary, fatal message or None).
    """
    blocks: list[dict] = []
    cur: dict | None = None
    summary: dict = {}
    in_agg = False
    fatal = None
    for raw in text.splitlines():
        sev, line = _strip_prefix(raw.rstrip("\n"))
        if sev == "F" or line.startswith("Check failed") or "Segmentation fault" in line:
            fatal = fatal or line.strip()
            continue
        if sev == "E" and fatal is None and ("error" in line.lower() or "fail" in line.lower()):
            warnings.append(f"native: {line.strip()}")
        if _RE["info"].match(line):
            cur = {"phases": {}, "turns": {}, "speeds": {}}
            blocks.append(cur)
            in_agg = False
            continue
        m = _RE["agg"].match(line)
        if m:
            in_agg = True
            summary["iterations"] = int(m.group(1))
            cur = None
            continue
        if in_agg:
            if (m := _RE["ttft"].match(line)):
                summary["ttft_ms"] = float(m.group(1)) * 1000.0
            elif (m := _RE["speed"].match(line)):
                summary.setdefault(f"{m.group(1).lower()}_tps", float(m.group(2)))
            elif (m := _RE["peak"].match(line)):
                summary["peak_mem_mb"] = float(m.group(1))
            elif (m := _RE["private"].match(line)):
                summary["peak_private_mb"] = float(m.group(1))
            elif (m := _RE["phase"].match(line)):
                summary.setdefault("init_phases_ms", {})[m.group(1)] = float(m.group(2))
            continue
        if (m := _RE["peak"].match(line)):
            if blocks:
                blocks[-1]["peak_mem_mb"] = float(m.group(1))
            continue
        if (m := _RE["private"].match(line)):
            if blocks:
                blocks[-1]["peak_private_mb"] = float(m.group(1))
            continue
        if cur is None:
            continue
        if (m := _RE["phase"].match(line)):
            cur["phases"][m.group(1)] = float(m.group(2))
        elif (m := _RE["total_init"].match(line)):
            cur["total_init"] = float(m.group(1))
        elif (m := _RE["ttft"].match(line)):
            cur["ttft_s"] = float(m.group(1))
        elif (m := _RE["turn"].match(line)):
            kind, turn = m.group(1).lower(), int(m.group(2))
            if turn == 1 and m.group(3) is not None:
                cur["turns"][kind] = (int(m.group(3)), parse_absl_duration_ms(m.group(4)))
            cur["last_turn"] = (kind, turn)
        elif (m := _RE["speed"].match(line)):
            kind = m.group(1).lower()
            if cur.get("last_turn") == (kind, 1):
                cur["speeds"][kind] = float(m.group(2))

    iterations: list[Iteration] = []
    init_ms = None
    for i, b in enumerate(blocks):
        if i == 0:
            phases = b["phases"]
            if "Init Total" in phases:
                init_ms = phases["Init Total"]
            elif "total_init" in b:
                init_ms = b["total_init"]
            elif phases:
                init_ms = sum(phases.values())
        pre = b["turns"].get("prefill")
        dec = b["turns"].get("decode")
        if pre is None or dec is None or "decode" not in b["speeds"]:
            warnings.append(f"native: iteration {i + 1} is incomplete (output cut off); not used")
            continue
        pre_n, pre_ms = pre
        dec_n, dec_ms = dec
        ttft_ms = None
        if pre_ms is not None and dec_ms is not None and dec_n:
            ttft_ms = pre_ms + dec_ms / dec_n  # BenchmarkInfo::GetTimeToFirstToken, unrounded
        elif "ttft_s" in b:
            ttft_ms = b["ttft_s"] * 1000.0
        iterations.append(
            Iteration(
                phase="warmup" if len(iterations) < warmup else "measure",
                index=len(iterations) if len(iterations) < warmup else len(iterations) - warmup,
                ttft_ms=ttft_ms,
                prefill_ms=pre_ms,
                prefill_tokens=pre_n,
                prefill_tps=b["speeds"].get("prefill"),
                decode_ms=dec_ms,
                decode_tokens=dec_n,
                decode_tps=b["speeds"].get("decode"),
                token_ms=[],
                peak_mem_mb=b.get("peak_mem_mb"),
                peak_private_mb=b.get("peak_private_mb"),
            )
        )
    return init_ms, iterations, summary, fatal


# --- the folder ------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def _looks_like_jsonl(text: str) -> bool:
    """Runner JSONL, possibly after a few stray lines a library printed to stdout."""
    seen = 0
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("{") and '"event"' in s:
            return True
        seen += 1
        if seen >= 20:
            break
    return False


def parse_trace_dir(path: str | Path, native_warmup: int = 0) -> RunTrace:
    """Read one harness output folder into a :class:`RunTrace`.

    ``native_warmup``: for native binaries (which have no warmup notion of their own),
    how many leading iterations to mark as warmups.
    """
    d = Path(path)
    warnings: list[str] = []
    out = _read(d / "runner.out")
    err = _read(d / "runner.err")
    harness = parse_harness_tsv(d / "harness.tsv")
    exit_status = harness.get("exit_status") if isinstance(harness.get("exit_status"), int) else None
    start: dict = {}
    init_ms = None
    iterations: list[Iteration] = []
    summary: dict = {}
    end: dict = {}
    error = None
    source = None

    if _looks_like_jsonl(out):
        source = "runner"
        start, init_ms, iterations, error, end = parse_runner_jsonl(out, warnings)
        if error is None and not end:
            error = "runner output ends without an end record (killed or crashed)"
            if exit_status not in (None, 0):
                error += f"; exit status {exit_status}"
    elif out.strip() or err.strip():
        init_ms, iterations, summary, fatal = parse_native_output(out + "\n" + err, warnings, native_warmup)
        if iterations or summary or "BenchmarkInfo" in out + err:
            source = "native"
            start = {"runner": "native"}
        if fatal:
            error = fatal
    if not harness:
        warnings.append("harness.tsv missing: the harness did not finish (killed, or the link dropped)")
        if error is None:
            error = "harness did not finish (no harness.tsv)"
    if exit_status not in (None, 0) and error is None:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        error = f"command exited with status {exit_status}" + (f": {last}" if last else "")
    if error is None and source is None:
        error = "no benchmark output recognised in runner.out / runner.err"

    samples = {name: parse(d / f"{name}.tsv", warnings)
               for name, parse in (("mem", parse_mem_tsv), ("thermal", parse_thermal_tsv),
                                   ("cpufreq", parse_cpufreq_tsv))}
    return RunTrace(start=start, init_ms=init_ms, iterations=iterations, harness=harness, exit_status=exit_status,
                    error=error, source=source, summary=summary, warnings=warnings, end=end, **samples)


# --- decode windows ----------------------------------------------------------------------

DECODE_GRACE_MS = 200.0  # a decode shorter than the sampling interval: the first reading this soon after it began


def decode_windows(iterations: list[Iteration], t0_s: float) -> list[tuple[float, float]]:
    """Each iteration's decode turn as (start, end) in ms since ``t0_s`` (epoch s, the harness's
    start): it ends at the runner's ``t_end`` and lasts ``decode_ms``. Iterations without both
    (native binaries) have none."""
    return [((it.t_end - it.decode_ms / 1000.0 - t0_s) * 1000.0, (it.t_end - t0_s) * 1000.0)
            for it in iterations if it.t_end is not None and it.decode_ms is not None]


def peak_in_windows(points: list[tuple[float, float | None]], windows: list[tuple[float, float]],
                    grace_ms: float = DECODE_GRACE_MS) -> float | None:
    """Largest value of (t_ms, value) readings inside any window: the memory a model holds while
    it decodes (the anonymous-memory figure of the benchmarks). A window with no reading (decode
    shorter than the sampling interval) takes the first reading within ``grace_ms`` of its start.
    None when no window has a reading."""
    pts = [(t, v) for t, v in points if v is not None]
    vals = [v for t, v in pts if any(a <= t <= b for a, b in windows)]
    if not vals:
        firsts = (next((v for t, v in pts if a <= t <= a + grace_ms), None) for a, _ in windows)
        vals = [v for v in firsts if v is not None]
    return max(vals) if vals else None
