"""After a build: does the bundle load and generate tokens, and with which runtime?

Two independent checks:
- ai-edge-litert's interpreter through :class:`edgekit.runtime.signatures.BundleModel`
  (in-process): greedy tokens from a short prompt.
- LiteRT-LM's CPU engine (litert-lm-api ``Benchmark``) in a child process, so a
  native abort in the engine cannot take the builder down: prefill/decode counts
  and tokens/s as the engine reports them, or the error it gave.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

ENGINE_TIMEOUT_S = 600

_ENGINE_CHILD = r"""
import json, sys
path, prefill, decode, maxn, cache_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
out = {"ok": False}
try:
    import litert_lm
    info = litert_lm.Benchmark(model_path=path, backend=litert_lm.Backend.CPU(), prefill_tokens=prefill,
                               decode_tokens=decode, max_num_tokens=maxn, cache_dir=cache_dir).run()
    out = {"ok": info.last_decode_token_count > 0, "init_s": info.init_time_in_second,
           "ttft_s": info.time_to_first_token_in_second, "prefill_tokens": info.last_prefill_token_count,
           "prefill_tps": info.last_prefill_tokens_per_second, "decode_tokens": info.last_decode_token_count,
           "decode_tps": info.last_decode_tokens_per_second}
except Exception as exc:
    out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
sys.stdout.write("EDGEKIT_RESULT " + json.dumps(out) + "\n")
"""


_GENERATE_CHILD = r"""
import json, sys
path, prompt, n, cache_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = {"ok": False}
try:
    import litert_lm
    eng = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(), max_num_tokens=n + 64, cache_dir=cache_dir)
    ids = eng.tokenize(prompt)
    sess = eng.create_session(apply_prompt_template=False, max_output_tokens=n,
                              sampler_config=litert_lm.SamplerConfig(top_k=1, temperature=0.0))
    sess.run_prefill([prompt])
    resp = sess.run_decode()
    text = resp.texts[0] if resp.texts else ""
    out = {"ok": bool(text), "prompt_ids": list(ids), "text": text, "bos": eng.bos_token_id}
except Exception as exc:
    out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
sys.stdout.write("EDGEKIT_RESULT " + json.dumps(out) + "\n")
"""


def engine_generate(bundle: str | os.PathLike, prompt: str, new_tokens: int = 8,
                    timeout: float = ENGINE_TIMEOUT_S) -> dict[str, Any]:
    """Greedy text from LiteRT-LM's CPU engine (session API) in a child process (never raises)."""
    with tempfile.TemporaryDirectory(prefix="edgekit-engine-") as cache_dir:
        cmd = [sys.executable, "-c", _GENERATE_CHILD, os.fspath(bundle), prompt, str(new_tokens), cache_dir]
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    for line in cp.stdout.splitlines():
        if line.startswith("EDGEKIT_RESULT "):
            return json.loads(line[len("EDGEKIT_RESULT "):])
    tail = [ln for ln in cp.stderr.splitlines() if ln.strip()][-3:]
    return {"ok": False, "error": f"engine process exited with {cp.returncode}: {' | '.join(tail)[:500]}"}


def check_interpreter(bundle: str | os.PathLike, prompt_ids: Sequence[int], new_tokens: int = 8) -> dict[str, Any]:
    from edgekit.runtime.signatures import BundleModel

    t0 = time.monotonic()
    bm = BundleModel(bundle)
    load_s = time.monotonic() - t0
    t1 = time.monotonic()
    toks = bm.generate(list(prompt_ids), new_tokens)
    gen_s = time.monotonic() - t1
    return {
        "ok": len(toks) > 0,
        "runtime": "ai_edge_litert interpreter (edgekit.runtime.signatures)",
        "load_s": round(load_s, 4),
        "prompt_tokens": len(prompt_ids),
        "generated": toks,
        "generate_s": round(gen_s, 4),
        "cache_length": bm.cache_length,
        "prefill_lengths": bm.prefill_lengths,
        "softcap": bm.softcap,
    }


def check_engine(bundle: str | os.PathLike, prefill: int = 16, decode: int = 8, max_tokens: int | None = None,
                 timeout: float = ENGINE_TIMEOUT_S) -> dict[str, Any]:
    """LiteRT-LM CPU engine benchmark in a child process (never raises)."""
    maxn = max_tokens or (prefill + decode + 8)
    t0 = time.monotonic()
    # The engine writes an XNNPACK weight cache; keep it out of the bundle's folder.
    with tempfile.TemporaryDirectory(prefix="edgekit-engine-") as cache_dir:
        cmd = [sys.executable, "-c", _ENGINE_CHILD, os.fspath(bundle), str(prefill), str(decode), str(maxn), cache_dir]
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "runtime": "litert_lm CPU engine", "error": f"timed out after {timeout:.0f} s"}
    res: dict[str, Any] | None = None
    for line in cp.stdout.splitlines():
        if line.startswith("EDGEKIT_RESULT "):
            res = json.loads(line[len("EDGEKIT_RESULT "):])
    if res is None:
        tail = [ln for ln in cp.stderr.splitlines() if ln.strip()][-3:]
        res = {"ok": False, "error": f"engine process exited with {cp.returncode}: {' | '.join(tail)[:500]}"}
    res["runtime"] = "litert_lm CPU engine (litert-lm-api Benchmark)"
    res["seconds"] = round(time.monotonic() - t0, 3)
    return res
