"""``edgekit build``: preset + source + scheme -> ``dist/<model>-<scheme>[-text]/`` (bundle + manifest).

Stages (each reported to ``progress`` with its duration):
``source`` (validate the checkpoint or make/reuse random weights), ``estimate``
(memory and disk needed vs available; refuse unless ``force``), ``export``
(litert-torch, child process, cached), ``unpack``, ``calibrate`` (wNa8o8 only),
``quantize``, ``repack``, ``verify`` (the bundle loads and generates tokens with
the interpreter and, in a child process, the LiteRT-LM CPU engine), ``inspect``
(read back, check against the scheme and preset), ``quality`` (wNa8o8 vs an fp16
build of the same source, when one exists), ``manifest``.

Everything lands in a temporary folder that is renamed into place only at the
end (:func:`edgekit.fsutil.atomic_dir`), so a failed or interrupted build leaves
nothing that looks complete.

The whole build runs inside a :class:`edgekit.builder.toolchain_log.ToolchainLog`:
what the toolchain prints (Python and native, fds 1 and 2) goes to
``toolchain.log`` in the build's work folder under the cache; ``progress`` is
called with the terminal restored. The work folder is removed after a success;
when a stage fails, only the log is kept and the error names it.

Reproducible: the same inputs, options and toolchain give a byte-identical bundle.
The header's uuid and creation time are derived from the inputs
(:func:`edgekit.bundle.lock.fixed_header`), the export child runs with a fixed hash
seed, and ``manifest["lock"]`` records inputs, options, toolchain, CPU and the
sha256 of the bundle, its header and every section; :func:`verify_lock` rebuilds
and compares.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from edgekit.errors import BuildError, EdgekitError, OutputNotWritable, ResourceError, UsageError
from edgekit.results.manifest import bundle_name  # the folder rule <model>-<scheme>[-text]
from edgekit.builder.strategies import PD as PD_SECTION  # the prefill/decode section
from edgekit.runtime.procinfo import mem_available, mem_total, peak_rss_bytes, release_free_memory

Progress = Callable[[str, str, float | None], None]
"""progress(stage, message, seconds): seconds is None when a stage starts."""

GIB = 1024**3
EXPORT_RSS_BYTES_PER_PARAM = 10.0  # measured: ~10 B/param (toolchain notes: 805 M params -> 8.1-10.3 GB)
EXPORT_RSS_BASE = int(1.3 * GIB)  # tiny model export peaks at ~1.3 GB (imports of torch/tf/transformers)
QUANTIZE_RSS_PER_FLOAT_BYTE = 3.0  # flatbuffer unpack + quantized copy + calibration state
# the builder's own RSS (torch, tensorflow, litert imported) while it waits for a child: a child's
# stage costs the tree this plus the child (tiny: export child 1.31 GiB, tree 1.69 GiB)
BUILDER_WAIT_RSS = int(0.4 * GIB)
# the builder while its quality stage waits on an engine child (full E2B QAT: 4.2 GiB, after its in-process verify)
BUILDER_QUALITY_RSS = int(4.5 * GIB)
SOFTCAP_KEY = "edgekit.final_logit_softcapping"


@dataclasses.dataclass
class BuildResult:
    bundle: Path
    manifest_path: Path
    manifest: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Estimate:
    params: int
    peak_rss_bytes: int
    disk_bytes: int
    float_bundle_bytes: int
    bundle_bytes: int
    mem_available_bytes: int | None
    disk_free_bytes: int | None
    export_cached: bool
    # the process tree's RSS per stage (builder + the child it waits for); the peak is their max
    stages: dict[str, int] = dataclasses.field(default_factory=dict)
    # of a stage's RSS, the file-backed pages the kernel can reclaim (the engine's mapped weight
    # cache): counted in the RSS, not in the memory the build needs available
    reclaimable: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=lambda k: self.stages[k]) if self.stages else "build"

    def _need(self, stage: str) -> int:
        return self.stages[stage] - self.reclaimable.get(stage, 0)

    @property
    def need_stage(self) -> str:
        """The stage that needs the most memory available (RSS less reclaimable pages)."""
        return max(self.stages, key=self._need) if self.stages else "build"

    @property
    def need_bytes(self) -> int:
        """The memory the build needs available: what it is refused on."""
        return self._need(self.need_stage) if self.stages else self.peak_rss_bytes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_stage"] = self.peak_stage
        d["need_bytes"], d["need_stage"] = self.need_bytes, self.need_stage
        return d


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GB"




def _existing_parent(p: Path) -> Path:
    p = p.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _bits_of(scheme, module: str) -> float:
    b = scheme.bits_for(module)
    if b is None:
        return 16.0 if getattr(scheme, "float_dtype", "float32") == "float16" else 32.0
    return float(b)


def _engine_child_rss(bundle_bytes: int, text_bytes: int, pd_bytes: int, builder_bytes: int) -> tuple[int, int]:
    """(RSS, reclaimable) of the tree while the builder (``builder_bytes``) waits on an engine child
    running a bundle of float16 weights: 1.6x the bundle (fp16 E2B tree peak 15.7 GiB for 10.1 GB), no
    more than the machine has; most of it is XNNPack's mapped float32 weight cache, pages the kernel
    reclaims, so what must be available is the builder + the engine's anonymous memory (engine_need)."""
    rss = min(int(1.6 * bundle_bytes), mem_total() or 1 << 62)
    return rss, max(0, rss - int(builder_bytes + engine_need(text_bytes, pd_bytes, True)))


def _candidate_engine_route(baseline_bytes: int) -> bool:
    """Whether a candidate's quality stage against an fp16 baseline of this size takes the engine
    route: the candidate is ~1/5 of its baseline (full E2B 2.13 vs 10.07 GB, E4B 3.20 vs 16.27 GB),
    counted here as 1/4."""
    return _quality_interpreter_skip(baseline_bytes // 4, baseline_bytes) is not None


def estimate(preset, width_div: int, scheme, text_only: bool, output_dir: Path, export_cached: bool,
             cache_dir: Path, random_checkpoint_bytes: int = 0, streamed: bool = False,
             towers_cached: tuple[str, ...] = (), quality_baseline_bytes: int = 0,
             baseline_scored: bool = False, scores_baseline: bool = False) -> Estimate:
    """Peak RSS of the build's process tree, stage by stage (measured model: docs/build-memory.md).

    ``towers_cached`` names the towers whose conversion is in the cache (no tower child runs);
    ``quality_baseline_bytes`` is the size of the fp16 sibling the quality stage will score
    against (0: no quality stage); ``baseline_scored``: that sibling's engine scores are in the
    score cache (only the candidate's engine child runs); ``scores_baseline``: this fp16 build
    scores itself for its candidates when they would take the engine route (:func:`_score_baseline`).
    """
    counts = preset.param_counts(width_div)
    params = counts["text"] if text_only else counts["total"]
    p = "model.language_model"
    bundle_bits = (
        counts["embedding"] * _bits_of(scheme, f"{p}.embed_tokens")
        + counts["ple"] * _bits_of(scheme, f"{p}.embed_tokens_per_layer")
        + counts["decoder"] * _bits_of(scheme, f"{p}.layers.0.mlp.gate_proj")
        + counts.get("ple_projection", 0) * _bits_of(scheme, f"{p}.per_layer_model_projection")
    )
    text_bundle_bytes = int(bundle_bits / 8)  # what the interpreter checks read (no tower sections)
    if not text_only:
        bundle_bits += counts["vision"] * _bits_of(scheme, "model.vision_tower.encoder") + counts["audio"] * _bits_of(
            scheme, "model.audio_tower.layers.0"
        )
    bundle_bytes = int(bundle_bits / 8)
    float_bytes = 4 * params
    export_rss = 0 if export_cached else \
        int(BUILDER_WAIT_RSS + EXPORT_RSS_BASE + EXPORT_RSS_BYTES_PER_PARAM * params)
    quant_rss = int(EXPORT_RSS_BASE // 2 + QUANTIZE_RSS_PER_FLOAT_BYTE * float_bytes)
    stages = {"export": export_rss, "quantize": quant_rss}
    reclaimable: dict[str, int] = {}
    if streamed:
        # Per-stage model of the streamed route, fitted on full-size E2B (docs/build-memory.md):
        # stand-in export child 3.72 GiB (tied groups ~4 layers' weights); the fill (below); the
        # engine verify child maps the whole bundle and, for float16 weights, unpacks them (fp16
        # tree peak 15.7 GiB for 10.1 GB).
        layer = counts["decoder"] / max(1, preset.num_layers)
        export_rss = int(BUILDER_WAIT_RSS + 1.3 * 2**30 + 12 * 4 * layer)
        # the fill streams every large section into its file a row block at a time (fill._write_streamed):
        # builder high-water after the fill 1.29 GB at e2b width/4 fp16 (3.64 GB before streaming),
        # the stand-in graph and one 64 MiB block whatever the model's size
        fill_rss = int(1.5 * 2**30)
        fp16_weights = scheme.float16_weights
        pd_bytes = int((counts["decoder"] * _bits_of(scheme, f"{p}.layers.0.mlp.gate_proj")
                        + counts["embedding"] * _bits_of(scheme, f"{p}.embed_tokens")
                        + counts.get("ple_projection", 0) * _bits_of(scheme, f"{p}.per_layer_model_projection")) / 8)
        # the builder waiting + the engine child, 1.6x the bundle (fp16 E2B tree peak 15.7 GiB for 10.1 GB), no
        # more than the machine has: with float16 weights most of it is XNNPack's mapped weight cache, pages the
        # kernel reclaims, so the need is the builder + the engine's anonymous memory (engine_need); none when
        # the engine check will be skipped (it cannot fit)
        engine_rss = 0 if _engine_skip(text_bundle_bytes, pd_bytes, fp16_weights) else int(1.6 * bundle_bytes)
        if engine_rss and fp16_weights:
            engine_rss, reclaimable["verify (engine)"] = _engine_child_rss(
                bundle_bytes, text_bundle_bytes, pd_bytes, BUILDER_WAIT_RSS)
        # the interpreter verify (in the builder, when it fits): ~1.4 GB of runtime, the sections read in,
        # and XNNPack's int8 copy of every prefill/decode weight (~1 byte per parameter: 2- and 4-bit
        # weights are unpacked); against full-size builds: E4B wNa8o8 -11%, E2B QAT -13%; the text
        # sections only (edgekit.runtime.signatures.BundleModel reads no tower section)
        pd_params = counts["decoder"] + counts["embedding"]  # the decoder layers and the lm_head
        interp_rss = 0 if _verify_interpreter_skip(text_bundle_bytes, scheme) else \
            int(1.4e9 + interpreter_need(text_bundle_bytes, fp16_weights) + (0 if fp16_weights else 1.05 * pd_params))
        stages = {"export": export_rss, "fill": fill_rss, "verify (engine)": engine_rss,
                  "verify (interpreter)": interp_rss, "imports": int(1.5 * 2**30)}
        if engine_rss and scores_baseline and _candidate_engine_route(text_bundle_bytes) \
                and not _scoring_skip(text_bundle_bytes, pd_bytes, True):
            # the fp16 baseline scores itself for its candidates: one more engine child of the same size
            stages["quality"] = engine_rss
            reclaimable["quality"] = reclaimable.get("verify (engine)", 0)
        towers = [t for t in ("vision", "audio") if not text_only and t not in towers_cached]
        if towers:
            # one tower-conversion child per tower (edgekit/builder/encoders.py), measured at full E2B:
            # vision (168.5 M params) 4.22 GiB, audio (307.2 M) 6.89 GiB: ~1.3 GiB + 19.5 B per tower param
            stages["towers"] = int(BUILDER_WAIT_RSS + 1.3 * 2**30 + 19.5 * max(counts[t] for t in towers))
        float_bytes = 0
    if quality_baseline_bytes:
        # against the fp16 sibling: in the builder's interpreter when both fit (the candidate's
        # sections + the baseline's fp16 weights as float32), else one engine child per bundle
        # (the baseline's is the larger: its fp16 weights unpacked, as the fp16 verify child)
        if not _quality_interpreter_skip(bundle_bytes, quality_baseline_bytes):
            stages["quality"] = int(1.5e9 + interpreter_need(bundle_bytes, False)
                                    + interpreter_need(quality_baseline_bytes, True))
        elif baseline_scored:
            # the baseline's scores are cached (it scored itself when built): the candidate's engine child only
            stages["quality"] = int(BUILDER_WAIT_RSS + 1.6 * bundle_bytes)
        else:
            base_pd = 2 * (counts["decoder"] + counts["embedding"] + counts.get("ple_projection", 0))
            if not _scoring_skip(quality_baseline_bytes, base_pd, True):
                # the builder (4.2 GiB at full E2B QAT) waiting on the fp16 engine child, whose RSS is mostly
                # its mapped float32 weight cache
                stages["quality"], reclaimable["quality"] = _engine_child_rss(
                    quality_baseline_bytes, quality_baseline_bytes, base_pd, BUILDER_QUALITY_RSS)
    peak = max(stages.values())
    # cache: the float export; work: unpacked float sections + quantized sections; output: the bundle
    disk = random_checkpoint_bytes + (0 if export_cached else float_bytes) + float_bytes + 2 * bundle_bytes
    free = None
    try:
        free = shutil.disk_usage(_existing_parent(output_dir)).free
        if not export_cached:
            free = min(free, shutil.disk_usage(_existing_parent(cache_dir)).free)
    except OSError:
        pass
    return Estimate(params, peak, disk, float_bytes, bundle_bytes, mem_available(), free, export_cached,
                    {k: v for k, v in stages.items() if v}, {k: v for k, v in reclaimable.items() if v})


class _Stages:
    def __init__(self, progress: Progress | None, log=None):
        self.progress = progress
        self.times: dict[str, float] = {}
        self.peaks: dict[str, int] = {}  # the builder's RSS high-water mark when each stage ended
        self.log = log  # ToolchainLog: stage boundaries are noted in it, a failed stage is recorded

    def run(self, stage: str, message: str, fn, *args, **kwargs):
        if self.progress:
            self.progress(stage, message, None)
        if self.log is not None:
            self.log.note(f"[{stage}] {message}")
        t0 = time.monotonic()
        try:
            try:
                out = fn(*args, **kwargs)
            except BaseException as exc:
                if self.log is not None:  # the log is kept and named when a stage fails
                    self.log.failed_stage = stage
                    self.log.note(f"[{stage}] failed: {type(exc).__name__}: {str(exc)[:500]}")
                raise
        except EdgekitError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceError(f"disk full during {stage}: {exc}", hint="free disk space and rebuild") from exc
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise OutputNotWritable(f"cannot write during {stage}: {exc}") from exc
            raise BuildError(f"{stage} failed: {exc}") from exc
        except MemoryError as exc:
            raise ResourceError(f"out of memory during {stage}") from exc
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise BuildError(f"{stage} failed in the toolchain: {type(exc).__name__}: {first}") from exc
        dt = time.monotonic() - t0
        self.times[stage] = round(self.times.get(stage, 0.0) + dt, 3)
        self.peaks[stage] = max(self.peaks.get(stage, 0), peak_rss_bytes() or 0)
        if self.progress:
            self.progress(stage, message, dt)
        return out


# ------------------------------------------------------------------ sources
def _has_weights(d: Path | None) -> bool:
    return bool(d) and d.is_dir() and any(d.glob("*.safetensors"))


def plan_source(preset, checkpoint, random_weights: bool, seed: int, width_div: int, cache_dir: Path):
    """-> (checkpoint folder, CheckpointInfo or None when random weights must still be made)."""
    from edgekit.models.checkpoint import load_checkpoint

    if checkpoint is not None and random_weights:
        raise UsageError("--checkpoint and --random-weights exclude each other", hint="pass one of them")
    if checkpoint is None and not random_weights:
        shipped = getattr(preset, "shipped_checkpoint_dir", None)
        if _has_weights(shipped):
            checkpoint = shipped
        elif preset.name == "tiny":
            random_weights = True
        else:
            raise UsageError(
                f"no weights for {preset.name}: pass --checkpoint DIR or --random-weights",
                hint=f"e.g. `edgekit build {preset.name} --random-weights --width-div 4 --text-only`",
            )
    if checkpoint is not None:
        from edgekit.builder.qat import precheck  # refuse a bad QAT checkpoint before reading weights

        precheck(checkpoint, preset)
        info = load_checkpoint(checkpoint, preset)
        return Path(checkpoint), info  # a QAT checkpoint is swapped for its exact float by build()
    d = cache_dir / "checkpoints" / f"{preset.name}-seed{seed}-w{width_div}-{random_dtype(preset, width_div)}"
    if _has_weights(d):
        return d, load_checkpoint(d, preset)
    return d, None


RANDOM_FLOAT32_MAX_BYTES = 24 * 10**9


def _random_bytes(preset, width_div: int) -> int:
    from edgekit.models.checkpoint import random_checkpoint_bytes

    return random_checkpoint_bytes(preset, width_div, random_dtype(preset, width_div))


def random_dtype(preset, width_div: int) -> str:
    """The dtype of a random checkpoint: float32, or bfloat16 (the dtype Gemma 4 ships in)
    when float32 would exceed 24 GB (full-size E4B: 31.8 GB float32, 15.9 GB bfloat16);
    every float dtype goes through the same readers."""
    from edgekit.models.checkpoint import random_checkpoint_bytes

    return "float32" if random_checkpoint_bytes(preset, width_div) <= RANDOM_FLOAT32_MAX_BYTES else "bfloat16"


def make_random_source(preset, d: Path, seed: int, width_div: int):
    from edgekit.models.checkpoint import load_checkpoint, make_random_checkpoint

    make_random_checkpoint(preset, d, seed=seed, width_div=width_div, dtype=random_dtype(preset, width_div))
    return load_checkpoint(d, preset)


def _calibration_texts(path) -> tuple[list[str], dict[str, Any]]:
    """The calibration prompts (shipped set or ``--calibration FILE``) and their provenance."""
    import hashlib

    from edgekit.schemes.calibration import load_calibration

    texts = load_calibration(path)
    src = str(path) if path is not None else "edgekit.schemes.calibration (shipped)"
    h = hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()
    return texts, {"source": src, "prompts": len(texts), "sha256": h}


def _tokenize(bundle: Path, texts: list[str], limit: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    from edgekit.runtime.litertlm_file import read_hf_tokenizer_json

    js = read_hf_tokenizer_json(bundle)
    if js is None:
        raise BuildError(f"{bundle}: the export holds no Hugging Face tokenizer")
    tok = Tokenizer.from_str(js)
    bos = tok.token_to_id("<bos>")
    out = []
    for t in texts:
        ids = tok.encode(t).ids
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids  # sequences start with BOS, as LiteRT-LM's engine feeds them
        if ids:
            out.append(ids[:limit])
    return out


# ------------------------------------------------------------------ build
def build(
    model: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> BuildResult:
    """Build one bundle; returns its path, the manifest path and the manifest.

    The toolchain's output (Python and native) goes to ``toolchain.log`` in the build's
    work folder (``<cache>/.<model>.work-*``); ``progress`` runs with the terminal
    restored. After a success the log moves to ``<cache>/logs/<name>.log`` (named in
    ``manifest["build"]["toolchain_log"]``) and the work folder is removed; when a stage
    fails, the log alone is kept in the work folder and the error message names it.

    ``options`` are :func:`_build`'s keywords (checkpoint, random_weights, width_div, seed,
    scheme, text_only, calibration, output, force, prefill, cache_length, decode_steps,
    calibration_samples, verify_engine, quality, requantize, route).
    """
    from edgekit.builder import export as ex
    from edgekit.builder.toolchain_log import LOG_FILE, ToolchainLog

    cache = Path(cache_dir) if cache_dir else ex.cache_root()
    work = _make_work(cache, model)
    log = ToolchainLog(work / LOG_FILE)
    keep_log = False
    try:
        with log:
            res = _build(model, cache_dir=cache, progress=log.outside(progress), log=log, work_dir=work, **options)
        final = getattr(log, "final_path", None)
        if final is not None and log.path.is_file():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(log.path, final)
        return res
    except EdgekitError as exc:
        if log.failed_stage is not None and log.path.is_file():
            keep_log = True
            exc.message = f"{exc.message} (toolchain log: {log.path})"
        raise
    finally:
        if keep_log:
            _clear_work(work, keep=log.path)
        else:
            shutil.rmtree(work, ignore_errors=True)


@dataclasses.dataclass
class LockCheck:
    rows: list[dict[str, Any]]  # {what, name, status: MATCH|DIFF, detail} (edgekit.bundle.lock.compare)
    rebuilt: Path | None  # the rebuilt bundle, kept when something differs
    notes: list[str]

    @property
    def ok(self) -> bool:
        return all(r["status"] == "MATCH" for r in self.rows)


def verify_lock(manifest: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                progress: Progress | None = None, **build_kwargs: Any) -> LockCheck:
    """Rebuild with ``build_kwargs`` into a temporary folder and compare with ``manifest``'s lock.

    A lock made with another toolchain (Python, platform, any package version) is
    refused before building (NotComparable, with every difference). Another CPU model
    is only noted: float builds do not depend on it, calibrated ones may. The rebuilt
    bundle is removed when everything matches and kept (named in ``notes``) otherwise.
    """
    from edgekit.builder import export as ex
    from edgekit.bundle import lock as lk
    from edgekit.errors import ConfigError, NotComparable
    from edgekit.results import manifest as mf

    path = Path(manifest)
    if path.is_dir() or path.suffix == ".litertlm":
        found = mf.manifest_for_bundle(path)
        if found is None:
            raise ConfigError(f"{path}: no manifest.json beside it", hint="pass the manifest.json of a built bundle")
        path = found
    locked = mf.read_manifest(path).lock
    if not isinstance(locked, dict) or locked.get("schema") != lk.LOCK_SCHEMA:
        raise ConfigError(f"{path}: the manifest holds no lock (schema {lk.LOCK_SCHEMA})",
                          hint="rebuild the bundle with this edgekit to get one")
    diffs = lk.toolchain_differences(locked.get("toolchain") or {}, lk.toolchain())
    if diffs:
        raise NotComparable(
            f"the lock in {path} was made with another toolchain ({len(diffs)} difference(s)): " + "; ".join(diffs),
            hint="rebuild on the locked toolchain (the versions above), or build anew without --verify-lock",
        )
    notes: list[str] = []
    here = lk.host()
    if (locked.get("host") or {}).get("cpu_model") != here["cpu_model"]:
        notes.append(f"CPU differs: {(locked.get('host') or {}).get('cpu_model')} (lock) vs {here['cpu_model']} "
                     "(here); calibrated schemes may differ on another CPU")
    le = ((locked.get("toolchain") or {}).get("edgekit") or {}).get("source_sha256")
    if le and le != lk.edgekit_source_sha256():
        notes.append("edgekit's source differs from the build that made the lock (same version, edited files)")
    cache = Path(cache_dir) if cache_dir else ex.cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".verify-lock-", dir=cache))
    keep = False
    try:
        build_kwargs.update(output=tmp, quality=False)
        res = build(cache_dir=cache, progress=progress, **build_kwargs)
        rows = lk.compare(locked, mf.Manifest.of(res.manifest).lock)
        check = LockCheck(rows, None, notes)
        if not check.ok:
            keep = True
            check.rebuilt = res.bundle
            notes.append(f"rebuilt bundle kept in {res.bundle.parent}")
        return check
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _with_kv_cache(sch, kv_cache: str, qat_requantize: bool):
    """The scheme with its KV cache set from ``--kv-cache``: int8 needs static int8 activations (the
    cache's ranges are calibrated with them); the bundle's name says so (``<scheme>-kv8``), so a build
    beside the float-KV one does not replace it."""
    from edgekit.schemes.scheme import KV_CACHE

    if kv_cache not in KV_CACHE:
        raise UsageError(f"--kv-cache {kv_cache!r} is not one of {', '.join(KV_CACHE)}")
    if kv_cache == "int8" and not sch.static_activations:
        raise UsageError(f"an int8 KV cache needs static int8 activations; scheme {sch.name} has none",
                         hint="build a wNa8o8 scheme with --kv-cache int8, or drop --kv-cache")
    if kv_cache == "int8" and qat_requantize:
        raise UsageError("--requantize with --kv-cache int8 is not built: the naive QAT path keeps a float KV cache",
                         hint="drop --requantize to carry the checkpoint's k/v cache scales, or drop --kv-cache")
    name = sch.name.removesuffix("-kv8") + ("-kv8" if kv_cache == "int8" else "")
    return dataclasses.replace(sch, kv_cache=kv_cache, name=name)


def _make_work(cache: Path, model: str) -> Path:
    """The build's work folder in the cache (toolchain log, unpacked and quantized sections)."""
    import re

    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", str(model))[:40]
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{tag}.work-", dir=cache))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResourceError(f"disk full: cannot create a work folder in {cache}") from exc
        raise OutputNotWritable(f"cache folder {cache} is not writable: {exc.strerror}",
                                hint="set EDGEKIT_CACHE to a writable folder") from exc


def _clear_work(work: Path, keep: Path | None = None) -> None:
    """Remove everything in the work folder but ``keep`` (the log of a failed build)."""
    if not work.is_dir():
        return
    for p in work.iterdir():
        if keep is not None and p == keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                pass


def _planned_stages(sch, qat_build, quality: bool, verify_engine: bool) -> list[str]:
    """The stage names a build goes through, in order (for a progress bar)."""
    stages = ["source", "estimate", "export", "unpack"]
    if sch.static_activations and not (qat_build is not None and qat_build.exact):
        stages.append("calibrate")
    stages += ["quantize", "repack", "verify", "inspect"]
    if qat_build is not None:
        stages.append("qat")
    if quality and (sch.static_activations or sch.float_dtype == "float16"):
        stages.append("quality")
    return stages + ["manifest"]


def _build(
    model: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    random_weights: bool = False,
    width_div: int = 1,
    seed: int = 0,
    scheme: Any = "wNa8o8",
    text_only: bool = False,
    calibration: str | os.PathLike | None = None,
    output: str | os.PathLike = "dist",
    force: bool = False,
    prefill: int | None = None,
    cache_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    decode_steps: int = 8,
    calibration_samples: int = 64,
    verify_engine: bool = True,
    quality: bool = True,
    progress: Progress | None = None,
    requantize: bool = False,
    log=None,
    work_dir: Path,
    route: str = "auto",
    kv_cache: str | None = None,
) -> BuildResult:
    from edgekit.builder import encoders as enc
    from edgekit.builder import export as ex
    from edgekit.builder import quantize as qz
    from edgekit.builder import strategies
    from edgekit.bundle import inspect as insp
    from edgekit.bundle import lock as lk
    from edgekit.fsutil import atomic_dir
    from edgekit.results import manifest as mf
    from edgekit.models.presets import get_preset
    from edgekit.schemes import load_scheme

    t_start = time.monotonic()
    st = _Stages(progress, log)
    preset = get_preset(model)
    sch = load_scheme(scheme, preset)
    prefill = preset.default_prefill if prefill is None else prefill
    cache_length = preset.default_cache_length if cache_length is None else cache_length
    if prefill < 1 or cache_length < 2 or prefill >= cache_length:
        raise UsageError(f"--prefill {prefill} must be >= 1 and below --cache-length {cache_length}")
    if width_div < 1:
        raise UsageError(f"--width-div must be a positive integer, got {width_div}")
    cache = Path(cache_dir) if cache_dir else ex.cache_root()
    out_root = Path(output)
    # --- QAT checkpoints (edgekit/builder/qat.py): a quant_method 'gemma' checkpoint is validated before any
    # long work, exported from its exact dequantized float and quantized exactly (or naively: requantize)
    qat_build = None
    if checkpoint is not None and not random_weights:
        from edgekit.builder import qat as bq

        if bq.is_qat_checkpoint(checkpoint):
            qat_build = st.run("source", "QAT checkpoint: validate", bq.QatBuild.prepare,
                               checkpoint, preset, cache, requantize=requantize, dequantize=False)
            sch = qat_build.scheme(sch, preset)
    if kv_cache is not None and kv_cache != sch.kv_cache:
        sch = _with_kv_cache(sch, kv_cache, qat_build is not None and not qat_build.exact)
        if qat_build is not None:
            qat_build.kv_int8 = sch.kv_cache == "int8"  # the checkpoint's k/v cache scales, carried
    if requantize and qat_build is None:
        raise UsageError("--requantize applies only to a quant_method 'gemma' (QAT) checkpoint",
                         hint="pass --checkpoint <QAT checkpoint folder>, or drop --requantize")
    name = bundle_name(preset.name, sch.name, text_only)
    out_dir = out_root / name
    _check_writable(out_root)
    date_epoch = lk.source_date_epoch()  # a bad SOURCE_DATE_EPOCH fails now
    if log is not None:  # where the toolchain's log goes after a success (build() moves it)
        log.final_path = cache / "logs" / f"{name}.log"
    if progress is not None and hasattr(progress, "plan"):
        progress.plan(_planned_stages(sch, qat_build, quality, verify_engine))
    calib_texts: list[str] = []
    calib_info: dict[str, Any] = {}
    if sch.static_activations:  # a bad --calibration file fails now, not after the export
        calib_texts, calib_info = _calibration_texts(calibration)

    ckpt_dir, info = st.run("source", "validate checkpoint", plan_source, preset, checkpoint, random_weights, seed,
                            width_div, cache)
    source_dir = ckpt_dir  # the lock hashes the checkpoint given, not the QAT float derived from it
    wd = info.width_div if info is not None else width_div
    from edgekit.builder import streamed as sm

    # full-width E2B/E4B: convert a stand-in and fill the real weights in (edgekit/builder/streamed.py)
    streamed = sm.use_streamed(route, preset.name, wd)
    if qat_build is not None and not streamed:  # classic QAT: export the exact dequantized float
        ckpt_dir = st.run("source", "QAT checkpoint: exact dequantization", qat_build.dequantize, cache)
    if streamed and sch.kv_cache == "int8" and qat_build is None:
        raise UsageError("the int8 KV cache of float weights is built on the classic route only (its ranges come "
                         "from the float graph's calibration; a QAT checkpoint's come from its k/v cache scales)",
                         hint="add --route classic (needs more memory), or build with --kv-cache float")
    if streamed and requantize:  # streamed QAT reads the checkpoint's integers and SRQ scales as stored
        raise UsageError("--requantize (the naive QAT path) runs on the classic route only",
                         hint="add --route classic (needs more memory), or drop --requantize")
    opts = ex.ExportOptions(text_only=text_only, prefill_length=prefill, cache_length=cache_length)
    cached = False
    if info is not None:
        source_identity = {"preset": preset.name, "width_div": wd, "weights_sha256": info.weights_sha256}
        key = ex.export_key(source_identity, opts)
        cached = (cache / "exports" / key / "model.litertlm").is_file()
    towers_cached: tuple[str, ...] = ()
    if info is not None and streamed and not text_only:
        towers_cached = tuple(t for t in ("vision", "audio") if (
            cache / "encoders" / enc.towers_key(source_identity, (t,)) / "towers.json").is_file())
    baseline = _quality_baseline(out_root / bundle_name(preset.name, "fp16", text_only),
                                 info.weights_sha256 if info is not None else None) \
        if quality and sch.static_activations else None
    est = estimate(preset, wd, sch, text_only, out_root, cached, cache,
                   random_checkpoint_bytes=0 if info is not None else _random_bytes(preset, wd),
                   streamed=streamed, towers_cached=towers_cached,
                   quality_baseline_bytes=baseline[0].stat().st_size if baseline else 0,
                   baseline_scored=baseline is not None and _baseline_scored(baseline[0]),
                   scores_baseline=quality and sch.float16_weights)
    if progress:
        peak = "" if est.need_bytes == est.peak_rss_bytes else \
            f" (peak RSS ~{_gb(est.peak_rss_bytes)} with reclaimable file-backed pages)"
        progress("estimate", f"{est.params:,} params: needs ~{_gb(est.need_bytes)} RAM at {est.need_stage}{peak} "
                 f"(available {_gb(est.mem_available_bytes)}), ~{_gb(est.disk_bytes)} disk "
                 f"(free {_gb(est.disk_free_bytes)})", 0.0)
    if not force:
        if est.mem_available_bytes is not None and est.need_bytes > est.mem_available_bytes:
            over = est.need_bytes - est.mem_available_bytes
            raise ResourceError(
                f"building {name} needs about {_gb(est.need_bytes)} of memory at its {est.need_stage} stage, "
                f"{_gb(over)} more than the {_gb(est.mem_available_bytes)} available ({est.params:,} parameters)",
                hint="use --width-div to shrink the model, free memory, or pass --force",
            )
        if est.disk_free_bytes is not None and est.disk_bytes > est.disk_free_bytes:
            raise ResourceError(
                f"building {name} needs about {_gb(est.disk_bytes)} of disk, only {_gb(est.disk_free_bytes)} free",
                hint="free disk space, choose another --output / EDGEKIT_CACHE, or pass --force",
            )
    if info is None:
        info = st.run("source", f"random weights (seed {seed}, width_div {wd})", make_random_source, preset,
                      ckpt_dir, seed, wd)
        source_identity = {"preset": preset.name, "width_div": wd, "weights_sha256": info.weights_sha256}
        key = ex.export_key(source_identity, opts)
        cached = (cache / "exports" / key / "model.litertlm").is_file()

    if streamed:
        tie_bits = (load_scheme(preset.default_scheme, preset) if sch.is_float else sch).bits_for
        # the stand-in is the text graph only; the towers are converted after unpack, one child each
        exp = st.run("export", "litert-torch export_hf of the stand-in (shared weights, child process)",
                     sm.export_standin, ckpt_dir, source_identity, dataclasses.replace(opts, text_only=True),
                     tie_bits, cache)
    else:
        exp = st.run("export", "litert-torch export_hf (float32, child process)" + (" [cached]" if cached else ""),
                     ex.export_checkpoint, ckpt_dir, source_identity, opts, cache_dir=cache)
    float_bundle = exp.bundle

    work = work_dir
    try:
        with atomic_dir(out_dir) as tmp:
            toml = st.run("unpack", "litert-lm-builder unpack", qz.unpack, float_bundle, work / "unpacked")
            tower_rec: dict[str, Any] | None = None
            if streamed and not text_only:  # towers: one child each, only the tower's own weights loaded
                tower_files, tower_rec = st.run("export", "vision/audio towers (one child process per tower)",
                                                enc.cached_towers, ckpt_dir, source_identity, cache)
                enc.append_sections(toml, tower_files)
            all_secs = qz.section_files(toml)
            # vision/audio sections (edgekit/builder/encoders.py): weight-only, quantized on their own
            secs = {k: v for k, v in all_secs.items() if not enc.is_encoder_section(k)}
            calib_rec: dict[str, Any] | None = None
            replaced: dict[str, Path] = {}
            encoders_rec: dict[str, Any] | None = None
            if len(secs) != len(all_secs):
                enc_replaced, enc_q = enc.quantize_encoders(all_secs, sch, work, st.run)
                replaced.update(enc_replaced)
                encoders_rec = {"export": tower_rec or exp.record.get("encoders"), "quantization": enc_q}
            # the text sections: one strategy per kind (edgekit/builder/strategies.py)
            kind = strategies.kind_of(sch, qat_build, streamed)
            job = strategies.QuantizeJob(
                secs=secs, scheme=sch, work=work, run=st.run, float_bundle=float_bundle, ckpt_dir=ckpt_dir,
                vocab=int(preset.vocab_size), prefill=prefill, cache_length=cache_length, decode_steps=decode_steps,
                calibration_samples=calibration_samples, calib_texts=calib_texts, calib_info=calib_info,
                qat_build=qat_build, tokenize=_tokenize, progress=progress)
            text_replaced, calib_rec = strategies.quantize_text(kind, job)
            replaced.update(text_replaced)
            bundle = tmp / f"{name}.litertlm"
            softcap = _softcap(ckpt_dir)
            meta = {"edgekit.scheme": sch.name, "edgekit.preset": preset.name, "edgekit.width_div": int(wd)}
            if softcap:
                meta[SOFTCAP_KEY] = float(softcap)
            # the lock's identity: header uuid and date derived from inputs + options + toolchain
            lock_inputs = {
                "checkpoint": lk.checkpoint_inputs(source_dir, info.weights_sha256),
                "scheme": lk.scheme_input(scheme, sch.to_dict()),
                "calibration": lk.calibration_input(calibration, calib_info.get("sha256"), calib_rec is not None),
            }
            lock_options = {
                "model": preset.name,
                "random_weights": bool(info.is_random),
                "seed": seed if info.is_random else None,
                "width_div": int(wd),
                "scheme": sch.name,
                "text_only": bool(text_only),
                "prefill_length": int(prefill),
                "cache_length": int(cache_length),
                "decode_steps": int(decode_steps),
                "calibration_samples": int(calibration_samples),
                "requantize": bool(requantize),
                "route": "streamed" if streamed else "classic",
                "qat": qat_build is not None,
                "export": {**dataclasses.asdict(opts), "code_version": ex.EXPORT_CODE_VERSION,
                           "hash_seed": ex.EXPORT_HASH_SEED, "task": "text_generation", "quantization_recipe": "none",
                           "externalize_embedder": True, "split_cache": False},
                "system_metadata": {k: meta[k] for k in sorted(meta)},
                "source_date_epoch": date_epoch,
            }
            lock_tools = lk.toolchain()
            ident = lk.identity(lock_inputs, lock_options, lock_tools)
            with lk.fixed_header(ident["uuid"], ident["creation_timestamp"]):
                st.run("repack", "litert-lm-builder", qz.repack, toml, bundle, replaced, meta)

            runtime = _verify_stage(st, bundle, sch, prefill, cache_length, verify_engine)

            report = st.run("inspect", "read back", insp.inspect_bundle, bundle)
            build_rec = {
                "text_only": text_only,
                "prefill_length": prefill,
                "cache_length": cache_length,
                "export": {"cached": exp.cached, "key": exp.record.get("key", key),  # the stand-in's when streamed
                           "seconds": exp.record.get("seconds"), "peak_rss_bytes": exp.record.get("peak_rss_bytes")},
                "calibration": calib_rec,
                "encoders": encoders_rec,
                "toolchain_log": str(log.final_path) if log is not None else None,
                "estimate": est.to_dict(),
                "stages_s": st.times,
                "seconds": None,
                "peak_rss_bytes": None,
                "builder_peak_rss_bytes": None,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (time.monotonic() - t_start))),
            }
            manifest = mf.make_manifest(
                name=name,
                model={"preset": preset.name, "width_div": wd, "config": info.config,
                       "param_counts": preset.param_counts(wd)},
                source=info.source_record(),
                scheme=sch.to_dict(),
                build=build_rec,
                toolchain=ex.toolchain_versions(),
                report=report,
                runtime=runtime,
            )
            manifest["lock"] = lk.make_lock(inputs=lock_inputs, options=lock_options, tools=lock_tools,
                                            host_rec=lk.host(), ident=ident, bundle=bundle)
            violations = insp.check(report, sch, preset, manifest)
            if qat_build is not None:  # QAT: exactness read back, agreement with transformers
                violations = qat_build.expected_violations(violations)
                manifest["qat"] = st.run("qat", "exactness vs the checkpoint, agreement vs transformers",
                                         qat_build.report, bundle)
            if violations:
                raise BuildError(
                    f"the built bundle does not match scheme {sch.name}: {violations[0]}"
                    + (f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""),
                    hint="this is an edgekit/toolchain defect; rerun with EDGEKIT_DEBUG=1 and report it",
                )
            if quality and sch.static_activations:
                q = _quality(st, out_root / bundle_name(preset.name, "fp16", text_only), bundle, info)
                if q is not None:
                    manifest["quality"] = q
            if quality and sch.float16_weights:
                scored = _score_baseline(st, bundle, runtime)
                if scored is not None:
                    build_rec["baseline_scores"] = scored
            builder_peak = peak_rss_bytes()  # None where it cannot be read: shown as n/a
            export_peak = exp.record.get("peak_rss_bytes") if not exp.cached else None
            build_rec["builder_peak_rss_bytes"] = builder_peak
            tower_peak = max((t["peak_rss_bytes"] for t in (tower_rec or {}).get("towers", {}).values()
                              if not t.get("cached")), default=0)  # a cached tower's child did not run here
            quality_peak = max([c.get("peak_rss_bytes") or 0 for c in
                                ((manifest.get("quality") or {}).get("children") or {}).values()]
                               + [(build_rec.get("baseline_scores") or {}).get("peak_rss_bytes") or 0])
            build_rec["peak_rss_bytes"] = max(builder_peak or 0, export_peak or 0, tower_peak, quality_peak)
            build_rec["seconds"] = round(time.monotonic() - t_start, 3)
            build_rec["stages_s"] = st.times
            # where the builder's peak arose: its high-water mark after each stage (children: export, towers, quality)
            build_rec["builder_rss_after_stage_bytes"] = dict(st.peaks)
            st.run("manifest", "write", mf.write_manifest, tmp / mf.MANIFEST_FILE, manifest)
            for p_ in (tmp / mf.MANIFEST_FILE, bundle):
                os.chmod(p_, 0o644)
            os.chmod(tmp, 0o755)
    finally:
        _clear_work(work, keep=log.path if log is not None else None)
    if quality and sch.float16_weights:
        # The baseline was built after its candidate: give the candidate its quality record now.
        _backfill_quality(st, out_root / bundle_name(preset.name, preset.default_scheme, text_only),
                          out_dir / f"{name}.litertlm", manifest)
    return BuildResult(out_dir / f"{name}.litertlm", out_dir / mf.MANIFEST_FILE, manifest)


def _verify_stage(st: "_Stages", bundle: Path, sch, prefill: int, cache_length: int, verify_engine: bool) -> dict:
    """manifest["runtime"]: the bundle loaded and run in ai-edge-litert's interpreter (when it fits in
    memory) and in the LiteRT-LM CPU engine (a child process)."""
    from edgekit.builder import verify

    prompt = _tokenize(bundle, ["The quick brown fox"], limit=16)[0]
    from edgekit.builder.encoders import is_encoder_section
    from edgekit.runtime.litertlm_file import read_header

    # the interpreter check reads the text sections only (as the estimate counts them)
    sections = read_header(bundle).sections
    text_bytes = sum(s.size for s in sections if not is_encoder_section(s.name))
    pd_bytes = sum(s.size for s in sections if s.name == PD_SECTION)
    why = _verify_interpreter_skip(text_bytes, sch)
    if why:  # the engine check below still runs the bundle
        runtime: dict[str, Any] = {"interpreter": {"ok": None, "skipped": why}}
        st.run("verify", f"interpreter: skipped, {why}", lambda: None)
    else:
        runtime = {"interpreter": st.run("verify", "interpreter: load + generate", verify.check_interpreter,
                                         bundle, prompt)}
    if verify_engine:
        why = _engine_skip(text_bytes, pd_bytes, sch.float16_weights)
        if why:  # it would take the machine's memory (and perhaps the build) with it: named, not run
            runtime["litert_lm"] = {"ok": None, "skipped": why}
            st.run("verify", f"LiteRT-LM CPU engine: skipped, {why}", lambda: None)
        else:
            _release(st, "verify")
            runtime["litert_lm"] = st.run("verify", "LiteRT-LM CPU engine (child process)", verify.check_engine,
                                          bundle, min(16, prefill), 8, cache_length)
    return runtime


def _release(st: "_Stages", stage: str) -> None:
    """Give the builder's free memory back before it waits on an engine child: the child's weights are
    read through the page cache, and what the builder keeps is taken from it (full E4B: the builder held
    4.1 GB anonymous while its fp16 sibling's scoring child re-read its weight cache at 1.4 GB/s)."""
    freed = release_free_memory()
    if st.log is not None and freed is not None:
        st.log.note(f"[{stage}] gave {freed / 2**20:.0f} MiB of free memory back before the engine child")


def _baseline_scored(baseline_bundle: Path) -> bool:
    from edgekit.builder import quality_engine as qe

    return qe.baseline_scored(baseline_bundle)


def _score_baseline(st: "_Stages", bundle: Path, runtime: dict) -> dict[str, Any] | None:
    """An fp16 build scores itself once, with the engine, into the score cache, when its candidates'
    quality stage will take the engine route: each candidate built against it then runs only its own
    scoring child. Full E4B: the fp16 child maps an 18.6 GB float32 weight cache; beside a candidate's
    build it paged at 150-200 MB/s and had not finished after 25 min (6.5 min alone). None when the
    candidates will use the interpreter route; a failure is recorded, not raised (the build is done)."""
    from edgekit.builder import quality_engine as qe

    if not _candidate_engine_route(bundle.stat().st_size):
        return None
    no_scoring = _scoring_skip(bundle.stat().st_size, _prefill_decode_bytes(bundle), True)
    if no_scoring:
        st.run("quality", f"{bundle.name}: not scored for its candidates ({no_scoring})", lambda: None)
        return {"method": qe.METHOD, "skipped": no_scoring}
    engine = runtime.get("litert_lm") or {}
    if not engine.get("ok"):
        why = engine.get("skipped") or engine.get("error") or "the engine check did not run"
        st.run("quality", f"{bundle.name}: not scored for its candidates ({why})", lambda: None)
        return {"method": qe.METHOD, "skipped": f"the engine check did not pass: {why}"}
    _release(st, "quality")

    def run() -> dict[str, Any]:
        try:
            return qe.score_baseline(bundle)
        except EdgekitError as exc:
            return {"method": qe.METHOD, "skipped": f"engine scoring failed: {exc}"}

    return dict(st.run("quality", f"{bundle.name}: engine scores kept for its candidates' quality stage", run))


def _backfill_quality(st: "_Stages", cand_dir: Path, baseline_bundle: Path, baseline_manifest: dict) -> None:
    import importlib.util

    from edgekit.results import manifest as mf

    mpath = cand_dir / mf.MANIFEST_FILE
    if importlib.util.find_spec("edgekit.quality") is None or not mpath.is_file():
        return
    try:
        cand = mf.read_manifest(mpath)
    except EdgekitError:
        return
    base = mf.Manifest.of(baseline_manifest)
    if cand.quality or cand.bundle_file is None or cand.weights_sha256 != base.weights_sha256:
        return
    cand_bundle = cand_dir / cand.bundle_file
    if not cand_bundle.is_file():
        return
    res = _quality_against(st, cand_bundle, baseline_bundle, base.bundle_sha256, f"{cand_bundle.name} vs this baseline")
    mf.write_manifest(mpath, cand.replace(quality=res))


def _softcap(ckpt_dir: Path) -> float | None:
    import json

    try:
        cfg = json.loads((ckpt_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = cfg.get("text_config", cfg)
    v = text.get("final_logit_softcapping")
    return float(v) if v else None


def _check_writable(out_root: Path) -> None:
    base = _existing_parent(out_root)
    if not base.is_dir():
        raise OutputNotWritable(f"output folder {out_root} cannot be created: {base} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"output folder {out_root} is not writable (checked {base})")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        fd, p = tempfile.mkstemp(prefix=".edgekit-write-test-", dir=out_root)
        os.close(fd)
        os.unlink(p)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResourceError(f"disk full: cannot write to {out_root}") from exc
        raise OutputNotWritable(f"cannot write to output folder {out_root}: {exc.strerror}") from exc


def interpreter_need(bundle_bytes: int, float16_weights: bool) -> int:
    """What ai-edge-litert's interpreter holds to run a bundle of ``bundle_bytes``: its sections read
    into memory, plus, when the weights are fp16, their float32 copies in each of the two signature
    graphs (prefill and decode dequantize the tables apart): measured at e2b width/4 fp16, the
    verify interpreter of a 1.82 GB bundle peaked at 10.8 GB, ~1.4 GB of runtime + 5.2x the bundle."""
    return bundle_bytes * 5 if float16_weights else bundle_bytes


def _verify_interpreter_skip(bundle_bytes: int, scheme) -> str | None:
    """Why the verify stage's interpreter check cannot run for a bundle of this size built with this
    scheme (its weights are float16 only for a float scheme of float_dtype float16), or None when it
    fits. The estimate asks the same before the build, with the predicted bundle size."""
    return _too_big_for_interpreter(interpreter_need(bundle_bytes, scheme.float16_weights))


def engine_need(bundle_bytes: int, pd_bytes: int, float16_weights: bool) -> int:
    """The anonymous memory a LiteRT-LM CPU engine child needs to load and run a bundle whose text
    sections are ``bundle_bytes``, ``pd_bytes`` of them the prefill/decode section.

    With float16 weights: 1.55x that section. XNNPack unpacks the weights to float32 into its weight
    cache, a file (:func:`engine_cache_need`) that is mapped, so those pages are file-backed and can be
    reclaimed; what cannot is the unpacking's working memory. Measured peaks of the engine child's
    RssAnon: full E2B fp16 7.0 GB for a 4.56 GB section (1.53x), full E4B fp16 11.4 GB for 9.2 GB
    (1.24x, with 18.7 GB file-backed beside it). Otherwise the text sections' bytes: full E2B wNa8o8
    1.43 GB for 2.13 GB, full E4B wNa8o8 3.05 GB PSS for 3.20 GB."""
    return int(1.55 * pd_bytes) if float16_weights else bundle_bytes


def engine_cache_need(pd_bytes: int, float16_weights: bool) -> int:
    """Disk for XNNPack's weight cache of a bundle with float16 weights: their float32 copy, 2.02x the
    prefill/decode section (full E4B fp16: 18.58 GB for 9.2 GB). 0 otherwise (the packed integer
    weights are the size of the section or less, and the bundle itself is already on that disk)."""
    return int(2.05 * pd_bytes) if float16_weights else 0


def _prefill_decode_bytes(bundle: Path) -> int:
    """The prefill/decode section's bytes, or the whole file's when it is not a readable bundle."""
    from edgekit.runtime.litertlm_file import read_header

    try:
        return sum(s.size for s in read_header(bundle).sections if s.name == PD_SECTION)
    except (OSError, ValueError, EdgekitError):
        return bundle.stat().st_size


def _engine_skip(bundle_bytes: int, pd_bytes: int, float16_weights: bool) -> str | None:
    """Why a LiteRT-LM engine child cannot run a bundle here (:func:`engine_need` against 0.9x
    MemAvailable, :func:`engine_cache_need` against the free space of the temporary folder its
    weight cache goes to), or None when it fits: the verify stage's engine check and the quality
    stage's engine scoring of an fp16 baseline."""
    avail = mem_available()
    need = engine_need(bundle_bytes, pd_bytes, float16_weights)
    if avail is not None and need > 0.9 * avail:
        return (f"the LiteRT-LM engine would hold ~{_gb(need)}"
                + (" (float16 weights unpacked to float32)" if float16_weights else "")
                + f", {_gb(avail)} available: run the bundle on a machine with more memory")
    cache = engine_cache_need(pd_bytes, float16_weights)
    if cache:
        tmp = tempfile.gettempdir()
        try:
            free = shutil.disk_usage(tmp).free
        except OSError:
            free = None
        if free is not None and cache > free:
            return (f"the LiteRT-LM engine's weight cache (float16 weights as float32) would take ~{_gb(cache)} "
                    f"in {tmp}, {_gb(free)} free: set TMPDIR to a folder with more space")
    return None


# Engine scoring runs one decode step per scored token, each reading every weight: the child's anonymous
# memory and, for float16 weights, XNNPack's float32 weight cache must stay resident together, or every
# token re-reads the cache from disk. Full E4B fp16 beside its builder (0.66 GB): the scoring child held
# 5.97 GB anonymous (0.65x its 9.2 GB prefill/decode section) and 17.6 of its 18.6 GB cache on a 24.7 GB
# machine, paged at 150-200 MB/s and had not scored 254 tokens after 44 min (6.5 min when it fits).
SCORING_ANON_PER_PD = 0.65


def scoring_resident(pd_bytes: int, float16_weights: bool) -> int:
    """What an engine scoring child keeps resident: anonymous memory + the float32 weight cache."""
    return int(SCORING_ANON_PER_PD * pd_bytes) + engine_cache_need(pd_bytes, float16_weights)


def _scoring_skip(bundle_bytes: int, pd_bytes: int, float16_weights: bool) -> str | None:
    """Why a bundle cannot be scored by the engine here (it does not load, or its working set would
    not stay resident), or None."""
    why = _engine_skip(bundle_bytes, pd_bytes, float16_weights)
    if why or not float16_weights:
        return why
    need, avail = scoring_resident(pd_bytes, True), mem_available()
    if avail is not None and need > avail:
        return (f"engine scoring keeps ~{_gb(need)} resident (float16 weights as a float32 weight cache, and "
                f"its anonymous memory), {_gb(avail)} available: every scored token would re-read the cache "
                f"from disk; score it on a machine with more memory")
    return None


def _quality_interpreter_skip(candidate_bytes: int, baseline_bytes: int) -> str | None:
    """Why the quality stage cannot score the candidate against its fp16 baseline in the builder's
    interpreter (both held at once), or None when both fit."""
    return _too_big_for_interpreter(interpreter_need(candidate_bytes, False), interpreter_need(baseline_bytes, True))


def _too_big_for_interpreter(*need: int) -> str | None:
    """Why the in-process interpreter checks cannot run here, or None when they fit."""
    avail = mem_available()
    total = sum(need)
    if avail is not None and total > 0.8 * avail:
        return (f"the interpreter would hold ~{_gb(total)} (sections in memory, float16 weights as float32), "
                f"{_gb(avail)} available")
    return None


def _engine_quality(st: _Stages, candidate: Path, baseline_bundle: Path, why: str) -> dict[str, Any]:
    """The quality record by LiteRT-LM engine scoring (each bundle in its own child, one after the
    other) when the interpreter route does not fit; a failure of the engine is recorded, not raised."""
    from edgekit.builder import quality_engine as qe

    def run() -> dict[str, Any]:
        try:
            return qe.evaluate_engine(candidate, baseline_bundle)
        except EdgekitError as exc:
            return {"skipped": f"{why}; engine scoring failed: {exc}", "method": qe.METHOD}

    res = dict(st.run("quality", f"{candidate.name} vs {baseline_bundle.name}: engine scoring ({why})", run))
    res["interpreter_skipped"] = why
    return res


def _quality_baseline(baseline_dir: Path, weights_sha256: str | None):
    """(bundle, manifest) of the fp16 build the quality stage scores against, or None when there
    is none for these weights (``weights_sha256`` None: random weights not made yet, any sibling)."""
    import importlib.util

    from edgekit.results import manifest as mf

    if importlib.util.find_spec("edgekit.quality") is None:
        return None
    mpath = baseline_dir / mf.MANIFEST_FILE
    if not mpath.is_file():
        return None
    try:
        base = mf.read_manifest(mpath)
    except EdgekitError:
        return None
    if base.bundle_file is None or (weights_sha256 is not None and base.weights_sha256 != weights_sha256):
        return None
    baseline_bundle = baseline_dir / base.bundle_file
    return (baseline_bundle, base) if baseline_bundle.is_file() else None


def _quality(st: _Stages, baseline_dir: Path, candidate: Path, info) -> dict[str, Any] | None:
    """manifest["quality"] against an fp16 build of the same source, when one exists."""
    found = _quality_baseline(baseline_dir, info.weights_sha256)
    if found is None:
        return None
    baseline_bundle, base = found
    return _quality_against(st, candidate, baseline_bundle, base.bundle_sha256, f"vs {baseline_bundle.name}")


def _quality_against(st: _Stages, candidate: Path, baseline_bundle: Path, baseline_sha256: str | None,
                     label: str) -> dict[str, Any]:
    """The quality record of ``candidate`` against its fp16 baseline: in the builder's interpreter
    when both fit, else by engine scoring (:func:`_engine_quality`)."""
    from edgekit import quality as ql

    why = _quality_interpreter_skip(candidate.stat().st_size, baseline_bundle.stat().st_size)
    no_engine = _scoring_skip(baseline_bundle.stat().st_size, _prefill_decode_bytes(baseline_bundle), True) \
        if why else None
    if no_engine:
        from edgekit.builder import quality_engine as qe

        st.run("quality", f"{label}: skipped, {no_engine}", lambda: None)
        res = {"skipped": f"{why}; the fp16 baseline: {no_engine}", "method": qe.METHOD, "interpreter_skipped": why}
    elif why:
        _release(st, "quality")
        res = _engine_quality(st, candidate, baseline_bundle, why)
    else:
        res = dict(st.run("quality", label, ql.evaluate, candidate, baseline_bundle))
    res["baseline"] = {"bundle": str(baseline_bundle), "sha256": baseline_sha256}
    return res
