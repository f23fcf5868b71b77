"""Benchmark one bundle on this machine and write JSONL (docs/contracts.md, "Runner").

    python -m edgekit.runtime.runner BUNDLE --prefill P --decode D --warmup W --reps R
        [--threads T] [--backend auto|litert_lm|interpreter] [--max-tokens N] [--out FILE]
        [--token-times] [--mode cold|warm] [--fresh-engine] [--sha256 HEX]

Each warmup and repetition runs a fresh session on the same engine: a prefill of
exactly P prompt tokens (a fixed, deterministic prompt) then D decode steps; one JSONL
run record per iteration.

Backends:

* ``litert_lm``: LiteRT-LM's engine (``litert_lm.Engine``). The prompt is fixed text
  whose token count is checked with the engine's own tokenizer. Decoding is one
  ``run_decode`` call, no Python per token (what `litert-lm benchmark` times); with
  ``--token-times`` it goes through the engine's stream callback instead, each token
  timestamped as it is produced (that callback runs Python on the engine's thread once
  per token and slowed decode by 7-13% on the tiny bundles). ``prefill_ms`` and
  ``decode_ms`` are the engine's own prefill and decode turns (BenchmarkInfo, as
  `litert-lm benchmark` reports them; tokenizing the prompt is outside them);
  ``prefill_wall_ms`` / ``decode_wall_ms`` are the wall times of the calls.
* TTFT on every backend: ``ttft_ms`` = the first prefill turn + the decode turn / its
  tokens, engine init excluded (LiteRT-LM's BenchmarkInfo::GetTimeToFirstToken);
  ``ttft_wall_ms`` (when tokens are timed) = the prefill call's wall time + the first
  decode gap, what a caller streaming tokens waits.
* ``interpreter``: ``edgekit.runtime.signatures.BundleModel`` (ai-edge-litert's
  interpreter driving the bundle's ``prefill_<N>``/``decode`` signatures) with
  deterministic prompt ids and greedy decoding, one ``decode`` call per token.
* ``auto``: ``litert_lm`` if the engine loads the bundle, else ``interpreter``; the
  start record says which ran and why.

Only the standard library, numpy, ai_edge_litert and litert_lm are used, so the
``edgekit/runtime`` folder can be copied to a Pi and run there with
``PYTHONPATH=<copy> python -m edgekit.runtime.runner`` (see :func:`runtime_files`).
Exit status: 0 ok, 2 bad arguments, 3 the bundle did not load or a run failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import threading
import time
from typing import Any, Callable, TextIO

SCHEMA = 1
RUNNER_NAME = "edgekit-runner"
# Candidate prompt words, tried in order: the first that the bundle's tokenizer turns
# into exactly one token per repetition is used (" the" in Gemma's and the tiny
# tokenizer; a single byte in byte-level tokenizers without merges).
PROMPT_WORDS = (" the", " a", " and", " of", "the", "a", "x", "0", " ")
# What ttft_ms means for every backend: LiteRT-LM's BenchmarkInfo::GetTimeToFirstToken.
TTFT_DEFINITION = "first prefill turn + decode turn / decode tokens (LiteRT-LM BenchmarkInfo), engine init excluded"
EXIT_USAGE = 2
EXIT_FAILED = 3


class RunnerError(RuntimeError):
    pass


# --- helpers -------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # not installed
        return None


def _edgekit_version() -> str:
    try:
        from edgekit import __version__

        return __version__
    except Exception:
        return "standalone"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def prompt_ids(n: int, vocab_size: int, reserved: int = 16) -> list[int]:
    """A fixed pseudo-random prompt of n token ids in [reserved, vocab_size)."""
    span = max(vocab_size - reserved, 1)
    return [reserved + (i * 7919 + 104729) % span for i in range(n)]


def runtime_files() -> list[tuple[str, str]]:
    """(local path, path relative to a PYTHONPATH root) of the files a device needs."""
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.dirname(here)
    out = [(os.path.join(pkg, "__init__.py"), "edgekit/__init__.py")]
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            out.append((os.path.join(here, name), f"edgekit/runtime/{name}"))
    return out


class Emitter:
    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, rec: dict[str, Any]) -> None:
        self.stream.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.stream.flush()


# --- backends ------------------------------------------------------------------------


class LiteRtLmBackend:
    name = "litert_lm"

    def __init__(self, bundle: str, threads: int | None, max_tokens: int | None, token_times: bool = False):
        import litert_lm

        self._lm = litert_lm
        self.token_times = token_times
        backend = litert_lm.Backend.CPU(thread_count=threads) if threads else litert_lm.Backend.CPU()
        self.engine = litert_lm.Engine(bundle, backend=backend, max_num_tokens=max_tokens, enable_benchmark=True)
        self._prompt: str | None = None
        self._prompt_tokens: int | None = None

    def prompt(self, n: int) -> str:
        """Fixed text that the engine prefills as exactly n tokens (BOS included)."""
        if self._prompt is None or self._prompt_tokens != n:
            bos = 1 if self.engine.bos_token_id is not None else 0
            words = max(n - bos, 1)
            counts = {}
            for word in PROMPT_WORDS:
                text = word * words
                counts[word] = len(self.engine.tokenize(text)) + bos
                if counts[word] == n:
                    break
            else:
                raise RunnerError(f"no fixed prompt tokenizes to exactly {n} tokens with this tokenizer "
                                  f"(tried {counts}); use the interpreter backend")
            self._prompt, self._prompt_tokens = text, n
        return self._prompt

    def _decode_sync(self, session) -> tuple[float, float]:
        """One decode call without Python in the loop (what `litert-lm benchmark` times)."""
        d0 = time.perf_counter()
        try:
            session.run_decode()
        except RuntimeError as exc:  # reaching max_output_tokens is how this decode ends
            if "max number of tokens" not in str(exc).lower():
                raise
        return d0, time.perf_counter()

    def _decode_streamed(self, session, decode: int) -> tuple[float, list[float]]:
        """Decode through the stream callback, stamping each chunk: (start, stamps)."""
        from litert_lm._ffi import STREAM_CALLBACK_TYPE

        lib = session._lib
        stamps: list[float] = []
        errors: list[str] = []
        done = threading.Event()

        def on_chunk(_user, chunk_ptr):  # runs on the engine's thread, once per decode step
            now = time.perf_counter()
            try:
                err = lib.litert_lm_stream_chunk_get_error(chunk_ptr)
                final = lib.litert_lm_stream_chunk_is_final(chunk_ptr)
                if err:
                    msg = err.decode("utf-8", "replace")
                    if "max number of tokens" not in msg.lower() and "cancel" not in msg.lower():
                        errors.append(msg)
                elif not final:
                    stamps.append(now)
                if final or err:
                    done.set()
            except Exception as exc:  # never let an exception cross the C boundary
                errors.append(repr(exc))
                done.set()

        callback = STREAM_CALLBACK_TYPE(on_chunk)
        session._current_callback = callback  # keep it alive while the engine may call it
        d0 = time.perf_counter()
        rc = lib.litert_lm_session_run_decode_async(session._ptr, callback, None)
        if rc != 0:
            raise RunnerError("litert_lm_session_run_decode_async failed")
        if not done.wait(timeout=max(60.0, decode * 10.0)):
            session.cancel_process()
            raise RunnerError("decode did not finish (timed out)")
        if errors:
            raise RunnerError(f"decode failed: {errors[0]}")
        return d0, stamps

    def run_once(self, prefill: int, decode: int) -> dict[str, Any]:
        text = self.prompt(prefill)
        session = self.engine.create_session(apply_prompt_template=False, max_output_tokens=decode)
        gaps: list[float] = []
        try:
            t_start = time.time()
            p0 = time.perf_counter()
            session.run_prefill([text])
            p1 = time.perf_counter()
            if self.token_times:
                d0, stamps = self._decode_streamed(session, decode)
                prev = d0
                for s in stamps:
                    gaps.append((s - prev) * 1000.0)
                    prev = s
                decode_wall_ms = sum(gaps)
            else:
                d0, d1 = self._decode_sync(session)
                decode_wall_ms = (d1 - d0) * 1000.0
            t_end = time.time()
            info = session.get_benchmark_info()
        finally:
            session.close()
        n_dec = info.last_decode_token_count or len(gaps) or None
        wall_ms = (p1 - p0) * 1000.0
        n_pre = info.last_prefill_token_count or prefill
        # prefill_ms / decode_ms: the engine's own prefill and decode turns (n / its tok/s),
        # the same boundaries as `litert-lm benchmark` and litert_lm_main. The wall time of
        # the prefill call also holds tokenizing the prompt and the C/Python call (~1-2% on
        # e2b w4, ~30% on tiny): prefill_wall_ms. ttft_ms is LiteRT-LM's definition
        # (BenchmarkInfo::GetTimeToFirstToken: the first prefill turn + the decode turn / its
        # tokens, no engine init); ttft_wall_ms (streamed runs only) is what a caller waits:
        # prefill wall + the first decode gap.
        eng_ms = n_pre / info.last_prefill_tokens_per_second * 1000.0 \
            if info.last_prefill_token_count and info.last_prefill_tokens_per_second else None
        prefill_ms = eng_ms if eng_ms is not None and 0 < eng_ms <= wall_ms else wall_ms
        eng_dec_ms = info.last_decode_token_count / info.last_decode_tokens_per_second * 1000.0 \
            if info.last_decode_token_count and info.last_decode_tokens_per_second else None
        # the engine's decode turn may end a little after the last stamp: allow 5% over the wall
        decode_ms = eng_dec_ms if eng_dec_ms is not None and 0 < eng_dec_ms <= decode_wall_ms * 1.05 + 1.0 \
            else decode_wall_ms
        if n_dec is None:
            n_dec = decode
        ttft = info.time_to_first_token_in_second * 1000.0 if info.time_to_first_token_in_second else None
        if ttft is None or ttft <= 0:
            ttft = prefill_ms + (decode_ms / n_dec if n_dec else 0.0)
        out = {
            "ttft_ms": ttft,
            "prefill_ms": prefill_ms,
            "prefill_wall_ms": wall_ms,
            "prefill_timing": "engine" if prefill_ms is eng_ms else "wall",
            "prefill_tokens": n_pre,
            "decode_ms": decode_ms,
            "decode_wall_ms": decode_wall_ms,
            "decode_timing": "engine" if decode_ms is eng_dec_ms else ("stream" if self.token_times else "wall"),
            "decode_tokens": n_dec,
            "token_ms": gaps,
            "t_start": t_start,
            "t_end": t_end,
            "engine_ttft_ms": info.time_to_first_token_in_second * 1000.0,
            # The engine's own BenchmarkInfo figures for this run (LiteRT-LM times its
            # prefill and decode turns inside the engine, without tokenization,
            # Python or stream callbacks): kept beside edgekit's wall-clock figures.
            "engine_prefill_tokens": info.last_prefill_token_count,
            "engine_prefill_tps": info.last_prefill_tokens_per_second,
            "engine_decode_tokens": info.last_decode_token_count,
            "engine_decode_tps": info.last_decode_tokens_per_second,
        }
        if gaps:
            out["ttft_wall_ms"] = wall_ms + gaps[0]
        if self.token_times and n_dec != len(gaps):
            # The engine streams text, not tokens: a token that ends inside a UTF-8
            # sequence is held back and sent with the next one, so one chunk can carry
            # several tokens. Then the gaps are per chunk, not per token: keep them
            # apart (they are real, but not per-token latencies) and say why.
            out["token_ms"] = []
            out["chunk_ms"] = gaps
            out["token_timing"] = f"per chunk: {n_dec} tokens arrived in {len(gaps)} stream chunks"
        return out

    def close(self) -> None:
        self.engine.close()


class InterpreterBackend:
    name = "interpreter"

    def __init__(self, bundle: str, threads: int | None, max_tokens: int | None, token_times: bool = False):
        try:
            from edgekit.runtime.signatures import BundleModel
        except ImportError as exc:  # a copy without signatures.py
            raise RunnerError(f"interpreter backend unavailable: {exc}") from exc
        import numpy as np

        self._np = np
        self.model = BundleModel(bundle, num_threads=threads)
        self.max_tokens = max_tokens

    def run_once(self, prefill: int, decode: int) -> dict[str, Any]:
        np = self._np
        m = self.model
        room = m.cache_length if not self.max_tokens else min(m.cache_length, self.max_tokens)
        if prefill + decode > room:
            raise RunnerError(f"prefill {prefill} + decode {decode} tokens exceed the cache length {room}")
        ids = prompt_ids(prefill, m.vocab_size)
        m.reset()
        t_start = time.time()
        p0 = time.perf_counter()
        logits = m.prefill(ids)
        p1 = time.perf_counter()
        token_ms = []
        prev = p1
        for _ in range(decode):
            tok = int(np.argmax(logits))
            logits = m.decode(tok)
            now = time.perf_counter()
            token_ms.append((now - prev) * 1000.0)
            prev = now
        t_end = time.time()
        prefill_ms = (p1 - p0) * 1000.0
        decode_ms = sum(token_ms)
        return {
            # the same definition as on litert_lm (LiteRT-LM's BenchmarkInfo): prefill + mean decode step
            "ttft_ms": prefill_ms + (decode_ms / len(token_ms) if token_ms else 0.0),
            "ttft_wall_ms": prefill_ms + (token_ms[0] if token_ms else 0.0),
            "prefill_ms": prefill_ms,
            "prefill_tokens": prefill,
            "decode_ms": decode_ms,
            "decode_tokens": len(token_ms),
            "token_ms": token_ms,
            "t_start": t_start,
            "t_end": t_end,
        }

    def close(self) -> None:
        pass


def open_backend(kind: str, bundle: str, threads: int | None, max_tokens: int | None,
                 token_times: bool = False) -> tuple[Any, str | None]:
    """-> (backend, why litert_lm was not used under auto)."""
    if kind == "litert_lm":
        return LiteRtLmBackend(bundle, threads, max_tokens, token_times), None
    if kind == "interpreter":
        return InterpreterBackend(bundle, threads, max_tokens), None
    try:
        return LiteRtLmBackend(bundle, threads, max_tokens, token_times), None
    except Exception as exc:  # the engine cannot load this bundle here
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        try:
            return InterpreterBackend(bundle, threads, max_tokens), reason
        except Exception as exc2:
            raise RunnerError(f"litert_lm: {reason}; interpreter: {type(exc2).__name__}: {exc2}".splitlines()[0]) from exc2


# --- main ----------------------------------------------------------------------------


def run(args: argparse.Namespace, emit: Callable[[dict], None], close: bool = True) -> int:
    """Run the benchmark, emitting records. ``close=False`` leaves the engine open (the
    command line exits the process right after the end record: see :func:`main`)."""
    bundle = os.path.abspath(os.path.expanduser(args.bundle))
    start = {
        "event": "start",
        "schema": SCHEMA,
        "runner": RUNNER_NAME,
        "edgekit_version": _edgekit_version(),
        "backend": None,
        "backend_requested": args.backend,
        "bundle": bundle,
        "bundle_sha256": None,
        "prefill_tokens": args.prefill,
        "decode_tokens": args.decode,
        "warmup": args.warmup,
        "reps": args.reps,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "fresh_engine": bool(args.fresh_engine),
        "mode": args.mode,
        "token_times": bool(args.token_times),
        "ttft_definition": TTFT_DEFINITION,
        "runtime": {"litert_lm_api": _version("litert-lm-api"), "ai_edge_litert": _version("ai-edge-litert")},
        "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
                 "node": platform.node()},
        "runner_path": os.path.abspath(__file__),
        "pid": os.getpid(),
        "t": time.time(),
    }
    if not os.path.isfile(bundle):
        emit(start)
        emit({"event": "error", "message": f"bundle not found: {bundle}"})
        return EXIT_FAILED
    if args.sha256:  # verified by the caller (edgekit push checks it on the device): not hashed again
        start["bundle_sha256"], start["bundle_sha256_source"] = args.sha256.lower(), "given"
    else:
        start["bundle_sha256"], start["bundle_sha256_source"] = sha256_file(bundle), "hashed"
    t0 = time.perf_counter()
    try:
        backend, fallback = open_backend(args.backend, bundle, args.threads, args.max_tokens, args.token_times)
    except Exception as exc:
        emit(start)
        emit({"event": "error", "message": f"cannot load the bundle with backend {args.backend}: "
                                           f"{type(exc).__name__}: {exc}".splitlines()[0]})
        return EXIT_FAILED
    init_ms = (time.perf_counter() - t0) * 1000.0
    start["backend"] = backend.name
    if fallback:
        start["fallback_reason"] = fallback
    emit(start)
    emit({"event": "init", "init_ms": init_ms})
    try:
        for phase, count in (("warmup", args.warmup), ("measure", args.reps)):
            for i in range(count):
                run_init_ms = None
                if args.fresh_engine and (phase, i) != ("warmup" if args.warmup else "measure", 0):
                    # As `litert-lm benchmark` does: a new engine for every run, so each run
                    # measures the first generation after a load (see --fresh-engine).
                    backend.close()
                    t1 = time.perf_counter()
                    backend, _ = open_backend(start["backend"], bundle, args.threads, args.max_tokens, args.token_times)
                    run_init_ms = (time.perf_counter() - t1) * 1000.0
                r = backend.run_once(args.prefill, args.decode)
                rec = {
                    "event": "run",
                    "phase": phase,
                    "index": i,
                    "ttft_ms": r["ttft_ms"],
                    "prefill_ms": r["prefill_ms"],
                    "prefill_tokens": r["prefill_tokens"],
                    "prefill_tps": r["prefill_tokens"] / (r["prefill_ms"] / 1000.0) if r["prefill_ms"] > 0 else None,
                    "decode_ms": r["decode_ms"],
                    "decode_tokens": r["decode_tokens"],
                    "decode_tps": r["decode_tokens"] / (r["decode_ms"] / 1000.0) if r["decode_ms"] > 0 else None,
                    "token_ms": r["token_ms"],
                    "t_start": r["t_start"],
                    "t_end": r["t_end"],
                }
                if args.fresh_engine:
                    rec["init_ms"] = init_ms if run_init_ms is None else run_init_ms
                for key in ("prefill_wall_ms", "prefill_timing", "decode_wall_ms", "decode_timing", "ttft_wall_ms",
                            "engine_ttft_ms", "engine_prefill_tokens", "engine_prefill_tps", "engine_decode_tokens",
                            "engine_decode_tps", "chunk_ms", "token_timing"):
                    if key in r:
                        rec[key] = r[key]
                emit(rec)
    except Exception as exc:
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        return EXIT_FAILED
    finally:
        if close:
            try:
                backend.close()
            except Exception:
                pass
    emit({"event": "end", "status": "ok", "t": time.time()})
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgekit-runner", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--prefill", type=int, required=True, help="prompt tokens per run")
    p.add_argument("--decode", type=int, required=True, help="decoded tokens per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", choices=("auto", "litert_lm", "interpreter"), default="auto")
    p.add_argument("--max-tokens", type=int, default=None, help="KV cache size for the engine")
    p.add_argument("--out", default=None, help="JSONL file (default: stdout)")
    p.add_argument("--sha256", default=None,
                   help="the bundle's sha256 as already verified on this device (skips hashing it again)")
    p.add_argument("--fresh-engine", action="store_true",
                   help="load the bundle again before every run (what `litert-lm benchmark` does: each run is the "
                        "first generation after a load); default: one load, warmups then measured runs")
    p.add_argument("--token-times", action="store_true",
                   help="litert_lm: decode through the stream callback and record each token's latency (token_ms, "
                        "ttft_wall_ms). The callback runs Python on the engine's thread once per token: decode on the "
                        "tiny bundles measured 7-13%% slower than the plain decode call the runtime's benchmark times, "
                        "so speed figures are taken without it by default")
    p.add_argument("--mode", choices=("cold", "warm"), default=None,
                   help="recorded in the start record: how the caller schedules processes (cold: one run per process; "
                        "warm: warmups then iterations on one engine)")
    a = p.parse_args(argv)
    for name in ("prefill", "decode", "reps"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    if a.threads is not None and a.threads < 1:
        p.error("--threads must be >= 1")
    return a


def main(argv: list[str] | None = None, fast_exit: bool = False) -> int:
    """``fast_exit`` (the command line): after the last record is written and flushed, end
    the process with ``os._exit`` instead of closing the engine and finalizing Python.
    Tearing down a loaded engine (freeing weights, caches, threads) took ~0.5 s per run
    on the e2b w4 fp16 bundle: time spent by every benchmark process after its figures
    are final; the kernel frees the process's memory at exit either way."""
    args = parse_args(argv)  # exits 2 on bad arguments
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            rc = run(args, Emitter(f), close=not fast_exit)
            f.flush()
            os.fsync(f.fileno())
    else:
        rc = run(args, Emitter(sys.stdout), close=not fast_exit)
    if fast_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main(fast_exit=True))
