"""The build's quality stage through LiteRT-LM's CPU engine, for bundles too big for the interpreter.

The interpreter route (``edgekit.quality.evaluate``) reads both bundles' sections into memory
and dequantizes fp16 weights to float32 (~28 GB for full-size E2B wNa8o8 + fp16). This route
scores the same windows of the same evaluation text, teacher-forced, with the engine
(``edgekit.runtime.scoring``): the candidate in one child process, then the baseline in another,
so at most one bundle is loaded at a time and the builder holds none.

Windows are those of the interpreter route (``edgekit.quality.windows``: ``[BOS] + 127`` tokens
of the shipped held-out text, tokenized by the baseline bundle's own Hugging Face tokenizer), but
only the first two (254 scored tokens, :data:`ENGINE_MAX_TOKENS`): the engine scores one decode
step per token. Each window's tokens are decoded to text, the engine re-tokenizes it
(``run_text_scoring`` takes text) and the record says in how many windows the engine's tokens
equal the window's (``windows_same_tokens``).

The engine gives only the log-likelihood of each scored token, so the record holds
``ppl_ratio``, ``ppl_candidate``, ``ppl_baseline``, ``nll_candidate``, ``nll_baseline``,
``logprob_delta_mean``, ``logprob_delta_max`` (names in ``edgekit.results.metrics``);
``top1_agreement`` and ``kl_mean`` need whole distributions and are absent (listed under
``absent`` with the reason), so a threshold on them is undecided, never passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from edgekit import quality as ql
from edgekit.errors import CheckpointError, EdgekitError, NotComparable, UsageError
from edgekit.results.manifest import read_beside
from edgekit.runtime import scoring as sc

METHOD = "engine_scoring"
SCHEMA = 1
# run_text_scoring scores at about the engine's decode rate (measured at full-size E2B, 254 tokens:
# wNa8o8 50 s, fp16 168 s, i.e. 5.1 and 1.5 tok/s), so the interpreter route's 2048 tokens would
# keep the fp16 child busy for ~23 min at that rate; two full windows keep the stage to minutes
# and above the 100 tokens a quality figure needs (edgekit.results.basis.MIN_QUALITY_TOKENS).
ENGINE_MAX_TOKENS = 2 * (ql.DEFAULT_SEQ_LEN - 1)
HELD = ("ppl_ratio", "ppl_candidate", "ppl_baseline", "nll_candidate", "nll_baseline",
        "logprob_delta_mean", "logprob_delta_max")
ABSENT = {
    "top1_agreement": "the engine's run_text_scoring returns the log-likelihood of the given tokens only, no logits",
    "kl_mean": "the engine's run_text_scoring returns the log-likelihood of the given tokens only, "
               "not the next-token distribution",
}


def _tokenizer(bundle: Path):
    from tokenizers import Tokenizer

    from edgekit.runtime.litertlm_file import read_hf_tokenizer_json

    text = read_hf_tokenizer_json(bundle)
    if text is None:
        raise CheckpointError(f"{bundle} carries no Hugging Face tokenizer", hint="build it with `edgekit build`")
    tok = Tokenizer.from_str(text)
    bos = tok.token_to_id("<bos>")
    if bos is None:
        raise CheckpointError(f"the tokenizer of {bundle} has no <bos> token")
    return tok, bos


def _cache_length(bundle: Path) -> int | None:
    """The KV cache length the bundle was built with (its manifest's build record), when known."""
    try:
        m = read_beside(bundle)[1]
    except EdgekitError:
        return None
    v = (m.build or {}).get("cache_length") if m is not None else None
    return v if isinstance(v, int) and v > 0 else None


def scores_dir() -> Path:
    """Where engine scores are kept: ``$EDGEKIT_CACHE/scores`` (default ``./.cache/edgekit``)."""
    from edgekit.builder.export import cache_root

    return cache_root() / "scores"


def _scores_key(bundle: Path, texts: list[str], max_num: int, threads: int | None) -> str:
    """What a bundle's scores depend on: its bytes (sha256), the scored texts, the engine's token
    budget and threads, and the runtime's version. An fp16 baseline is scored once for every
    candidate built against it (full E4B fp16: the longest part of the quality stage)."""
    from importlib import metadata

    from edgekit.devices.hashing import local_sha256

    try:
        runtime_version = metadata.version("litert-lm-api")
    except metadata.PackageNotFoundError:
        runtime_version = None
    ident = {"bundle_sha256": local_sha256(str(bundle)), "texts_sha256": hashlib.sha256(
        "\x00".join(texts).encode("utf-8")).hexdigest(), "max_num_tokens": max_num, "threads": threads,
        "runtime": sc.RUNTIME, "litert_lm_api": runtime_version, "schema": SCHEMA}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _cached_scores(key: str) -> dict[str, Any] | None:
    try:
        rec = json.loads((scores_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not {"ids", "scores", "seconds"} <= set(rec):
        return None
    return {**rec, "cached": True}


def _store_scores(key: str, run: dict[str, Any]) -> None:
    from edgekit.fsutil import atomic_write_json

    try:
        atomic_write_json(scores_dir() / f"{key}.json", {k: v for k, v in run.items() if k != "cached"})
    except (OSError, EdgekitError, TypeError, ValueError):
        pass  # a read-only cache only costs a rescoring next time


def _plan(base: Path, caps: list[int], text: str | os.PathLike | None, max_tokens: int | None, seq_len: int,
          say: Callable[[str], None]):
    """The scored windows: (evaluation text, windows, their texts, seq_len, the engine's token budget).

    Windows are tokenized by the baseline's tokenizer; ``caps`` are the cache lengths of the bundles
    (a window is no longer than the smallest)."""
    body = ql.load_eval_text(text)
    tok, bos = _tokenizer(base)
    if caps and seq_len > min(caps):
        say(f"quality: seq_len {seq_len} capped at the bundles' cache length {min(caps)}")
        seq_len = min(caps)
    wins = ql.windows(tok.encode(body, add_special_tokens=False).ids, bos, seq_len, max_tokens)
    if not wins:
        raise UsageError("the evaluation text gives no tokens to score", hint="pass a longer text")
    texts = [tok.decode(w[1:], skip_special_tokens=False) for w in wins]
    # [BOS] + the window's tokens, plus slack for a re-tokenization that comes out a little longer
    max_num = seq_len + 8 if not caps else min(seq_len + 8, min(caps))
    return body, wins, texts, seq_len, max_num


def _score(role: str, path: Path, texts: list[str], max_num: int, threads: int | None, timeout: float,
           say: Callable[[str], None]) -> dict[str, Any]:
    """One bundle's scores: from the score cache when this bundle was scored on these texts before,
    else by an engine child (and kept)."""
    key = _scores_key(path, texts, max_num, threads)
    got = _cached_scores(key)
    if got is not None:
        say(f"quality: {role} scores reused ({path.name}: same bundle, text, runtime; "
            f"scored in {got['seconds']:.1f} s before)")
        return got
    say(f"quality: engine scoring {len(texts)} windows with the {role} ({path.name})")
    try:
        run = sc.score_texts(path, texts, threads=threads, max_num_tokens=max_num, timeout=timeout)
    except sc.ScoringError as exc:
        raise CheckpointError(str(exc), hint="check that the bundle loads: `edgekit inspect` and the "
                              "build's engine verify") from exc
    _store_scores(key, run)
    say(f"quality: {role} scored in {run['seconds']:.1f} s")
    return run


def _baseline_plan(baseline: Path):
    """The windows a candidate of the baseline's cache length is scored on by default."""
    return _plan(baseline, [c for c in (_cache_length(baseline),) if c], None, ENGINE_MAX_TOKENS,
                 ql.DEFAULT_SEQ_LEN, lambda s: None)


def score_baseline(baseline: str | os.PathLike, threads: int | None = None, timeout: float = sc.SCORING_TIMEOUT_S,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score an fp16 baseline on the default windows into the score cache, once, when it is built.

    The quality stage of every candidate of the same cache length built against it then runs only
    the candidate's child: at full E4B the fp16 child maps an 18.6 GB float32 weight cache and takes
    6.5 min alone, and inside a candidate's build it did not finish in 25 min. Returns what the
    build record keeps (windows, tokens, the child's seconds and peak RSS, whether it was cached)."""
    base = ql.resolve_bundle(baseline)
    _, wins, texts, _, max_num = _baseline_plan(base)
    run = _score("baseline", base, texts, max_num, threads, timeout, progress or (lambda s: None))
    rec = {"method": METHOD, "windows": len(wins), "tokens": sum(len(s) for s in run["scores"]),
           "cache": str(scores_dir())}
    rec.update({k: run.get(k) for k in ("seconds", "init_s", "score_s", "peak_rss_bytes")})
    rec["cached"] = bool(run.get("cached"))
    return rec


def baseline_scored(baseline: str | os.PathLike) -> bool:
    """Whether the baseline's default-window scores are in the score cache (the quality stage of a
    candidate of its cache length then scores the candidate only); False when that cannot be told."""
    try:
        base = ql.resolve_bundle(baseline)
        _, _, texts, _, max_num = _baseline_plan(base)
        return _cached_scores(_scores_key(base, texts, max_num, None)) is not None
    except (EdgekitError, OSError, ValueError):
        return False


def evaluate_engine(
    candidate: str | os.PathLike,
    baseline: str | os.PathLike,
    text: str | os.PathLike | None = None,
    max_tokens: int | None = ENGINE_MAX_TOKENS,
    seq_len: int = ql.DEFAULT_SEQ_LEN,
    threads: int | None = None,
    timeout: float = sc.SCORING_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Candidate vs baseline by engine scoring; returns the manifest's ``quality`` record.

    ``text``/``max_tokens``/``seq_len`` as in :func:`edgekit.quality.evaluate` (but at most
    :data:`ENGINE_MAX_TOKENS` scored tokens by default); ``threads``: the
    engine's CPU threads (default: the engine's); ``timeout``: per child, in seconds.
    """
    say = progress or (lambda s: None)
    cand, base = ql.resolve_bundle(candidate), ql.resolve_bundle(baseline)
    t0 = time.time()
    caps = [c for c in (_cache_length(cand), _cache_length(base)) if c]
    body, wins, texts, seq_len, max_num = _plan(base, caps, text, max_tokens, seq_len, say)
    runs = {role: _score(role, path, texts, max_num, threads, timeout, say)
            for role, path in (("candidate", cand), ("baseline", base))}
    c, b = runs["candidate"], runs["baseline"]
    if c["ids"] != b["ids"]:
        raise NotComparable("the candidate's and the baseline's engines tokenize the evaluation text differently",
                            hint="compare two builds of the same model")
    try:
        figures = sc.compare_scores(c["scores"], b["scores"])
    except sc.ScoringError as exc:
        raise NotComparable(str(exc)) from exc
    same = sum(1 for w, ids in zip(wins, c["ids"]) if ids == list(w[1:]))
    result: dict[str, Any] = {"schema": SCHEMA, "method": METHOD, "metrics": list(HELD),
                              "absent": dict(ABSENT)}
    result.update(figures)
    result.update({
        "eval_text_sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
        "eval_text": str(text) if isinstance(text, os.PathLike) else ("edgekit/data/eval.txt" if text is None
                                                                       else "<given>"),
        "windows": len(wins),
        "windows_same_tokens": same,
        "seq_len": seq_len,
        "tokenizer": f"{base} (tokenizer section)",
        "runtime": sc.RUNTIME,
        "children": {role: {k: r.get(k) for k in ("seconds", "init_s", "score_s", "peak_rss_bytes", "cached")}
                     for role, r in runs.items()},
        "seconds": round(time.time() - t0, 3),
    })
    return result
