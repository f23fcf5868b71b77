"""Agreement of a bundle with transformers' forward of the same QAT checkpoint.

The reference is transformers 5.17 itself: ``from_pretrained`` of the ``quant_method:
gemma`` checkpoint with its Gemma quantizer (packed integers x scales, SRQ rounding of
every linear's input and output), teacher-forced over the evaluation text, logits after
the model's final softcap. The bundle is run by the LiteRT runtime
(:class:`edgekit.runtime.signatures.BundleModel`). Windows, tokenizer, top-1 agreement
and mean KL(reference || bundle) come from :func:`edgekit.quality.evaluate` (the
reference plays the baseline); this module adds the maximum absolute logit difference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


class TransformersReference:
    """``score(ids)`` like BundleModel's, from transformers' forward of a checkpoint."""

    def __init__(self, checkpoint: str | os.PathLike, cache_length: int | None = None, num_threads: int | None = 1):
        import torch
        import transformers

        if num_threads:
            torch.set_num_threads(num_threads)
        self.path = Path(checkpoint)
        self.model = transformers.Gemma4ForConditionalGeneration.from_pretrained(
            str(self.path), dtype=torch.float32
        ).eval()
        text = self.model.config.get_text_config()
        self.vocab_size = int(text.vocab_size)
        self.cache_length = cache_length
        tj = self.path / "tokenizer.json"
        self._tok = tj.read_text(encoding="utf-8") if tj.is_file() else None
        self.max_abs_diff = 0.0
        self.last_candidate: np.ndarray | None = None

    def tokenizer_json(self) -> str | None:
        return self._tok

    def score(self, ids) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long))
        logits = out.logits[0, :-1].float().numpy()
        if self.last_candidate is not None and self.last_candidate.shape == logits.shape:
            self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(self.last_candidate - logits))))
        self.last_candidate = None
        return logits


class _Recording:
    """Wraps the candidate so the reference can diff the same window's logits."""

    def __init__(self, inner, ref: TransformersReference):
        self.inner, self.ref = inner, ref
        self.vocab_size = getattr(inner, "vocab_size", None)
        self.cache_length = getattr(inner, "cache_length", None)
        self.path = getattr(inner, "path", None)

    def tokenizer_json(self):
        return self.inner.tokenizer_json()

    def score(self, ids):
        out = self.inner.score(ids)
        self.ref.last_candidate = np.asarray(out, np.float32)
        return out


def agreement(bundle: str | os.PathLike, checkpoint: str | os.PathLike, *, text=None, max_tokens: int | None = 512,
              seq_len: int = 128, num_threads: int | None = None, progress: Callable[[str], None] | None = None
              ) -> dict[str, Any]:
    """top-1 agreement, mean KL(reference || bundle) and max |logit diff| of ``bundle``
    against transformers' forward of the QAT ``checkpoint``, on the evaluation text."""
    from edgekit import quality as ql
    from edgekit.runtime.signatures import BundleModel

    text = default_eval_text() if text is None else text
    cand = BundleModel(str(bundle), num_threads=num_threads)
    ref = TransformersReference(checkpoint, cache_length=cand.cache_length)
    res = ql.evaluate(_Recording(cand, ref), ref, text=text, max_tokens=max_tokens, seq_len=seq_len,
                      progress=progress)
    return {
        "reference": "transformers %s forward of the QAT checkpoint (GemmaQuantizer: integers x scales, SRQ)"
                     % _version("transformers"),
        "checkpoint": str(checkpoint),
        "top1_agreement": res["top1_agreement"],
        "kl_mean": res["kl_mean"],
        "kl_max": res["kl_max"],
        "max_abs_logit_diff": ref.max_abs_diff,
        "ppl_bundle": res["ppl_candidate"],
        "ppl_reference": res["ppl_baseline"],
        "tokens": res["tokens"],
        "windows": res["windows"],
        "seq_len": res["seq_len"],
        "eval_text": res["eval_text"],
        "eval_text_sha256": res["eval_text_sha256"],
        "seconds": res["seconds"],
    }


def default_eval_text():
    """The shipped evaluation text, else a held-out corpus slice."""
    from edgekit import quality as ql

    if Path(ql.EVAL_TEXT).is_file():
        return None  # quality.evaluate's own default
    held = Path.cwd() / ".cache" / "corpus" / "heldout.txt"
    if held.is_file():
        return held.read_text(encoding="utf-8")[:20000]
    return None


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"
