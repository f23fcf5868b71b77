"""Hugging Face checkpoint -> float32 ``.litertlm`` through litert-torch's ``export_hf``.

The export runs in a child process (``python -m edgekit.builder.export``): it
imports torch, transformers and tensorflow, peaks at roughly 10 bytes of RSS per
parameter, and may crash inside native code; a child keeps the builder's own
memory small, isolates crashes and lets us measure its peak RSS exactly
(``os.wait4`` rusage of that child).

Layout of the export (the CPU engine's): externalized embedder and per-layer
embedder sections, no split cache, ``prefill_<N>`` and ``decode`` signatures.
Exports are cached under ``$EDGEKIT_CACHE`` (default ``.cache/edgekit``), keyed by
source identity, options and toolchain versions, so fp16 and wNa8o8 builds
(and sweeps) of the same source share one export.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgekit.errors import BuildError
from edgekit.fsutil import atomic_write_json, partial_dir

EXPORT_CODE_VERSION = 2  # bump when the export options below change meaning
# 2: the child runs with PYTHONHASHSEED=0. litert-torch 0.10.0 collects the stop tokens in a
# set() and writes them in its iteration order (generative/export_hf/core/litert_lm_builder.py),
# which for strings depends on the hash seed; exports of version 1 were made with a random seed
# and are not reused, so every cached export has the fixed order.
EXPORT_HASH_SEED = "0"
CACHE_ENV = "EDGEKIT_CACHE"
TOOLCHAIN_PACKAGES = (
    "litert-torch",
    "ai-edge-quantizer",
    "ai-edge-litert",
    "litert-lm-api",
    "litert-lm-builder",
    "transformers",
    "torch",
    "tensorflow-cpu",
)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.cwd() / ".cache" / "edgekit")


def toolchain_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for p in TOOLCHAIN_PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    text_only: bool = True
    prefill_length: int = 32
    cache_length: int = 256
    # litert-torch's lightweight conversion: constants stay lazy (resource constants)
    # through MLIR lowering instead of being copied into dense attributes. Same
    # outputs (bit-identical: tiny and e2b w8, tests/toolchain/test_build_memory.py) and a lower
    # export peak (e2b w4: 9.94 -> 5.96 GiB; docs/build-memory.md), but it leaves some
    # FC weights unnamed ("arith.constant<N>": the tied lm_head; at e2b w8 also the 60
    # MLP weights of layers 15-34 in the decode graph), and plan_section / inspect map
    # weights to modules by name: off by default until that mapping falls back to the
    # op scope (whose output tensor name still carries the module path).
    lightweight_conversion: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.lightweight_conversion:  # exports cached before the option existed keep their keys
            d.pop("lightweight_conversion")
        return d


@dataclasses.dataclass(frozen=True)
class ExportResult:
    bundle: Path
    cached: bool
    seconds: float  # of the export itself (0 when cached... see record)
    peak_rss_bytes: int | None
    record: dict[str, Any]


def export_key(source_identity: dict[str, Any], options: ExportOptions) -> str:
    blob = json.dumps(
        {
            "source": source_identity,
            "options": options.to_dict(),
            "toolchain": toolchain_versions(),
            "code": EXPORT_CODE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _tail(path: Path, n: int = 40) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return lines[-n:]


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def _failure_line(lines: list[str]) -> str:
    """The exception line of the child's traceback (not the exporter's noisy [ERROR] logs)."""
    for line in reversed(lines):
        s = line.strip()
        if _EXC_LINE.match(s):
            return s[:300]
    return lines[-1].strip()[:300] if lines else "no output"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the builder dies, even by SIGKILL or the OOM killer
    (a conversion child holds GBs; SIGTERM and Ctrl-C already kill it through the waiting builder)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL (Linux only)
    except (OSError, AttributeError):
        pass


def run_conversion_child(cmd: list[str], log_path: Path) -> tuple[int, float, int]:
    """Runs one conversion child (``cmd``) to its end; stdout and stderr go to ``log_path``.

    The child gets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless set) and ``PYTHONHASHSEED`` fixed to
    :data:`EXPORT_HASH_SEED` (the stop-token order in the bundle, see above). It is waited for
    with ``os.wait4`` so its own peak RSS is read from its rusage; an exception while waiting
    (Ctrl-C) kills it. Returns ``(exit code, wall seconds, peak RSS bytes)``: the exit code as
    ``os.waitstatus_to_exitcode`` gives it (negative: killed by that signal), the peak RSS
    from ``ru_maxrss`` (KiB on Linux).
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONHASHSEED"] = EXPORT_HASH_SEED
    t0 = time.monotonic()
    with open(log_path, "wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    seconds = time.monotonic() - t0
    return os.waitstatus_to_exitcode(status), seconds, int(rusage.ru_maxrss) * 1024


def child_failure(code: int, log_path: Path) -> str:
    """Why a conversion child failed: the signal that killed it, else its traceback's exception line."""
    if code < 0:
        return f"killed by signal {-code} (out of memory?)"
    return _failure_line(_tail(log_path))


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    source_identity: dict[str, Any],
    options: ExportOptions,
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    child: str = "edgekit.builder.export",
    child_args: tuple[str, ...] = (),
    key_extra: dict[str, Any] | None = None,
) -> ExportResult:
    """Export (or reuse the cached export of) a checkpoint to a float32 ``.litertlm``.

    ``child`` is the module run as the export child (``edgekit.builder.standin`` converts
    the stand-in graph), with ``child_args`` appended; ``key_extra`` joins the cache key.
    """
    root = Path(cache_dir) if cache_dir else cache_root()
    key = export_key({**source_identity, **({"child": child, **key_extra} if key_extra else {})}, options)
    (root / "exports").mkdir(parents=True, exist_ok=True)
    # One export per key at a time (parallel builds / test sessions share the cache).
    with open(root / "exports" / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _export_locked(checkpoint_dir, source_identity, options, root, key, force, child, child_args)


def _export_locked(checkpoint_dir, source_identity, options, root: Path, key: str, force: bool,
                   child: str = "edgekit.builder.export", child_args: tuple[str, ...] = ()) -> ExportResult:
    entry = root / "exports" / key
    bundle = entry / "model.litertlm"
    record_path = entry / "export.json"
    if not force and bundle.is_file() and record_path.is_file():
        try:
            rec = json.loads(record_path.read_text())
            return ExportResult(bundle, True, 0.0, rec.get("peak_rss_bytes"), rec)
        except (OSError, json.JSONDecodeError):
            pass
    work = partial_dir(root / "exports", key)
    try:
        out_dir = work / "out"
        logf = work / "export.log"
        cmd = [
            sys.executable,
            "-m",
            child,
            "--model",
            str(Path(checkpoint_dir).resolve()),
            "--output-dir",
            str(out_dir),
            "--prefill",
            str(options.prefill_length),
            "--cache-length",
            str(options.cache_length),
        ]
        if not options.text_only:
            cmd.append("--with-encoders")
        if options.lightweight_conversion:
            cmd.append("--lightweight")
        cmd.extend(child_args)
        code, seconds, peak = run_conversion_child(cmd, logf)
        produced = out_dir / "model.litertlm"
        if code != 0 or not produced.is_file():
            why = child_failure(code, logf)
            kept = root / "exports" / f"failed-{key}.log"
            shutil.copyfile(logf, kept)
            raise BuildError(f"litert-torch export failed: {why} (log: {kept})")
        rec = {
            "key": key,
            "source": source_identity,
            "options": options.to_dict(),
            "toolchain": toolchain_versions(),
            "seconds": round(seconds, 3),
            "peak_rss_bytes": peak,
            "bytes": produced.stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if (out_dir / "encoders.json").is_file():  # the --with-encoders child's record (encoders.py)
            rec["encoders"] = json.loads((out_dir / "encoders.json").read_text())
        final = work / "model.litertlm"
        os.replace(produced, final)
        shutil.rmtree(out_dir, ignore_errors=True)
        atomic_write_json(work / "export.json", rec)
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(work, entry)
        return ExportResult(bundle, False, seconds, peak, rec)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ child side
@contextlib.contextmanager
def lightweight_everywhere():
    """Within: litert-torch's lightweight conversion is the default of every ``Converter.convert``.

    ``export_hf`` passes ``experimental_lightweight_conversion`` to the embedder and
    prefill/decode converts but not to the per-layer embedder's (litert-torch 0.10.0,
    ``export_additional_models_impl``), and that table is the largest tensor of a
    Gemma 4 model (2.35 B of E2B's 4.63 B text parameters). Used in the export child
    around the text export only (not the encoders: their module mapping reads
    weight names, which lightweight conversion may drop); an explicit
    ``lightweight_conversion=`` argument still wins.
    """
    import functools

    from litert_torch._convert import interface

    conv = interface.Converter.convert

    @functools.wraps(conv)
    def convert(self, *args, **kwargs):
        kwargs.setdefault("lightweight_conversion", True)
        return conv(self, *args, **kwargs)

    interface.Converter.convert = convert
    try:
        yield
    finally:
        interface.Converter.convert = conv


def _child(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.builder.export")
    ap.add_argument("--model", required=True)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--prefill", type=int, required=True)
    ap.add_argument("--cache-length", type=int, required=True)
    ap.add_argument("--with-encoders", action="store_true")
    ap.add_argument("--lightweight", action="store_true")
    a = ap.parse_args(argv)
    from litert_torch.generative.export_hf import export as hf_export

    kwargs: dict[str, Any] = dict(
        quantization_recipe="none",
        prefill_lengths=[a.prefill],
        cache_length=a.cache_length,
        externalize_embedder=True,
        split_cache=False,
        bundle_litert_lm=True,
        export_vision_encoder=False,
        export_audio_encoder=False,
    )
    if a.lightweight:
        kwargs["experimental_lightweight_conversion"] = True
    with lightweight_everywhere() if a.lightweight else contextlib.nullcontext():
        hf_export.export(model=a.model, output_dir=a.output_dir, task="text_generation", **kwargs)
    if a.with_encoders:  # litert-torch's multimodal task needs torchvision: see edgekit/builder/encoders.py
        from edgekit.builder import encoders

        out = Path(a.output_dir)
        files, rec = encoders.export_encoders(a.model, out / "encoders")
        text_bundle = out / "text.litertlm"
        os.replace(out / "model.litertlm", text_bundle)
        encoders.add_sections(text_bundle, files, out / "model.litertlm", out / "unpacked")
        atomic_write_json(out / "encoders.json", rec)
    return 0


if __name__ == "__main__":
    sys.exit(_child())
