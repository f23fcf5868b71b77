"""Quality of a quantized bundle against its FP16 baseline, measured through the runtime.

Both bundles are run by the LiteRT runtime itself (``edgekit.runtime.signatures.BundleModel``,
ai-edge-litert's interpreter on the bundle's own model sections) over the same evaluation
text, teacher-forced: every window is ``[BOS] + tokens`` and ``score`` gives the next-token
logits (after the final softcap) at every position. From those logits, in float64:

- ``ppl_candidate`` / ``ppl_baseline``: exp(mean next-token negative log-likelihood);
- ``ppl_ratio`` = ppl_candidate / ppl_baseline (1.0 = no loss; higher is worse);
- ``top1_agreement``: share of positions where both bundles' argmax tokens agree;
- ``kl_mean``: mean over positions of KL(baseline || candidate) in nats.

The evaluation text defaults to ``edgekit/data/eval.txt`` (a slice of the tiny model's
HELD-OUT split: text the trained tiny model never saw). Its sha256 is recorded so two
results are only compared on the same text. The text is tokenized with the tokenizer the
bundle carries (or one given explicitly).

The figures are registered in ``edgekit.results.metrics`` (unit, direction); thresholds on
them (``ppl_ratio<=1.10``, ``top1_agreement>=0.90``) are the gate's language
(``edgekit.results.gate``), so ``edgekit eval`` and the bench gate agree on their meaning.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgekit.errors import CheckpointError, NotComparable, UsageError

EVAL_TEXT = Path(__file__).resolve().parent / "data" / "eval.txt"
DEFAULT_MAX_TOKENS = 2048
DEFAULT_SEQ_LEN = 128
SCHEMA = 1


# --------------------------------------------------------------------------- text


def load_eval_text(text: str | os.PathLike | None = None) -> str:
    """The evaluation text: ``None`` -> the shipped text; a ``Path`` -> that file; a ``str`` -> itself."""
    if text is None:
        text = EVAL_TEXT
    if isinstance(text, os.PathLike):
        p = Path(text)
        if not p.is_file():
            raise UsageError(f"evaluation text not found: {p}", hint="pass an existing UTF-8 text file with --text")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"evaluation text {p} is not UTF-8 ({exc.reason})") from exc
    if not text.strip():
        raise UsageError("the evaluation text is empty", hint="pass a text file with some prose in it")
    return text


# --------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class TextTokenizer:
    """Just what evaluation needs: ``encode(text) -> ids`` (no special tokens) and the BOS id."""

    encode: Callable[[str], list[int]]
    bos_id: int
    source: str


def _hf_tokenizer(json_text: str, source: str) -> TextTokenizer:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json_text)
    bos = tok.token_to_id("<bos>")
    if bos is None:
        raise CheckpointError(f"tokenizer from {source} has no <bos> token")
    return TextTokenizer(lambda s: tok.encode(s, add_special_tokens=False).ids, bos, source)


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """A Hugging Face ``tokenizer.json`` (or a folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UsageError(f"tokenizer not found: {p}", hint="pass a tokenizer.json or a checkpoint folder holding one")
    return _hf_tokenizer(p.read_text(encoding="utf-8"), str(p))


PROMPT_WORD_CANDIDATES = (" the", " a", "a", "x", "0", ".")


def one_token_word(bundle: str | os.PathLike, candidates: Sequence[str] = PROMPT_WORD_CANDIDATES) -> str:
    """The first of ``candidates`` that the bundle's own tokenizer makes one token, repeated or not
    (16 copies give 16 tokens): a prompt word that gives exactly the prompt length asked for."""
    from edgekit.runtime.litertlm_file import read_hf_tokenizer_json

    text = read_hf_tokenizer_json(Path(bundle))
    if text is None:
        raise CheckpointError(f"{bundle} carries no Hugging Face tokenizer", hint="build it with `edgekit build`")
    tok = _hf_tokenizer(text, f"{bundle} (tokenizer section)")
    for w in candidates:
        if len(tok.encode(w * 16)) == 16:
            return w
    raise CheckpointError(f"no one-token prompt word in {bundle}'s tokenizer (tried {list(candidates)!r})",
                          hint="pass a bundle built with a Gemma tokenizer")


def windows(ids: Sequence[int], bos_id: int, seq_len: int, max_tokens: int | None) -> list[list[int]]:
    """Non-overlapping windows ``[BOS] + ids[i : i + seq_len - 1]``; the last one may be shorter.

    Each window of n+1 ids predicts n tokens; windows are cut so that at most
    ``max_tokens`` tokens are predicted in all. Windows shorter than 2 tokens are dropped.
    """
    if seq_len < 2:
        raise UsageError(f"seq_len must be at least 2 (got {seq_len})")
    n = seq_len - 1
    ids = list(ids[: max_tokens]) if max_tokens else list(ids)
    out = [[bos_id] + ids[i : i + n] for i in range(0, len(ids), n)]
    return [w for w in out if len(w) >= 2]


# --------------------------------------------------------------------------- metrics


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (max-subtracted logsumexp)."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


@dataclass
class _Acc:
    """Running float64 sums over scored positions."""

    n: int = 0
    nll_c: float = 0.0
    nll_b: float = 0.0
    agree: int = 0
    hit_c: int = 0
    hit_b: int = 0
    kl: float = 0.0
    kl_max: float = 0.0
    nonfinite: int = 0

    def add(self, logits_c: np.ndarray, logits_b: np.ndarray, targets: np.ndarray) -> None:
        if logits_c.shape != logits_b.shape:
            raise NotComparable(f"candidate logits {logits_c.shape} and baseline logits {logits_b.shape} differ in shape",
                                hint="compare builds of the same model and vocabulary")
        self.nonfinite += int(np.count_nonzero(~np.isfinite(logits_c)))
        lc, lb = log_softmax64(logits_c), log_softmax64(logits_b)
        rows = np.arange(len(targets))
        self.nll_c += float(-lc[rows, targets].sum())
        self.nll_b += float(-lb[rows, targets].sum())
        ac, ab = np.argmax(logits_c, axis=-1), np.argmax(logits_b, axis=-1)
        self.agree += int(np.sum(ac == ab))
        self.hit_c += int(np.sum(ac == targets))
        self.hit_b += int(np.sum(ab == targets))
        pb = np.exp(lb)
        # 0 * log 0 terms: where pb underflows to 0 the term is 0 (np.where keeps inf*0 out).
        kl_rows = np.sum(np.where(pb > 0, pb * (lb - lc), 0.0), axis=-1)
        self.kl += float(kl_rows.sum())
        self.kl_max = max(self.kl_max, float(kl_rows.max()))
        self.n += len(targets)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _open(bundle: Any, num_threads: int | None):
    """A BundleModel for a path (or the object itself when it already is one)."""
    if hasattr(bundle, "score"):
        return bundle, None
    path = resolve_bundle(bundle)
    from edgekit.runtime.litertlm_file import NotALiteRTLMFile
    from edgekit.runtime.signatures import BundleError, BundleModel

    try:
        return BundleModel(str(path), num_threads=num_threads), path
    except NotALiteRTLMFile as exc:
        raise UsageError(f"{path} is not a .litertlm bundle ({exc})",
                         hint="pass the .litertlm file written by `edgekit build`") from exc
    except BundleError as exc:
        raise CheckpointError(f"cannot score {path}: {exc}",
                              hint="build the bundle with `edgekit build` (CPU layout, externalized embedder)") from exc


def resolve_bundle(path: str | os.PathLike) -> Path:
    """A ``.litertlm`` file, or a build folder holding exactly one."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.litertlm"))
        if len(found) != 1:
            raise UsageError(f"{p} holds {len(found)} .litertlm bundles, expected one",
                             hint="pass the bundle file itself")
        p = found[0]
    if not p.is_file():
        raise UsageError(f"bundle not found: {p}", hint="pass the path of a .litertlm built by `edgekit build`")
    return p


def evaluate(
    candidate: Any,
    baseline: Any,
    text: str | os.PathLike | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    seq_len: int = DEFAULT_SEQ_LEN,
    tokenizer: str | os.PathLike | TextTokenizer | None = None,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the evaluation text through both bundles and compare them.

    ``candidate`` / ``baseline``: bundle paths (or open ``BundleModel`` objects).
    ``text``: ``None`` (the shipped held-out text), a ``Path`` to a text file, or the text.
    ``max_tokens``: at most this many predicted tokens (``None``: the whole text).
    ``seq_len``: window length including the BOS token (each window predicts seq_len-1 tokens).
    ``tokenizer``: a ``tokenizer.json`` path / ``TextTokenizer``; default: the baseline bundle's.

    Returns a flat dict (manifest["quality"]): ``ppl_ratio``, ``top1_agreement``,
    ``kl_mean``, ``ppl_candidate``, ``ppl_baseline``, ``tokens``, ``eval_text_sha256``, and
    some detail (``kl_max``, top-1 accuracy of each, ``windows``, ``seq_len``, ``seconds``).
    """
    say = progress or (lambda s: None)
    body = load_eval_text(text)
    t0 = time.time()
    cand, cand_path = _open(candidate, num_threads)
    base, base_path = _open(baseline, num_threads)
    if isinstance(tokenizer, TextTokenizer):
        tok = tokenizer
    elif tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif callable(getattr(base, "tokenizer_json", None)) and base.tokenizer_json() is not None:
        tok = _hf_tokenizer(base.tokenizer_json(), f"{getattr(base, 'path', 'baseline')} (tokenizer section)")
    else:
        raise CheckpointError("the baseline bundle carries no Hugging Face tokenizer",
                              hint="pass tokenizer= / --tokenizer tokenizer.json")
    vc, vb = getattr(cand, "vocab_size", None), getattr(base, "vocab_size", None)
    if vc is not None and vb is not None and vc != vb:
        raise NotComparable(f"candidate vocabulary {vc} != baseline vocabulary {vb}",
                            hint="compare two builds of the same model")
    caps = [c for c in (getattr(cand, "cache_length", None), getattr(base, "cache_length", None)) if c]
    if caps and seq_len > min(caps):
        say(f"quality: seq_len {seq_len} capped at the bundles' cache length {min(caps)}")
        seq_len = min(caps)
    ids = tok.encode(body)
    wins = windows(ids, tok.bos_id, seq_len, max_tokens)
    if not wins:
        raise UsageError("the evaluation text gives no tokens to score", hint="pass a longer text")

    acc = _Acc()
    for k, w in enumerate(wins):
        lc = _score(cand, w, "candidate")
        lb = _score(base, w, "baseline")
        acc.add(lc, lb, np.asarray(w[1:], dtype=np.int64))
        if (k + 1) % 4 == 0 or k + 1 == len(wins):
            say(f"quality: {k + 1}/{len(wins)} windows, {acc.n} tokens")
    ppl_c, ppl_b = _exp(acc.nll_c / acc.n), _exp(acc.nll_b / acc.n)
    result = {
        "schema": SCHEMA,
        "ppl_ratio": ppl_c / ppl_b if math.isfinite(ppl_c) else math.inf,
        "top1_agreement": acc.agree / acc.n,
        "kl_mean": acc.kl / acc.n if acc.nonfinite == 0 else math.inf,
        "ppl_candidate": ppl_c,
        "ppl_baseline": ppl_b,
        "tokens": acc.n,
        "eval_text_sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
        "kl_max": acc.kl_max,
        "top1_accuracy_candidate": acc.hit_c / acc.n,
        "top1_accuracy_baseline": acc.hit_b / acc.n,
        "nonfinite_logits": acc.nonfinite,
        "windows": len(wins),
        "seq_len": seq_len,
        "tokenizer": tok.source,
        "eval_text": str(text) if isinstance(text, os.PathLike) else ("edgekit/data/eval.txt" if text is None else "<given>"),
        "runtime": "ai_edge_litert interpreter (edgekit.runtime.signatures.BundleModel.score)",
        "seconds": round(time.time() - t0, 3),
    }
    return result


def _score(model: Any, ids: list[int], which: str) -> np.ndarray:
    logits = np.asarray(model.score(ids))
    if logits.ndim != 2 or logits.shape[0] != len(ids) - 1:
        raise NotComparable(f"{which} bundle returned logits of shape {logits.shape} for {len(ids)} ids "
                            f"(expected ({len(ids) - 1}, vocab))")
    return logits


# --------------------------------------------------------------------------- gated evaluation


def run_eval(
    bundle: str | os.PathLike,
    baseline: str | os.PathLike,
    fail_on: Sequence[str] = (),
    text: str | os.PathLike | None = None,
    **kwargs: Any,
):
    """``edgekit eval``: evaluate ``bundle`` against ``baseline`` and gate the result.

    The thresholds (``fail_on``, absolute bounds on :data:`edgekit.results.metrics.EVAL_METRICS`)
    are parsed before any work, so bad syntax fails at once. ``kwargs`` go to :func:`evaluate`.
    Returns ``(result, gate)``: :func:`evaluate`'s dict plus ``candidate``, ``baseline`` (paths)
    and ``gate`` {thresholds, violations, passed}; ``gate`` is an
    :class:`edgekit.results.gate.GateResult` (exit code 0 or 1).
    """
    from edgekit.results.gate import FAIL, check_record, parse_thresholds
    from edgekit.results.metrics import EVAL_METRICS

    thresholds = parse_thresholds(fail_on, "command line", EVAL_METRICS)
    cand_path, base_path = resolve_bundle(bundle), resolve_bundle(baseline)
    if isinstance(text, os.PathLike) and not Path(text).is_file():
        raise UsageError(f"evaluation text not found: {text}", hint="pass an existing UTF-8 text file")
    result = evaluate(cand_path, base_path, text=text, **kwargs)
    result["candidate"], result["baseline"] = str(cand_path), str(base_path)
    gate = check_record(result, thresholds)
    result["gate"] = {
        "thresholds": [str(t) for t in thresholds],
        "violations": [f"{c.threshold.metric}={fmt_figure(result.get(c.threshold.metric))} (needs {c.threshold})"
                       for c in gate.checks if c.status == FAIL],
        "passed": gate.passed,
    }
    return result, gate


def fmt_figure(v: Any) -> str:
    """One evaluation figure for people: floats to 4 decimals, infinity as ``inf``."""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return str(v)
