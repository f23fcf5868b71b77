"""Immutable benchmark records with units, directions and provenance.

One bench writes one :class:`BenchResult`: who measured what (edgekit version,
bundles with sha256 and manifest, device identity, runtime versions, settings,
time) and every :class:`Run`, warmups kept apart from measured runs. The JSON
form carries ``schema`` = :data:`SCHEMA_VERSION`; a file with another version is
refused with a clear error instead of being half-read.

Each run metric carries its :class:`~edgekit.results.basis.Basis` (how many readings it
rests on, and why it is absent when they are too few); a figure below its minimum is
``None``, never a number. Schema 2 added ``runs[].basis`` and ``thermal.during_samples``;
a schema 1 file is still read, and its bases are recounted from the memory samples and
token stamps it stores, so an old result cannot pass a budget on a figure with no data.

Every view (Markdown, HTML, terminal, JUnit) and every computation (stats,
compare, gate) reads these records; none of them reads traces directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from edgekit.errors import ConfigError, UsageError
from edgekit.fsutil import atomic_write_json
from edgekit.results.basis import Basis, bursty, mem_basis, quality_basis, summarize_reasons, token_basis
from edgekit.results.manifest import TEXT_SUFFIX, Manifest, bundle_name
from edgekit.results.metrics import METRICS, QUALITY, QUALITY_METRICS

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: before per-metric bases; read with bases recounted from the stored samples
RESULT_KIND = "edgekit-bench-result"

CANDIDATE = "candidate"
BASELINE = "baseline"
ROLES = (CANDIDATE, BASELINE)
WARMUP = "warmup"
MEASURE = "measure"
PHASES = (WARMUP, MEASURE)


# Sampled memory peaks: metric -> (MemPoint field, what one reading is)
MEM_SOURCES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "peak_rss_mb": ("rss_mb", "RSS readings"),
    "peak_anon_mb": ("anon_mb", "RssAnon readings"),
    "peak_file_mb": ("file_mb", "RssFile readings"),
    "peak_pss_mb": ("pss_mb", "PSS readings"),
})
# Token latency percentiles: metric -> q
TOKEN_PERCENTILES: Mapping[str, float] = MappingProxyType({"token_p50_ms": 50.0, "token_p90_ms": 90.0,
                                                           "token_p99_ms": 99.0})


def finite_number(x: Any) -> float | None:
    """``x`` as a float when it is a finite number (or a string of one); else None, never 0."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


_num = finite_number


def _freeze(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


def _thaw(obj: Any) -> Any:
    """Plain JSON-able copy of nested mappings/tuples."""
    if isinstance(obj, Mapping):
        return {str(k): _thaw(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_thaw(v) for v in obj]
    return obj


@dataclass(frozen=True)
class MemPoint:
    """One memory sample of the benchmarked process, in MB (None when not sampled)."""

    t_ms: float
    rss_mb: float | None = None
    anon_mb: float | None = None
    file_mb: float | None = None
    pss_mb: float | None = None
    swap_mb: float | None = None

    FIELDS = ("t_ms", "rss_mb", "anon_mb", "file_mb", "pss_mb", "swap_mb")

    def to_list(self) -> list:
        return [getattr(self, f) for f in self.FIELDS]

    @classmethod
    def from_list(cls, row: list) -> "MemPoint":
        vals = list(row) + [None] * (len(cls.FIELDS) - len(row))
        return cls(*(_num(v) if i else float(v) for i, v in enumerate(vals[: len(cls.FIELDS)])))


@dataclass(frozen=True)
class Thermal:
    """Hottest thermal zone before, during (max) and after a run, in degrees C."""

    start_c: float | None = None
    max_c: float | None = None  # hottest reading during the run; None when none was taken during it
    end_c: float | None = None
    zone: str | None = None  # type of the zone that reached max_c
    # readings taken while the command ran (about once a second: a shorter run has none);
    # None in results older than schema 2
    during_samples: int | None = None

    def to_dict(self) -> dict:
        return {"start_c": self.start_c, "max_c": self.max_c, "end_c": self.end_c, "zone": self.zone,
                "during_samples": self.during_samples}

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "Thermal | None":
        if not d:
            return None
        n = d.get("during_samples")
        return cls(_num(d.get("start_c")), _num(d.get("max_c")), _num(d.get("end_c")), d.get("zone"),
                   None if n is None else int(n))


@dataclass(frozen=True)
class CpuFreq:
    """One CPU's frequency before, the lowest and highest during, and after a run (kHz)."""

    cpu: int
    start_khz: float | None = None
    min_khz: float | None = None
    max_khz: float | None = None
    end_khz: float | None = None

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "start_khz": self.start_khz, "min_khz": self.min_khz,
                "max_khz": self.max_khz, "end_khz": self.end_khz}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CpuFreq":
        return cls(int(d["cpu"]), _num(d.get("start_khz")), _num(d.get("min_khz")),
                   _num(d.get("max_khz")), _num(d.get("end_khz")))


@dataclass(frozen=True)
class Run:
    """One process run of one bundle through the harness.

    ``order`` is the position in the interleaved schedule (0-based, warmups
    first); ``index`` counts runs of the same role and phase.
    """

    role: str
    phase: str
    index: int
    order: int
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    token_ms: tuple[float, ...] = ()
    mem: tuple[MemPoint, ...] = ()
    thermal: Thermal | None = None
    cpufreq: tuple[CpuFreq, ...] = ()
    status: str = "ok"  # ok | failed
    error: str | None = None
    trace_dir: str | None = None  # relative to the result folder
    t_start: float | None = None  # epoch seconds
    t_end: float | None = None
    basis: Mapping[str, Basis] = field(default_factory=dict)  # metric -> what its figure rests on

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"run role must be one of {ROLES}, got {self.role!r}")
        if self.phase not in PHASES:
            raise ConfigError(f"run phase must be one of {PHASES}, got {self.phase!r}")
        object.__setattr__(self, "token_ms", tuple(float(x) for x in self.token_ms))
        object.__setattr__(self, "mem", tuple(self.mem))
        object.__setattr__(self, "cpufreq", tuple(self.cpufreq))
        basis = {k: (b if isinstance(b, Basis) else Basis.from_dict(b)) for k, b in dict(self.basis).items()}
        # a figure whose basis falls short is absent, whatever number was handed in
        clean = {k: (None if k in basis and not basis[k].valid else _num(v)) for k, v in dict(self.metrics).items()}
        object.__setattr__(self, "metrics", MappingProxyType(clean))
        object.__setattr__(self, "basis", MappingProxyType(basis))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def value(self, name: str) -> float | None:
        return self.metrics.get(name)

    def reason(self, name: str) -> str | None:
        """Why ``name`` has no value in this run (None when it has one)."""
        if self.metrics.get(name) is not None:
            return None
        b = self.basis.get(name)
        if b is not None and b.reason:
            return b.reason
        return "not measured" if self.ok else f"the run failed: {self.error}"

    def to_dict(self) -> dict:
        return {
            **{k: getattr(self, k) for k in ("role", "phase", "index", "order", "status", "error")},
            "metrics": dict(self.metrics),
            "token_ms": list(self.token_ms),
            "mem_fields": list(MemPoint.FIELDS),
            "mem": [p.to_list() for p in self.mem],
            "thermal": self.thermal.to_dict() if self.thermal else None,
            "cpufreq": [c.to_dict() for c in self.cpufreq],
            "trace_dir": self.trace_dir,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "basis": {k: b.to_dict() for k, b in self.basis.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping, schema: int = SCHEMA_VERSION) -> "Run":
        if schema < 2 or "basis" not in d:
            d = {**d, "basis": recount_basis(d)}
        return cls(
            role=d["role"],
            phase=d["phase"],
            index=int(d["index"]),
            order=int(d.get("order", d["index"])),
            metrics=d.get("metrics") or {},
            token_ms=tuple(d.get("token_ms") or ()),
            mem=tuple(MemPoint.from_list(r) for r in d.get("mem") or ()),
            thermal=Thermal.from_dict(d.get("thermal")),
            cpufreq=tuple(CpuFreq.from_dict(c) for c in d.get("cpufreq") or ()),
            status=d.get("status", "ok"),
            error=d.get("error"),
            trace_dir=d.get("trace_dir"),
            t_start=_num(d.get("t_start")),
            t_end=_num(d.get("t_end")),
            basis={k: Basis.from_dict(b) for k, b in (d.get("basis") or {}).items()},
        )


def recount_basis(d: Mapping) -> dict[str, dict]:
    """Bases of a run stored without them (schema 1), counted from what the run stores:
    its memory samples (one row per harness sample, the field empty when not read) and its
    measured token stamps. Iteration figures (init, TTFT, prefill, decode) have no stored
    count: their basis says so and keeps the value."""
    fields = list(d.get("mem_fields") or MemPoint.FIELDS)
    rows = list(d.get("mem") or ())
    metrics = d.get("metrics") or {}
    out: dict[str, dict] = {}
    for name, (attr, of) in MEM_SOURCES.items():
        if not rows:
            if _num(metrics.get(name)) is not None:  # a native binary's own peak report (no /proc samples)
                out[name] = Basis(None, "runtime peak reports").to_dict()
            continue
        i = fields.index(attr) if attr in fields else None
        n = 0 if i is None else sum(1 for r in rows if len(r) > i and _num(r[i]) is not None)
        out[name] = mem_basis(n, of).to_dict()
    stamps = [float(x) for x in d.get("token_ms") or ()]
    burst = bursty(stamps)
    for name, q in TOKEN_PERCENTILES.items():
        out[name] = token_basis(len(stamps), q, burst).to_dict()
    return out


@dataclass(frozen=True)
class BundleInfo:
    """What was benchmarked: file, checksum and the manifest read beside it."""

    path: str
    sha256: str
    bytes: int
    model: str | None = None
    scheme: str | None = None
    text_only: bool | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifest", _freeze(self.manifest))

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def label(self) -> str:
        """Short human name: ``<model>-<scheme>[-text]`` when known, else the file name."""
        if self.model and self.scheme:
            return bundle_name(self.model, self.scheme, self.text_only)
        return self.name

    @property
    def model_key(self) -> str | None:
        """Model identity used for comparability: model name plus text-only flag."""
        if self.model is None:
            return None
        return f"{self.model}-{TEXT_SUFFIX}" if self.text_only else self.model

    @cached_property
    def record(self) -> Manifest:
        """The manifest through its typed view (edgekit/results/manifest.py), read leniently."""
        return Manifest.from_dict(self.manifest, strict=False)

    def quality(self) -> dict[str, float]:
        """Quality metrics stored by the quality step in ``manifest["quality"]`` (only figures
        scored on enough tokens, see :func:`quality_basis`)."""
        q = self.record.quality or {}
        out: dict[str, float] = {}
        if isinstance(q, Mapping):
            for name in QUALITY_METRICS:
                v = q.get(name)
                if isinstance(v, Mapping):
                    v = v.get("value")
                v = _num(v)
                if v is not None and self.quality_basis(name).valid:
                    out[name] = v
        return out

    def quality_basis(self, name: str) -> Basis:
        return quality_basis(self.record.quality, name)

    def quality_reason(self, name: str) -> str | None:
        """Why the manifest gives no usable ``name`` (None when it does)."""
        if name in self.quality():
            return None
        q = self.record.quality
        if not q:
            return "the bundle's manifest has no quality record (build its fp16 baseline in the same output folder)"
        b = self.quality_basis(name)
        if not b.valid:
            return b.reason
        return f"the manifest's quality record has no {name}"

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes, "model": self.model,
                "scheme": self.scheme, "text_only": self.text_only, "manifest": _thaw(self.manifest)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "BundleInfo":
        return cls(path=d["path"], sha256=d["sha256"], bytes=int(d.get("bytes") or 0),
                   model=d.get("model"), scheme=d.get("scheme"), text_only=d.get("text_only"),
                   manifest=d.get("manifest") or {})


@dataclass(frozen=True)
class Settings:
    """How the runs were made. Prompt lengths, threads and backend are key settings."""

    prefill: int
    decode: int
    threads: int | None
    backend: str | None
    warmup: int
    reps: int
    cooldown_s: float = 0.0
    interval_ms: int | None = None
    affinity: str | None = None
    runner: str | None = None  # python | native
    # cold: one process per run (init and per-process peaks measured every run); warm: one
    # process per bundle, warmups then iterations on one engine (edgekit/bench/session.py).
    # Results of different modes are not comparable (a key setting).
    mode: str = "cold"

    def to_dict(self) -> dict:
        return {"prefill": self.prefill, "decode": self.decode, "threads": self.threads,
                "backend": self.backend, "warmup": self.warmup, "reps": self.reps,
                "cooldown_s": self.cooldown_s, "interval_ms": self.interval_ms,
                "affinity": self.affinity, "runner": self.runner, "mode": self.mode}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Settings":
        return cls(prefill=int(d["prefill"]), decode=int(d["decode"]),
                   threads=None if d.get("threads") is None else int(d["threads"]),
                   backend=d.get("backend"), warmup=int(d.get("warmup", 0)), reps=int(d.get("reps", 0)),
                   cooldown_s=float(d.get("cooldown_s") or 0.0),
                   interval_ms=None if d.get("interval_ms") is None else int(d["interval_ms"]),
                   affinity=d.get("affinity"), runner=d.get("runner"),
                   mode=str(d.get("mode") or "cold"))  # results from before modes existed were cold


@dataclass(frozen=True)
class DeviceInfo:
    """The device profile used and the identity the device reported."""

    profile: str
    transport: str
    identity: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", _freeze(self.identity))

    # identity keys that describe the hardware/OS, not the moment (free space, uptime...)
    STABLE_KEYS = ("serial", "model", "product", "device", "soc", "hardware", "manufacturer",
                   "host", "hostname", "machine", "system", "release", "os", "android_release",
                   "sdk", "abi", "cpu", "arch", "cpus", "port", "user")

    def key(self) -> dict[str, Any]:
        ident = {k: v for k, v in self.identity.items() if k in self.STABLE_KEYS}
        return {"profile": self.profile, **ident}

    @property
    def label(self) -> str:
        model = self.identity.get("model") or self.identity.get("hostname") or self.identity.get("host")
        return f"{self.profile} ({model})" if model and model != self.profile else self.profile

    def to_dict(self) -> dict:
        return {"profile": self.profile, "transport": self.transport, "identity": _thaw(self.identity)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "DeviceInfo":
        return cls(profile=d["profile"], transport=d.get("transport", "?"), identity=d.get("identity") or {})


@dataclass(frozen=True)
class BenchResult:
    """Everything one bench produced, warmups kept apart, with provenance."""

    created: str  # ISO 8601 UTC
    edgekit_version: str
    device: DeviceInfo
    settings: Settings
    bundles: Mapping[str, BundleInfo]  # role -> bundle
    runtime: Mapping[str, Any] = field(default_factory=dict)  # runner start event's runtime/host
    runs: tuple[Run, ...] = ()
    status: str = "ok"  # ok | failed
    error: str | None = None
    failed_run: int | None = None  # Run.order of the run that failed

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundles", MappingProxyType(dict(self.bundles)))
        object.__setattr__(self, "runtime", _freeze(self.runtime))
        object.__setattr__(self, "runs", tuple(self.runs))

    # --- selections -------------------------------------------------------
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r in ROLES if r in self.bundles)

    def measured(self, role: str) -> tuple[Run, ...]:
        """Measured (non-warmup), successful runs of ``role``: the only input to statistics."""
        return tuple(r for r in self.runs if r.role == role and r.phase == MEASURE and r.ok)

    def warmups(self, role: str | None = None) -> tuple[Run, ...]:
        return tuple(r for r in self.runs if r.phase == WARMUP and (role is None or r.role == role))

    def samples(self, role: str, name: str) -> list[float]:
        """Measured values of one metric for one role (quality: the single manifest value)."""
        if METRICS.get(name) is not None and METRICS[name].source == QUALITY:
            b = self.bundles.get(role)
            v = b.quality().get(name) if b else None
            return [] if v is None else [v]
        return [v for v in (r.value(name) for r in self.measured(role)) if v is not None]

    def na_reason(self, role: str, name: str) -> str | None:
        """Why some or all measured runs of ``role`` have no ``name`` (None when all have one)."""
        if METRICS.get(name) is not None and METRICS[name].source == QUALITY:
            b = self.bundles.get(role)
            return f"no {role} bundle" if b is None else b.quality_reason(name)
        runs = self.measured(role)
        if not runs:
            return f"no successful measured {role} run"
        return summarize_reasons([r.reason(name) for r in runs], len(runs))

    def with_runs(self, runs: Iterable[Run], **changes: Any) -> "BenchResult":
        return replace(self, runs=tuple(runs), **changes)

    # --- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "kind": RESULT_KIND,
            "created": self.created,
            "edgekit_version": self.edgekit_version,
            "status": self.status,
            "error": self.error,
            "failed_run": self.failed_run,
            "device": self.device.to_dict(),
            "settings": self.settings.to_dict(),
            "bundles": {role: b.to_dict() for role, b in self.bundles.items()},
            "runtime": _thaw(self.runtime),
            "metrics": {m.name: {"unit": m.unit, "direction": m.direction, "description": m.description}
                        for m in METRICS.values()},
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "<dict>") -> "BenchResult":
        if not isinstance(d, Mapping) or d.get("kind") != RESULT_KIND:
            raise ConfigError(f"{source} is not an edgekit bench result (no kind={RESULT_KIND!r})",
                              hint="pass the result.json written by `edgekit bench`")
        version = d.get("schema")
        if version not in READABLE_SCHEMAS:
            raise ConfigError(
                f"{source} has result schema {version!r}; this edgekit ({_version()}) reads schema "
                + ", ".join(str(v) for v in READABLE_SCHEMAS),
                hint="use the edgekit version that wrote it, or re-run the bench",
            )
        try:
            return cls(
                created=d["created"],
                edgekit_version=d["edgekit_version"],
                device=DeviceInfo.from_dict(d["device"]),
                settings=Settings.from_dict(d["settings"]),
                bundles={role: BundleInfo.from_dict(b) for role, b in (d.get("bundles") or {}).items()},
                runtime=d.get("runtime") or {},
                runs=tuple(Run.from_dict(r, schema=version) for r in d.get("runs") or ()),
                status=d.get("status", "ok"),
                error=d.get("error"),
                failed_run=d.get("failed_run"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source} is a malformed bench result: {type(exc).__name__}: {exc}",
                              hint="re-run the bench; do not edit result.json by hand") from None


def _version() -> str:
    from edgekit import __version__

    return __version__


def save_result(result: BenchResult, path: str | Path) -> Path:
    """Write ``result`` as versioned JSON, atomically."""
    return atomic_write_json(path, result.to_dict())


def load_result(path: str | Path) -> BenchResult:
    """Read a result.json (or a result folder holding one); refuse unknown schema versions."""
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    if not p.is_file():
        raise UsageError(f"no bench result at {path}", hint="pass a result.json or a results/<time>-<device>/ folder")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {p} as JSON: {exc}", hint="the file is damaged; re-run the bench") from None
    return BenchResult.from_dict(data, source=str(p))
