"""Teacher-forced token scoring through LiteRT-LM's CPU engine, one bundle per child process.

``litert_lm.Session.run_text_scoring([target])`` returns, for the one target text it takes
(the engine refuses more than one per call: "Target text size should be 1"), the log-likelihood
of each of the target's tokens given the session's state, the target tokenized by the engine's
own tokenizer without special tokens. Measured on the tiny bundles (litert-lm-api 0.18.1):

- ``run_prefill`` adds no BOS: prefilling ``"<bos>"`` (the engine's tokenizer maps it to the
  BOS id) gives exactly ``[BOS]`` as context, and the first target token is then scored given
  BOS alone, agreeing with the interpreter's log-softmax to 0.004 nats. Without a prefill (or
  with ``""``) the first token is scored against stale logits (off by 1.5-4.7 nats) and the rest
  without BOS, so every window here is prefilled with ``"<bos>"``;
- the scores are the plain log-softmax of the logits (temperature 1), whatever the session's
  sampler says;
- only per-token log-likelihoods of the given tokens come back: no logits, so no argmax and
  no distribution (top-1 agreement and KL cannot be derived from this API).

:func:`score_texts` runs one bundle in a child process (a native abort in the engine cannot
take the caller down, and the caller's memory holds no bundle), and returns the per-token
scores, the engine's token ids, and the child's wall time and peak RSS (its own ``VmHWM``).
:func:`compare_scores` derives the figures of one candidate against one baseline.

Only the standard library, numpy and litert_lm are used (``edgekit/runtime`` rule).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekit.runtime.procinfo import peak_rss_bytes

BOS_TEXT = "<bos>"
SCORING_TIMEOUT_S = 3600.0
RUNTIME = "litert_lm CPU engine (Session.run_text_scoring, one child process per bundle)"


class ScoringError(RuntimeError):
    """The engine could not score the texts (load failure, native abort, timeout)."""


def _child(spec_path: str, out_path: str) -> None:
    """Inside the child: load the engine once, one fresh session per text, write a JSON result."""
    spec = json.loads(Path(spec_path).read_text())
    out: dict[str, Any] = {"ok": False}
    where = "loading the engine"
    t_start = time.monotonic()
    try:
        import litert_lm

        threads = spec.get("threads")
        backend = litert_lm.Backend.CPU(thread_count=threads) if threads else litert_lm.Backend.CPU()
        t0 = time.monotonic()
        eng = litert_lm.Engine(spec["bundle"], backend=backend, max_num_tokens=spec.get("max_num_tokens"),
                               cache_dir=spec["cache_dir"])
        init_s = time.monotonic() - t0
        bos = eng.bos_token_id
        if bos is None or eng.tokenize(BOS_TEXT) != [bos]:
            raise ScoringError(f"the engine's tokenizer does not map {BOS_TEXT!r} to its BOS id {bos} "
                               f"(got {eng.tokenize(BOS_TEXT)}): cannot give the scored text a BOS context")
        texts, scores, ids = spec["texts"], [], []
        t1 = time.monotonic()
        for i, text in enumerate(texts):
            where = f"text {i + 1} of {len(texts)}"
            sess = eng.create_session(apply_prompt_template=False)
            try:
                sess.run_prefill([BOS_TEXT])
                resp = sess.run_text_scoring([text], store_token_lengths=True)
            finally:
                sess.close()
            if len(resp.token_scores) != 1:
                raise ScoringError(f"run_text_scoring returned {len(resp.token_scores)} score lists for one text")
            scores.append([float(x) for x in resp.token_scores[0]])
            ids.append([int(x) for x in eng.tokenize(text)])
        out = {"ok": True, "bos": bos, "scores": scores, "ids": ids, "init_s": round(init_s, 3),
               "score_s": round(time.monotonic() - t1, 3)}
    except Exception as exc:  # reported to the parent, which raises ScoringError
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:700]
               + f" ({where}, after {time.monotonic() - t_start:.0f} s)"}
    out["peak_rss_bytes"] = peak_rss_bytes()
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, out_path)


def score_texts(bundle: str | os.PathLike, texts: Sequence[str], threads: int | None = None,
                max_num_tokens: int | None = None, timeout: float = SCORING_TIMEOUT_S) -> dict[str, Any]:
    """Score each text teacher-forced after ``[BOS]`` with the engine, in a child process.

    Returns ``scores`` (per text, the log-likelihood of each of its tokens), ``ids`` (the
    engine's tokens of each text), ``bos``, ``init_s`` (engine load), ``score_s``, ``seconds``
    (the child's wall time) and ``peak_rss_bytes`` (the child's VmHWM). Raises
    :class:`ScoringError` when the child fails, aborts or times out.
    """
    root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="edgekit-scoring-") as tmp:
        spec = {"bundle": os.fspath(bundle), "texts": list(texts), "threads": threads,
                "max_num_tokens": max_num_tokens, "cache_dir": tmp}
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        Path(spec_path).write_text(json.dumps(spec))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from edgekit.runtime.scoring import _child; _child(sys.argv[2], sys.argv[3])")
        t0 = time.monotonic()
        try:
            cp = subprocess.run([sys.executable, "-c", code, root, spec_path, out_path],
                                capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ScoringError(f"engine scoring of {bundle} timed out after {timeout:.0f} s") from None
        seconds = time.monotonic() - t0
        if not os.path.isfile(out_path):
            tail = [ln for ln in cp.stderr.splitlines() if ln.strip()][-3:]
            raise ScoringError(f"engine scoring process for {bundle} exited with {cp.returncode}: "
                               f"{' | '.join(tail)[:500]}")
        res = json.loads(Path(out_path).read_text())
    if not res.get("ok"):
        # the engine's own error line (glog E/F), else its last words: the Python error is generic
        # ("litert_lm_session_run_text_scoring failed" for a text too long and for an engine fault alike)
        lines = [ln for ln in cp.stderr.splitlines() if ln.strip() and not ln.startswith("INFO:")]
        tail = [ln.split("] ", 1)[-1] for ln in lines if re.match(r"[EF]\d{4} ", ln)][-1:] or lines[-2:]
        raise ScoringError(f"engine scoring of {bundle} failed: {res.get('error')}"
                           + (f"; engine: {' | '.join(tail)[:400]}" if tail else ""))
    res["seconds"] = round(seconds, 3)
    return res


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def compare_scores(candidate: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Figures of a candidate against its baseline from per-token log-likelihoods of the same tokens.

    ``nll_*``: mean negative log-likelihood per token (nats); ``ppl_*`` = exp(nll);
    ``ppl_ratio`` = ppl_candidate / ppl_baseline; ``logprob_delta_mean`` / ``logprob_delta_max``:
    mean and largest |log p_candidate - log p_baseline| over tokens (nats); ``tokens``.
    """
    if len(candidate) != len(baseline):
        raise ScoringError(f"candidate scored {len(candidate)} texts, baseline {len(baseline)}")
    for k, (c, b) in enumerate(zip(candidate, baseline)):
        if len(c) != len(b):
            raise ScoringError(f"text {k}: candidate scored {len(c)} tokens, baseline {len(b)}")
    c = np.asarray([x for row in candidate for x in row], dtype=np.float64)
    b = np.asarray([x for row in baseline for x in row], dtype=np.float64)
    if c.size == 0:
        raise ScoringError("no tokens were scored")
    d = np.abs(c - b)
    nll_c, nll_b = float(-c.mean()), float(-b.mean())
    ppl_c, ppl_b = _exp(nll_c), _exp(nll_b)
    finite = bool(np.all(np.isfinite(c)) and np.all(np.isfinite(b)))
    return {
        "ppl_ratio": _exp(nll_c - nll_b) if finite else math.inf,
        "ppl_candidate": ppl_c,
        "ppl_baseline": ppl_b,
        "nll_candidate": nll_c,
        "nll_baseline": nll_b,
        "logprob_delta_mean": float(d.mean()) if finite else math.inf,
        "logprob_delta_max": float(d.max()) if finite else math.inf,
        "tokens": int(c.size),
        "nonfinite_scores": int(np.count_nonzero(~np.isfinite(c)) + np.count_nonzero(~np.isfinite(b))),
    }
