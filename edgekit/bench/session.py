"""One bench session: push both bundles, run them interleaved through the harness, pull traces, build records.

Schedule: warmup runs first (candidate, baseline, candidate, ... kept apart as
phase "warmup"), then measured runs interleaved candidate, baseline, candidate,
... so drift (heat, background load) hits both alike; a cool-down between runs.
Each run is one process started by ``android_harness/harness.sh`` on the device,
which samples memory, thermal zones and CPU clocks while the runner (python kind:
``edgekit.runtime.runner``; native kind: a ``litert_lm_main``-compatible binary)
benchmarks the bundle with fixed prompt lengths.

The session writes ``<output>/<UTC time>-<device>/`` holding ``traces/<run>/``
(pulled as they are, the raw evidence) and ``result.json``; the folder is built
under a ``.partial`` name and renamed into place when complete. A run that fails
stops the session: its partial traces are kept, ``result.json`` says which run
failed and why, and :class:`~edgekit.errors.BenchmarkFailed` (exit 3) is raised.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import posixpath
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekit import __version__
from edgekit.bench.traces import RunTrace, parse_trace_dir
from edgekit.errors import BenchmarkFailed, DeviceError, EdgekitError, NotComparable, UsageError
from edgekit.results.basis import Basis, bursty, count_basis, mem_basis, token_basis
from edgekit.results.manifest import Manifest, bundle_name, parse_bundle_name, read_beside
from edgekit.results.records import (
    BASELINE,
    CANDIDATE,
    MEASURE,
    MEM_SOURCES,
    TOKEN_PERCENTILES,
    WARMUP,
    BenchResult,
    BundleInfo,
    CpuFreq,
    DeviceInfo,
    MemPoint,
    Run,
    Settings,
    Thermal,
    save_result,
)
from edgekit.results.stats import percentile

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # edgekit/
HARNESS = PACKAGE_DIR.parent / "android_harness" / "harness.sh"
TRACE_FILES = ("runner.out", "runner.err", "mem.tsv", "thermal.tsv", "cpufreq.tsv", "harness.tsv")
RUNTIME_MODULES = ("__init__.py", "runner.py", "signatures.py", "litertlm_file.py")

Progress = Callable[[str], None]
# cold: every run is its own runner process (engine load, init_ms and per-process memory peaks
# measured every run); warm: one runner process per bundle running its warmups then its
# measured iterations on one engine, a new session per iteration (what litert_lm_main's
# --num_iterations does): steady-state speed, no load in the figures.
MODES = ("cold", "warm")


def stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchPlan:
    """What to run; everything a user can set on `edgekit bench`."""

    candidate: Path
    baseline: Path | None
    warmup: int = 1
    reps: int = 5
    cooldown_s: float = 0.0
    prefill: int = 128
    decode: int = 64
    threads: int | None = None  # None: the profile's [cpu] threads
    backend: str | None = None  # None: the profile's [runner] backend
    mode: str = "cold"  # cold: one process per run; warm: one process per bundle, iterations on one engine
    allow_mismatch: bool = False
    output: Path = Path("results")
    accept_new_host_key: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if self.reps < 1:
            raise UsageError(f"--reps must be >= 1, got {self.reps}")
        if self.prefill < 1 or self.decode < 1:
            raise UsageError(f"--prefill and --decode must be >= 1, got {self.prefill} and {self.decode}")
        if self.cooldown_s < 0:
            raise UsageError(f"--cooldown must be >= 0 s, got {self.cooldown_s}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")


# --- bundles ---------------------------------------------------------------------------


def read_manifest(bundle: Path) -> Manifest | None:
    """manifest.json beside the bundle (written by `edgekit build`), read leniently; None when
    absent or unreadable (the bundle is then known by its header or folder name)."""
    try:
        return read_beside(bundle)[1]
    except EdgekitError:
        return None


def _first_str(*vals: Any) -> str | None:
    for v in vals:
        if isinstance(v, str) and v:
            return v
    return None


def bundle_info(path: Path, *, check: bool = True) -> BundleInfo:
    """Checksum, size, model, scheme, text-only flag and manifest of a bundle to bench.

    With ``check`` (the default) the file is first checked as a bundle
    (:func:`edgekit.devices.bundle_check.check_bundle`: magic, header, sections, and the
    manifest beside it must agree with the file), so a bench refuses a bad file with exit
    10 before any device is touched. Model, scheme and text-only come from the manifest
    ``edgekit build`` writes (``model.preset``, ``scheme.name``, ``build.text_only``; see
    edgekit/results/manifest.py), else from the header's ``edgekit.preset`` /
    ``edgekit.scheme`` metadata, else from the folder name ``<model>-<scheme>[-text]``:
    a bundle moved to a folder of another name keeps its identity.
    """
    if not path.is_file():
        raise UsageError(f"bundle {path} does not exist", hint="build one with `edgekit build MODEL` or pass --bundle PATH")
    header_meta: dict = {}
    if check:
        from edgekit.devices.bundle_check import check_bundle

        checked = check_bundle(path)
        manifest = checked.manifest
        header_meta = checked.system_metadata
    else:
        manifest = read_manifest(path)
    m = manifest or Manifest.from_dict({}, strict=False)
    d_model, d_scheme, d_text = parse_bundle_name(path.parent.name)
    model = _first_str(m.preset, header_meta.get("edgekit.preset"), d_model)
    scheme = _first_str(m.scheme_name, header_meta.get("edgekit.scheme"), d_scheme)
    text_only = m.text_only if m.text_only is not None else d_text
    # The local sha256 cache that push uses too (edgekit.devices.hashing: keyed by path, size,
    # mtime, ctime, inode): an unchanged bundle is hashed once, not by every bench and every push.
    from edgekit.devices.hashing import local_sha256

    return BundleInfo(path=str(path), sha256=local_sha256(str(path)), bytes=path.stat().st_size, model=model,
                      scheme=scheme, text_only=text_only, manifest=m.to_dict())


def _builds(dist: Path, model: str, text_only: bool) -> list[Path]:
    """Bundles under dist/<model>-<scheme>[-text]/ for one model and text-only flag, newest first."""
    found = []
    if not dist.is_dir():
        return []
    for d in dist.iterdir():
        m, s, t = parse_bundle_name(d.name)
        if m != model or bool(t) != bool(text_only) or not d.is_dir():
            continue
        for f in d.glob("*.litertlm"):
            found.append((f.stat().st_mtime, s, f))
    found.sort(key=lambda x: x[0], reverse=True)
    return [f for _, _, f in found]


def build_command(model: str, scheme: str, text_only: bool) -> str:
    return f"edgekit build {model}" + (f" --scheme {scheme}" if scheme != "wNa8o8" else "") + \
        (" --text-only" if text_only else "")


def latest_build(dist: Path, model: str, text_only: bool) -> Path:
    """The newest non-fp16 build of ``model`` in ``dist`` (the candidate for `--model`)."""
    for f in _builds(dist, model, text_only):
        _, scheme, _ = parse_bundle_name(f.parent.name)
        if scheme != "fp16":
            return f
    raise UsageError(f"no {model}{' text-only' if text_only else ''} build found in {dist}/",
                     hint=f"run `{build_command(model, 'wNa8o8', text_only)}` first, or pass --bundle PATH")


def default_baseline(candidate: BundleInfo, dist: Path) -> Path:
    """The fp16 build of the candidate's model (same text-only flag), beside it or in dist/."""
    model = candidate.model
    text = bool(candidate.text_only)
    if model is None:
        raise UsageError(f"cannot tell which model {candidate.path} is (neither its manifest nor its header names "
                         "one, and its folder is not named <model>-<scheme>[-text])",
                         hint="pass the baseline explicitly with --baseline PATH")
    name = bundle_name(model, "fp16", text)
    for root in (Path(candidate.path).parent.parent, dist):
        d = root / name
        if d.is_dir():
            files = sorted(d.glob("*.litertlm"), key=lambda f: f.stat().st_mtime, reverse=True)
            if files:
                return files[0]
    raise UsageError(f"no fp16 baseline for {model}{' (text-only)' if text else ''}: {dist / name}/ is missing",
                     hint=f"run `{build_command(model, 'fp16', text)}`, or pass --baseline PATH")


def check_bundles_comparable(cand: BundleInfo, base: BundleInfo, allow_mismatch: bool) -> list[str]:
    """Refuse before touching the device when the baseline is of another model."""
    if cand.model_key == base.model_key or cand.model_key is None or base.model_key is None:
        return []
    msg = f"bundle model: {cand.model_key} ({cand.path}) vs {base.model_key} ({base.path})"
    if not allow_mismatch:
        raise NotComparable(f"candidate and baseline are not comparable: {msg}")
    return [msg]


# --- traces -> records -------------------------------------------------------------------


def _mb(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024.0, 3)


def _median(vals: Sequence[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return float(statistics.median(xs)) if xs else None


# mem.tsv columns each sampled memory peak is read from (the MemPoint field names are in MEM_SOURCES)
_MEM_COLUMNS = {"peak_rss_mb": ("vmhwm_kb", "vmrss_kb"), "peak_anon_mb": ("rss_anon_kb",),
                "peak_file_mb": ("rss_file_kb",), "peak_pss_mb": ("pss_kb",)}


def measure_trace(trace: RunTrace) -> tuple[dict[str, float | None], dict[str, Basis], list[float]]:
    """Per-run metrics of one trace, each with what it rests on, and the measured token stamps.

    A figure below its basis's minimum is None (see edgekit/results/basis.py): a memory
    peak needs MIN_MEM_SAMPLES readings of its kind in the run's process (Pss is read only
    about once a second), a token percentile enough per-token stamps that do not arrive in
    stream chunks; iteration figures rest on the measured iterations that report them.
    """
    its = trace.measured
    token_ms = [t for it in its for t in it.token_ms]
    m: dict[str, float | None] = {}
    basis: dict[str, Basis] = {}

    def iteration_figure(name: str, vals: list[float | None]) -> None:
        got = [v for v in vals if v is not None]
        m[name] = _median(got)
        basis[name] = count_basis(len(got), "iterations", 1)

    m["init_ms"] = trace.init_ms
    basis["init_ms"] = count_basis(1, "init reports", 1) if trace.init_ms is not None else Basis(
        0, "init reports", 1, "no engine load in this run (a warm process reports its one load on its first run)")
    iteration_figure("ttft_ms", [it.ttft_ms for it in its])
    iteration_figure("prefill_tps", [it.prefill_tps for it in its])
    iteration_figure("decode_tps", [it.decode_tps for it in its])

    timing = next((it.token_timing for it in its if it.token_timing), None)
    burst = next((b for b in (bursty(it.token_ms) for it in its) if b), None)
    for name, q in TOKEN_PERCENTILES.items():
        basis[name] = token_basis(len(token_ms), q, burst, timing)
        m[name] = percentile(token_ms, q) if basis[name].valid else None

    for name, cols in _MEM_COLUMNS.items():
        n = trace.count(*cols)
        peaks = [trace.peak(c) for c in cols]
        peaks = [p for p in peaks if p is not None]
        b = mem_basis(n, MEM_SOURCES[name][1])
        value = _mb(max(peaks)) if peaks and b.valid else None
        if name == "peak_rss_mb" and value is None:
            # a native binary's own peak report stands in when /proc gave too few readings
            reports = [it.peak_mem_mb for it in its if it.peak_mem_mb is not None]
            if reports:
                b, value = Basis(len(reports), "runtime peak reports", 1), _median(reports)
        m[name] = value
        basis[name] = b
    return m, basis, token_ms


def metrics_from_trace(trace: RunTrace) -> tuple[dict[str, float | None], list[float]]:
    """Per-run metrics (None where the trace holds too few readings) and the token stamps."""
    m, _, token_ms = measure_trace(trace)
    return m, token_ms


def thermal_from_trace(trace: RunTrace) -> Thermal | None:
    if not trace.thermal:
        return None

    def hottest(phase: str | None):
        xs = [s for s in trace.thermal if phase is None or s.phase == phase]
        return max(xs, key=lambda s: s.temp_mc) if xs else None

    # the hottest reading *during* the run: zones are read about once a second, so a shorter
    # run has none and its max is absent rather than the before/after reading
    start, top, end = hottest("before"), hottest("during"), hottest("after")
    during = sum(1 for s in trace.thermal if s.phase == "during")
    c = lambda s: None if s is None else round(s.temp_mc / 1000.0, 2)  # noqa: E731
    return Thermal(c(start), c(top), c(end), top.type if top else None, during)


def cpufreq_from_trace(trace: RunTrace) -> tuple[CpuFreq, ...]:
    cpus: dict[int, dict[str, list[int]]] = {}
    for s in trace.cpufreq:
        cpus.setdefault(s.cpu, {}).setdefault(s.phase, []).append(s.cur_khz)
    out = []
    for cpu in sorted(cpus):
        ph = cpus[cpu]
        during = ph.get("during") or []
        out.append(CpuFreq(cpu, (ph.get("before") or [None])[0], min(during) if during else None,
                           max(during) if during else None, (ph.get("after") or [None])[-1]))
    return tuple(out)


def run_from_trace(trace: RunTrace, role: str, phase: str, index: int, order: int, trace_dir: str) -> Run:
    metrics, basis, token_ms = measure_trace(trace)
    mem = tuple(MemPoint(float(s.t_ms), _mb(s.vmrss_kb), _mb(s.rss_anon_kb), _mb(s.rss_file_kb), _mb(s.pss_kb),
                         _mb(s.vmswap_kb)) for s in trace.mem)
    h = trace.harness or {}

    def epoch(key: str) -> float | None:
        try:
            return float(h[key]) / 1000.0
        except (KeyError, TypeError, ValueError):
            return None

    ok = trace.ok
    error = None if ok else (trace.error or "no measured iteration in the trace")
    return Run(role=role, phase=phase, index=index, order=order, metrics=metrics, token_ms=tuple(token_ms),
               mem=mem, thermal=thermal_from_trace(trace), cpufreq=cpufreq_from_trace(trace),
               status="ok" if ok else "failed", error=error, trace_dir=trace_dir,
               t_start=epoch("start_epoch_ms"), t_end=epoch("end_epoch_ms"), basis=basis)


# --- the session ---------------------------------------------------------------------------


def schedule(warmup: int, reps: int, with_baseline: bool) -> list[tuple[str, str, int]]:
    """(role, phase, index) in run order: warmups first, then interleaved measured runs."""
    roles = (CANDIDATE, BASELINE) if with_baseline else (CANDIDATE,)
    plan = [(r, WARMUP, i) for i in range(warmup) for r in roles]
    plan += [(r, MEASURE, i) for i in range(reps) for r in roles]
    return plan


def warm_schedule(with_baseline: bool) -> list[tuple[str, str, int]]:
    """Warm mode: one process per bundle, the candidate's first; each runs all its iterations."""
    roles = (CANDIDATE, BASELINE) if with_baseline else (CANDIDATE,)
    return [(r, "warm", 0) for r in roles]


def iteration_runs(trace: RunTrace, role: str, first_order: int, trace_dir: str) -> list[Run]:
    """Warm mode: one run record per iteration (warmups included) of one runner process.

    Speed figures are the iteration's own. Memory figures rest on the samples taken inside
    the iteration's window (runner t_start..t_end against the harness's start epoch), without
    VmHWM, which is the process's lifetime peak (engine load included), not the iteration's:
    an iteration shorter than the sampling interval has none. ``init_ms`` (one engine load
    per process) goes to the process's first record only. A failed process is one failed run.
    """
    if not trace.ok or not trace.iterations:
        return [run_from_trace(trace, role, MEASURE, 0, first_order, trace_dir)]
    h = trace.harness or {}
    t0 = h.get("start_epoch_ms")
    out = []
    for k, it in enumerate(trace.iterations):
        mem = []
        if isinstance(t0, (int, float)) and it.t_start is not None and it.t_end is not None:
            lo, hi = it.t_start * 1000.0 - t0, it.t_end * 1000.0 - t0
            mem = [dataclasses.replace(m, vmhwm_kb=None) for m in trace.mem if lo <= m.t_ms <= hi]
        sub = dataclasses.replace(trace, iterations=[dataclasses.replace(it, phase=MEASURE)], mem=mem,
                                  init_ms=trace.init_ms if k == 0 else None)
        run = run_from_trace(sub, role, it.phase if it.phase in (WARMUP, MEASURE) else MEASURE, it.index,
                             first_order + k, trace_dir)
        if it.t_start is not None and it.t_end is not None:
            run = dataclasses.replace(run, t_start=it.t_start, t_end=it.t_end)
        out.append(run)
    return out


def utc_stamp(now: _dt.datetime | None = None) -> tuple[str, str]:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y%m%dT%H%M%SZ")


class Session:
    """Runs one plan on one device profile. Use :func:`run_bench`."""

    def __init__(self, profile, plan: BenchPlan, progress: Progress = stderr_progress,
                 transport_factory: Callable | None = None, background: Callable[[], None] | None = None):
        self.background = background
        self.profile = profile
        self.plan = plan
        self.progress = progress
        self._transport_factory = transport_factory
        self.transport = None
        self.work = ""

    # -- remote helpers
    def _open(self):
        if self._transport_factory is not None:
            return self._transport_factory(self.profile)
        from edgekit.devices import open_transport

        opts = {}
        if self.profile.transport == "ssh":
            opts["accept_new_host_key"] = self.plan.accept_new_host_key
        return open_transport(self.profile, **opts)

    def _push(self, local: Path, remote: str, label: str) -> str:
        t0 = time.monotonic()
        res = self.transport.push(local, remote)
        sent = getattr(res, "sent", True)
        size = getattr(res, "bytes", local.stat().st_size)
        dt = time.monotonic() - t0
        self.progress(f"push {label}: {'sent' if sent else 'unchanged, not sent'} "
                      f"({size / 1e6:.2f} MB, {dt:.1f} s)")
        return getattr(res, "remote", None) or remote

    def _runner_argv(self, remote_bundle: str, sha256: str, threads: int | None,
                     backend: str | None) -> tuple[list[str], str]:
        r = self.profile.runner
        p = self.plan
        # warm: this process runs the warmups and every iteration on one engine. cold: one
        # measured run per process, the first generation of a freshly loaded engine, as each
        # run of `litert-lm benchmark` is; like that tool, the process first runs one untimed
        # generation on an engine it then closes, so the measured run does not also pay the
        # process's own first-use costs (thread pools, kernel code paged in, allocator growth):
        # on the tiny bundles the very first generation of a new process measured 10-20% slower.
        warmup, reps = (p.warmup, p.reps) if p.mode == "warm" else (1, 1)
        if r.kind == "python":
            python = r.python or (sys.executable if self.profile.transport == "local" else "python3")
            if self.profile.transport != "local" and python.startswith("~"):
                python = self.transport.expand(python)
            argv = ["env", f"PYTHONPATH={self.pyroot}", python, "-m", "edgekit.runtime.runner", remote_bundle,
                    "--prefill", str(p.prefill), "--decode", str(p.decode), "--warmup", str(warmup),
                    "--reps", str(reps), "--backend", backend or "auto", "--sha256", sha256, "--mode", p.mode]
            if threads:
                argv += ["--threads", str(threads)]
            if p.mode == "cold":
                argv.append("--fresh-engine")
            return argv, "python"
        binary = self.remote_binary
        argv = [binary, *r.args, f"--model_path={remote_bundle}", "--benchmark",
                f"--benchmark_prefill_tokens={p.prefill}", f"--benchmark_decode_tokens={p.decode}",
                "--async=false", "--report_peak_memory_footprint",
                f"--num_iterations={warmup + reps if p.mode == 'warm' else 1}"]  # one engine per native process
        if threads:
            argv.append(f"--num_cpu_threads={threads}")
        return argv, "native"

    def _prepare_device(self, bundles: dict[str, BundleInfo]) -> dict[str, str]:
        t = self.transport
        self.work = t.expand(self.profile.work_dir)
        remote = {}
        for role, b in bundles.items():
            dest = posixpath.join(self.work, "bundles", f"{b.sha256[:12]}-{b.name}")
            remote[role] = self._push(Path(b.path), dest, f"{role} {b.label}")
        if not HARNESS.is_file():
            raise UsageError(f"the on-device harness is missing: {HARNESS}", hint="reinstall edgekit")
        self.remote_harness = self._push(HARNESS, posixpath.join(self.work, "harness.sh"), "harness.sh")
        r = self.profile.runner
        if r.kind == "python":
            self.pyroot = posixpath.join(self.work, "py")
            self._push(PACKAGE_DIR / "__init__.py", posixpath.join(self.pyroot, "edgekit", "__init__.py"),
                       "edgekit/__init__.py")
            for mod in RUNTIME_MODULES:
                src = PACKAGE_DIR / "runtime" / mod
                if src.is_file():
                    self._push(src, posixpath.join(self.pyroot, "edgekit", "runtime", mod), f"runtime/{mod}")
            if not (PACKAGE_DIR / "runtime" / "runner.py").is_file():
                raise UsageError("edgekit/runtime/runner.py is missing from this installation",
                                 hint="reinstall edgekit")
        else:
            local_bin = r.native_binary()
            if not local_bin or not Path(local_bin).is_file():
                from edgekit.errors import RuntimeMissing

                raise RuntimeMissing(
                    f"profile {self.profile.name}: no native benchmark binary "
                    f"(runner.binary or ${r.binary_env or 'EDGEKIT_LITERT_LM_MAIN'})",
                    hint=f"set {r.binary_env or 'EDGEKIT_LITERT_LM_MAIN'} to a litert_lm_main build for the device")
            self.remote_binary = self._push(Path(local_bin), posixpath.join(self.work, "bin", Path(local_bin).name),
                                            Path(local_bin).name)
            t.shell(["chmod", "755", self.remote_binary], timeout=60)
        return remote

    def _pull_trace(self, remote_dir: str, local_dir: Path) -> None:
        local_dir.mkdir(parents=True, exist_ok=True)
        for name in TRACE_FILES:
            src = posixpath.join(remote_dir, name)
            try:
                if self.transport.stat(src) is None:
                    continue
                self.transport.pull(src, local_dir / name)
            except DeviceError as exc:
                self.progress(f"warning: could not pull {name}: {exc.message}")

    # -- main
    def run(self, bundles: dict[str, BundleInfo], folder: Path, finalize: Callable | None = None
            ) -> BenchResult:
        p, prof = self.plan, self.profile
        threads = p.threads if p.threads is not None else (prof.cpu.threads or None)
        backend = p.backend or getattr(prof.runner, "backend", None)
        interval = prof.sampling.interval_ms
        affinity = prof.cpu.affinity or ""
        settings = Settings(prefill=p.prefill, decode=p.decode, threads=threads, backend=backend, warmup=p.warmup,
                            reps=p.reps, cooldown_s=p.cooldown_s, interval_ms=interval, affinity=affinity or None,
                            runner=prof.runner.kind, mode=p.mode)
        created, stamp = utc_stamp()
        runs: list[Run] = []
        runtime: dict = {}
        identity: dict = {}
        status, error, failed_run = "ok", None, None
        final = folder
        partial = folder.with_name(f".{folder.name}.partial")
        if partial.exists():
            shutil.rmtree(partial)
        (partial / "traces").mkdir(parents=True)
        interrupted: BaseException | None = None
        device = DeviceInfo(prof.name, prof.transport, {})

        def result() -> BenchResult:
            return BenchResult(created=created, edgekit_version=__version__, device=device, settings=settings,
                               bundles=bundles, runtime=runtime, runs=tuple(runs), status=status, error=error,
                               failed_run=failed_run)

        try:
            self.progress(f"bench on {prof.name} ({prof.transport}): {len(bundles)} bundle(s), "
                          f"warmup {p.warmup}, reps {p.reps}, prefill {p.prefill}, decode {p.decode}, "
                          f"threads {threads or 'default'}, mode {p.mode}")
            bg = None
            if self.background is not None:
                # work the caller needs later (e.g. the report views' imports), overlapped with the
                # device preparation (connect, pushes) and joined before the first run, so it never
                # runs beside a measured run
                bg = threading.Thread(target=_quietly, args=(self.background,), name="edgekit-background",
                                      daemon=True)
                bg.start()
            self.transport = self._open()
            identity = dict(self.transport.identity())
            device = DeviceInfo(prof.name, prof.transport, identity)
            remote = self._prepare_device(bundles)
            if bg is not None:
                bg.join()
            session_dir = posixpath.join(self.work, "traces", f"{stamp}-{os.getpid()}")
            warm = p.mode == "warm"
            plan = warm_schedule(BASELINE in bundles) if warm else schedule(p.warmup, p.reps, BASELINE in bundles)
            order = 0  # position of the next run record (warm: one per iteration)
            for step, (role, phase, idx) in enumerate(plan):
                if step and p.cooldown_s:
                    time.sleep(p.cooldown_s)
                name = f"{step:02d}-{role}-warm" if warm else f"{order:02d}-{role}-{phase}-{idx}"
                rdir = posixpath.join(session_dir, name)
                runner_argv, _ = self._runner_argv(remote[role], bundles[role].sha256, threads, backend)
                argv = ["sh", self.remote_harness, "-o", rdir, "-i", str(interval)]
                if affinity:
                    argv += ["-a", affinity]
                argv += ["--", *runner_argv]
                if warm:
                    self.progress(f"[{step + 1}/{len(plan)}] {role}: {p.warmup} warmup + {p.reps} iterations in one "
                                  f"process: {bundles[role].label}")
                else:
                    self.progress(f"[{order + 1}/{len(plan)}] {role} {phase} #{idx}: {bundles[role].label}")
                t0 = time.monotonic()
                res = self.transport.shell(argv, check=False, timeout=prof.timeouts.command_s)
                local = partial / "traces" / name
                self._pull_trace(rdir, local)
                trace = parse_trace_dir(local, native_warmup=p.warmup if warm else 0)
                if warm:
                    got = iteration_runs(trace, role, order, f"traces/{name}")
                else:
                    got = [run_from_trace(trace, role, phase, idx, order, f"traces/{name}")]
                if trace.ok and not runtime and trace.start:
                    runtime = {k: trace.start.get(k) for k in ("runner", "backend", "runtime", "host",
                                                               "edgekit_version") if trace.start.get(k) is not None}
                failed = None
                for run in got:
                    if not run.ok and res.exit_code not in (0, None) and res.stderr and not trace.iterations:
                        run = dataclasses.replace(run, error=f"{run.error}; {res.stderr.strip().splitlines()[-1]}")
                    runs.append(run)
                    m = run.metrics
                    if run.ok:
                        label = f"    {run.phase} #{run.index}: " if warm else "    "
                        self.progress(
                            f"{label}decode {_f(m.get('decode_tps'), 'tok/s')}, prefill "
                            f"{_f(m.get('prefill_tps'), 'tok/s')}, TTFT {_f(m.get('ttft_ms'), 'ms')}, peak anon "
                            f"{_f(m.get('peak_anon_mb'), 'MB')}, peak file {_f(m.get('peak_file_mb'), 'MB')}"
                            + ("" if warm else f" ({time.monotonic() - t0:.1f} s)"))
                    elif failed is None:
                        failed = run
                    order += 1
                if warm and failed is None:
                    self.progress(f"    ({time.monotonic() - t0:.1f} s)")
                if failed is not None:
                    status, failed_run = "failed", failed.order
                    what = f"{role} warm process" if warm else f"{role} {phase} #{idx}"
                    error = f"run {failed.order} ({what}, {bundles[role].label}) failed: {failed.error}"
                    self.progress(f"    FAILED: {failed.error} (traces kept in {final / 'traces' / name})")
                    break
            # every trace is pulled (a failed run's too): leave no trace folders behind on the device
            self.transport.shell(["rm", "-rf", session_dir], check=False, timeout=60)
        except EdgekitError as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc.message}"
            interrupted = exc
        except KeyboardInterrupt as exc:
            status, error = "failed", "interrupted"
            interrupted = exc
        finally:
            if self.transport is not None:
                try:
                    self.transport.close()
                except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                    pass
        res_obj = result()
        save_result(res_obj, partial / "result.json")
        if finalize is not None:
            try:
                finalize(partial, res_obj)
            except Exception as exc:  # noqa: BLE001 - the measurements must survive a broken view
                self.progress(f"warning: writing the reports failed ({type(exc).__name__}: {exc}); "
                              f"regenerate them with `edgekit report {final}`")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        if interrupted is not None:
            if isinstance(interrupted, KeyboardInterrupt) or not runs:
                # nothing was measured: the cause (e.g. device not found) is the error to show
                if not runs:
                    shutil.rmtree(final, ignore_errors=True)
                raise interrupted
            raise BenchmarkFailed(f"{error}; partial results in {final}", hint=getattr(interrupted, "hint", "")) \
                from interrupted
        if status != "ok":
            hint = f"see {final / 'traces'} (runner.err) and rerun"
            if error and ("No module named" in error or "status 127" in error or "not found" in error):
                hint = f"the runtime looks missing on the device: run `edgekit setup --device {prof.name}`; " + hint
            raise BenchmarkFailed(f"{error}; partial traces and result.json kept in {final}", hint=hint)
        return res_obj


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - optional preparation: the caller does the work again when it needs it
        pass


def _f(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f} {unit}" if abs(v) < 1000 else f"{v:.0f} {unit}"


def _run_kwargs(run: Run) -> dict:
    return {k: getattr(run, k) for k in ("role", "phase", "index", "order", "metrics", "token_ms", "mem", "thermal",
                                          "cpufreq", "status", "error", "trace_dir", "t_start", "t_end", "basis")}


@dataclass(frozen=True)
class BenchOutcome:
    result: BenchResult
    folder: Path
    mismatches: tuple[str, ...] = ()


def run_bench(profile, plan: BenchPlan, progress: Progress = stderr_progress,
              finalize: Callable[[Path, BenchResult], None] | None = None,
              transport_factory: Callable | None = None,
              background: Callable[[], None] | None = None) -> BenchOutcome:
    """Bench ``plan.candidate`` against ``plan.baseline`` on ``profile``; write the result folder.

    ``finalize(folder, result)`` is called on the still-partial folder before it is
    renamed into place (the CLI writes the Markdown/HTML/JUnit views there), so a
    complete folder appears at once. ``background()`` runs in a thread while the device
    is prepared and is joined before the first run (the CLI preloads the report imports).
    """
    plan.validate()
    cand = bundle_info(Path(plan.candidate))
    bundles = {CANDIDATE: cand}
    mismatches: list[str] = []
    if plan.baseline is not None:
        base = bundle_info(Path(plan.baseline))
        mismatches = check_bundles_comparable(cand, base, plan.allow_mismatch)
        bundles[BASELINE] = base
    _, stamp = utc_stamp()
    folder = Path(plan.output) / f"{stamp}-{profile.name}"
    n = 1
    while folder.exists():
        n += 1
        folder = Path(plan.output) / f"{stamp}-{profile.name}-{n}"
    session = Session(profile, plan, progress, transport_factory, background)
    result = session.run(bundles, folder, finalize)
    return BenchOutcome(result, folder, tuple(mismatches))
