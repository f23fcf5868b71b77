"""Drive a bundle's ``prefill_<N>`` / ``decode`` signatures with ai-edge-litert's interpreter.

This is edgekit's runtime-independent path to logits: it needs only numpy,
ai_edge_litert and the flatbuffers package, reads the TFLite sections straight
out of the ``.litertlm`` file, and carries the KV cache from step to step the
way LiteRT-LM's CPU executor does (the CPU layout exported without split
cache: ``embeddings``, ``per_layer_embeddings``, ``input_pos``, ``mask``,
``kv_cache_k_i``/``kv_cache_v_i`` in, updated caches (+ ``logits`` for decode) out).

It runs float, dynamic-range and static-int8 (wNa8o8) bundles alike: the
interpreter's CPU kernels execute int8 x int{2,4,8} fully-connected ops.

Logits are returned after the model's final soft-capping (``c * tanh(x / c)``):
the exporter drops that op, so the cap is read from the bundle's system metadata
key ``edgekit.final_logit_softcapping`` (written by ``edgekit build``), or given
explicitly.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Sequence

import numpy as np

from edgekit.runtime.litertlm_file import LiteRTLMHeader, Section, read_header, read_hf_tokenizer_json, read_section

SOFTCAP_KEY = "edgekit.final_logit_softcapping"
MASK_VALUE = -1.0e4
"""Finite "masked" value added to attention scores (the exporter's own default).

A finite value keeps min/max calibration statistics finite; -1e4 is far below
any attention score, so the float model is unchanged by it."""

_PREFILL_RE = re.compile(r"^prefill_(\d+)$")

FeedRecorder = Callable[[str, dict[str, np.ndarray]], None]


class BundleError(RuntimeError):
    """The bundle lacks a section or signature this runtime needs."""


def _interpreter_cls():
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def _load(content: bytes, num_threads: int | None):
    Interpreter = _interpreter_cls()
    kwargs = {}
    if num_threads:
        kwargs["num_threads"] = int(num_threads)
    return Interpreter(model_content=content, **kwargs)


def softcap(logits: np.ndarray, cap: float | None) -> np.ndarray:
    if not cap:
        return logits
    return (cap * np.tanh(logits / cap)).astype(np.float32)


class BundleModel:
    """A loaded bundle; one sequence of state (KV cache + position) at a time.

    ``prefill(ids)`` appends tokens and returns the logits after the last one;
    ``decode(id)`` appends one token and returns its next-token logits;
    ``score(ids)`` resets and returns the next-token logits for every position
    (shape ``[len(ids) - 1, vocab]``: row i predicts ``ids[i + 1]``).
    """

    def __init__(
        self,
        bundle_path: str | os.PathLike,
        num_threads: int | None = None,
        *,
        softcap_value: float | None = None,
        mask_value: float = MASK_VALUE,
        recorder: FeedRecorder | None = None,
    ):
        self.path = os.fspath(bundle_path)
        self.header: LiteRTLMHeader = read_header(self.path)
        self.mask_value = float(mask_value)
        self.recorder = recorder
        by_name: dict[str, Section] = {s.name: s for s in self.header.sections}
        if "tf_lite_prefill_decode" not in by_name:
            raise BundleError(f"{self.path}: no tf_lite_prefill_decode section")
        self._main = _load(read_section(self.path, by_name["tf_lite_prefill_decode"]), num_threads)
        self._emb = None
        self._ple = None
        if "tf_lite_embedder" in by_name:
            self._emb = _load(read_section(self.path, by_name["tf_lite_embedder"]), num_threads)
        if "tf_lite_per_layer_embedder" in by_name:
            self._ple = _load(read_section(self.path, by_name["tf_lite_per_layer_embedder"]), num_threads)
        if self._emb is None:
            raise BundleError(f"{self.path}: no tf_lite_embedder section (only externalized embedders are supported)")

        sigs = self._main.get_signature_list()
        if "decode" not in sigs:
            raise BundleError(f"{self.path}: no decode signature (split-cache/NPU layout?)")
        self._decode = self._main.get_signature_runner("decode")
        self._prefill: dict[int, object] = {}
        for name in sigs:
            m = _PREFILL_RE.match(name)
            if m:
                self._prefill[int(m.group(1))] = self._main.get_signature_runner(name)
        dec_in = self._decode.get_input_details()
        for need in ("embeddings", "input_pos", "mask"):
            if need not in dec_in:
                raise BundleError(f"{self.path}: decode signature has no '{need}' input (split-cache layout?)")
        self.kv_names = sorted(n for n in dec_in if n.startswith("kv_cache_"))
        self._kv_shapes = {n: tuple(dec_in[n]["shape"]) for n in self.kv_names}
        self._kv_dtypes = {n: dec_in[n]["dtype"] for n in self.kv_names}
        self.cache_length = int(dec_in["mask"]["shape"][-1])
        self.has_ple = "per_layer_embeddings" in dec_in
        if self.has_ple and self._ple is None:
            raise BundleError(f"{self.path}: decode needs per_layer_embeddings but the bundle has no per-layer embedder")
        self.vocab_size = int(self._decode.get_output_details()["logits"]["shape"][-1])

        self._emb_sigs = self._emb.get_signature_list()
        self._ple_sigs = self._ple.get_signature_list() if self._ple is not None else {}
        self._emb_runners: dict[str, object] = {}

        if softcap_value is None:
            v = self.header.system_metadata.get(SOFTCAP_KEY)
            softcap_value = float(v) if v is not None else None
        self.softcap = softcap_value
        self.reset()

    # ---------------------------------------------------------------- info
    @property
    def prefill_lengths(self) -> list[int]:
        return sorted(self._prefill)

    @property
    def position(self) -> int:
        return self._pos

    def tokenizer_json(self) -> str | None:
        return read_hf_tokenizer_json(self.path, self.header)

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        self._kv = {n: np.zeros(self._kv_shapes[n], dtype=self._kv_dtypes[n]) for n in self.kv_names}
        self._pos = 0

    def _runner(self, interp, sigs, name):
        key = f"{id(interp)}:{name}"
        r = self._emb_runners.get(key)
        if r is None:
            if name not in sigs:
                raise BundleError(f"{self.path}: embedder signature {name} missing")
            r = interp.get_signature_runner(name)
            self._emb_runners[key] = r
        return r

    def _embed(self, ids: np.ndarray, prefill_len: int | None):
        tok = ids.reshape(1, -1).astype(np.int32)
        if prefill_len is None:
            emb_sig, ple_sig = "decode_embedder", "decode_per_layer_embedder"
        else:
            emb_sig, ple_sig = f"prefill_embedder_{prefill_len}", f"prefill_per_layer_embedder_{prefill_len}"
        feeds = {"token_ids": tok}
        emb = self._runner(self._emb, self._emb_sigs, emb_sig)(**feeds)["embeddings"]
        ple = None
        if self.has_ple:
            ple = self._runner(self._ple, self._ple_sigs, ple_sig)(**feeds)["embeddings"]
        return emb, ple

    def _mask(self, positions: np.ndarray) -> np.ndarray:
        cols = np.arange(self.cache_length, dtype=np.int64)[None, :]
        allowed = cols <= positions.astype(np.int64)[:, None]
        m = np.where(allowed, 0.0, self.mask_value).astype(np.float32)
        return m[None, None, :, :]

    def _run(self, name: str, runner, emb, ple, positions: np.ndarray) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {
            "embeddings": emb.astype(np.float32),
            "input_pos": positions.astype(np.int32),
            "mask": self._mask(positions),
        }
        if self.has_ple:
            feeds["per_layer_embeddings"] = ple.astype(np.float32)
        feeds.update(self._kv)
        if self.recorder is not None:
            self.recorder(name, {k: np.array(v, copy=True) for k, v in feeds.items()})
        out = runner(**feeds)
        for n in self.kv_names:
            self._kv[n] = out[n]
        return out

    def _check_room(self, n: int) -> None:
        if self._pos + n > self.cache_length:
            raise ValueError(
                f"sequence of {self._pos + n} tokens exceeds the bundle's cache length {self.cache_length}"
            )

    # ---------------------------------------------------------------- steps
    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; return the next-token logits (after softcap), shape [vocab]."""
        self._check_room(1)
        emb, ple = self._embed(np.array([int(token_id)]), None)
        out = self._run("decode", self._decode, emb, ple, np.array([self._pos]))
        self._pos += 1
        return softcap(np.asarray(out["logits"], dtype=np.float32).reshape(-1, self.vocab_size)[-1], self.softcap)

    def _prefill_chunk(self, ids: Sequence[int]) -> None:
        n = len(ids)
        fitting = [p for p in self.prefill_lengths if self._pos + p <= self.cache_length]
        if not fitting:
            for t in ids:  # no prefill window fits the rest of the cache: one token at a time
                self.decode(t)
            return
        big = [p for p in fitting if p >= n]
        plen = min(big) if big else max(fitting)
        take = min(n, plen)
        chunk = np.zeros(plen, dtype=np.int32)
        chunk[:take] = np.asarray(ids[:take], dtype=np.int32)
        # Padded slots get the following positions: their cache rows are written
        # with junk that stays masked until the real token at that position
        # overwrites it.
        positions = np.arange(self._pos, self._pos + plen)
        emb, ple = self._embed(chunk, plen)
        self._run(f"prefill_{plen}", self._prefill[plen], emb, ple, positions)
        self._pos += take
        if take < n:
            self._prefill_chunk(ids[take:])

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Append ``ids`` (at least one); return the logits after the last of them."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        self._check_room(len(ids))
        if len(ids) > 1:
            if self._prefill:
                self._prefill_chunk(ids[:-1])
            else:
                for t in ids[:-1]:
                    self.decode(t)
        return self.decode(ids[-1])

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Reset, then next-token logits for every position: shape [len(ids) - 1, vocab]."""
        ids = [int(t) for t in ids]
        if len(ids) < 2:
            raise ValueError("score needs at least two tokens")
        if len(ids) > self.cache_length:
            raise ValueError(f"{len(ids)} tokens exceed the bundle's cache length {self.cache_length}")
        self.reset()
        rows = [self.decode(t) for t in ids[:-1]]
        return np.stack(rows).astype(np.float32)

    def generate(self, ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> list[int]:
        """Greedy generation after a reset; returns the new token ids."""
        self.reset()
        logits = self.prefill(ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            t = int(np.argmax(logits))
            out.append(t)
            if t in stop_ids or self._pos >= self.cache_length:
                break
            logits = self.decode(t)
        return out
