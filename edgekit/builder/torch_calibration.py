"""Static activation ranges of a real Gemma 4 checkpoint without holding the float model.

The calibration of ``quantize.record_calibration`` runs the float ``.tflite``
signatures, which needs every float section in memory (about 17 GiB at full E2B).
:func:`linear_ranges` gets the same statistics (min/max of every fully-connected
op's input and output) from the Hugging Face Gemma 4 text forward instead, with
memory bounded by one decoder layer:

- the text model is built on the meta device; the rotary embedding (its
  non-persistent ``inv_freq`` buffers) is rebuilt on the CPU;
- the main and per-layer embedding tables are never materialized: only the rows
  of the chunks' token ids are read from the safetensors file (plain reads at
  their byte offsets) and scaled as ``Gemma4TextScaledWordEmbedding`` does;
- each decoder layer's parameters are read from the safetensors file(s) by a
  forward pre-hook right before the layer runs and put back on the meta device by
  a forward hook right after it;
- the lm_head (tied to ``embed_tokens`` when the checkpoint has no
  ``lm_head.weight``) is applied block of vocabulary rows by block, so neither
  its weight nor the full logits exist at once.

Forward hooks on every ``nn.Linear`` record the min/max of its input and output.
The keys are the Hugging Face module names that
``edgekit.bundle.tensor_names.module_name_for`` gives the FULLY_CONNECTED ops of
``tf_lite_prefill_decode`` (``model.language_model.layers.N.self_attn.q_proj``, ...,
``model.language_model.per_layer_model_projection``, ``lm_head``). The ranges are
of raw logits (no final soft-capping), as the exported graph's lm_head op outputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekit.errors import CheckpointError, UsageError
from edgekit.models.checkpoint import (
    FLOAT_DTYPES,
    INDEX_FILE,
    ST_DTYPE_SIZES,
    WEIGHTS_FILE,
    read_safetensors_header,
)
from edgekit.models.presets import CONFIG_FILE

TEXT_PREFIX = "model.language_model"
LM_HEAD = "lm_head"
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# the lm_head runs over blocks of vocabulary rows: each block's float32 weight and its
# logits (tokens x rows) stay under this many bytes
LM_HEAD_BLOCK_BYTES = 32 << 20

Progress = Callable[[str], None]


# ---------------------------------------------------------------- the weight files
@dataclass(frozen=True)
class _Stored:
    """One tensor of a safetensors file: where its bytes are."""

    name: str
    path: Path
    dtype: str  # safetensors code
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * ST_DTYPE_SIZES[self.dtype]


def _weight_files(root: Path) -> list[Path]:
    index = root / INDEX_FILE
    if index.is_file():
        try:
            wmap = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})",
                                  hint="repair or re-download the checkpoint") from exc
        return [root / f for f in sorted(set(wmap.values()))]
    if (root / WEIGHTS_FILE).is_file():
        return [root / WEIGHTS_FILE]
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{root}: no *.safetensors weight file",
                              hint="pass a Hugging Face checkpoint folder with its weights")
    return files


def _tensor_index(root: Path) -> dict[str, _Stored]:
    """Every tensor of the checkpoint with its file and byte offset (headers only)."""
    out: dict[str, _Stored] = {}
    for path in _weight_files(root):
        checked = read_safetensors_header(path)  # validates sizes and offsets against the file
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n).decode("utf-8"))
        for name, entry in checked.items():
            start = int(header[name]["data_offsets"][0])
            out[name] = _Stored(name, path, entry.dtype, entry.shape, 8 + n + start)
    return out


def _torch_dtype(st: str):
    import torch

    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[st]


def _pread_into(fd: int, buf: memoryview, pos: int, t: _Stored) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], pos + done)
        if n <= 0:
            raise CheckpointError(f"{t.path}: short read of tensor {t.name}",
                                  hint="the file is truncated; re-download or re-create the checkpoint")
        done += n


def _empty_rows(t: _Stored, count: int):
    import torch

    out = torch.empty((count, *t.shape[1:]), dtype=_torch_dtype(t.dtype))
    buf = memoryview(out.view(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(bytearray())
    return out, buf


def _read_rows(t: _Stored, start: int, count: int):
    """Rows ``start:start+count`` of a tensor, read with plain file reads into a fresh tensor."""
    out, buf = _empty_rows(t, count)
    with open(t.path, "rb", buffering=0) as f:
        _pread_into(f.fileno(), buf, t.offset + start * t.row_bytes, t)
    return out


def _read(t: _Stored):
    if not t.shape:  # a scalar: one element
        return _read_rows(dataclasses.replace(t, shape=(1,)), 0, 1).reshape(())
    return _read_rows(t, 0, t.shape[0])


def _gather_rows(t: _Stored, ids):
    """Rows ``ids`` (sorted, unique) of a 2-D table, one file read per run of consecutive ids.

    Plain reads, not a memory map: through a map, the kernel maps whole page-cache folios
    around every touched row, and those file pages count in the process's RSS (1019 random
    rows of the 1.17 GB per-layer table of e2b at width/8 mapped 857 MB, measured).
    """
    out, buf = _empty_rows(t, len(ids))
    rb = t.row_bytes
    with open(t.path, "rb", buffering=0) as f:
        i = 0
        while i < len(ids):
            j = i
            while j + 1 < len(ids) and int(ids[j + 1]) == int(ids[j]) + 1:
                j += 1
            _pread_into(f.fileno(), buf[i * rb:(j + 1) * rb], t.offset + int(ids[i]) * rb, t)
            i = j + 1
    return out


# ------------------------------------------------------------------ the model
def _text_config(root: Path):
    from transformers import AutoConfig

    cfg_path = root / CONFIG_FILE
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: cannot read ({exc})",
                              hint="pass a Hugging Face checkpoint folder with its config.json") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object", hint="repair or re-download config.json")
    qc = raw.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method"):
        raise CheckpointError(
            f"{root}: a pre-quantized checkpoint (quant_method: {qc.get('quant_method')}); activation ranges "
            "are computed from float checkpoints only",
            hint="a `quant_method: gemma` checkpoint carries its own input/output activation scales: use those, "
                 "or pass its dequantized float twin")
    if raw.get("model_type") != "gemma4" or not isinstance(raw.get("text_config"), dict):
        raise CheckpointError(f"{cfg_path}: model_type is {raw.get('model_type')!r}, expected 'gemma4' "
                              "with a text_config", hint="pass a Gemma 4 checkpoint folder (multimodal layout)")
    cfg = AutoConfig.from_pretrained(str(root)).get_text_config()
    cfg._attn_implementation = "sdpa"  # noqa: SLF001 - the attention kernel the in-memory forward uses too
    return cfg


def _meta_text_model(cfg):
    """Gemma4TextModel with every parameter and buffer on the meta device, except the
    rotary embedding, rebuilt on the CPU (its inv_freq buffers are not in checkpoints)."""
    import torch
    from transformers.models.gemma4 import modeling_gemma4 as mg

    with torch.device("meta"):
        model = mg.Gemma4TextModel(cfg)
    model.rotary_emb = mg.Gemma4TextRotaryEmbedding(cfg)
    model.eval()
    return model


def _set_param(module, name: str, tensor) -> None:
    import torch

    module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)  # noqa: SLF001


def _to_meta(module) -> None:
    import torch

    for mod in module.modules():
        for name, p in list(mod._parameters.items()):  # noqa: SLF001
            if p is not None and p.device.type != "meta":
                mod._parameters[name] = torch.nn.Parameter(  # noqa: SLF001
                    torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False)
    _trim_heap()


def _trim_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Weights and activations below glibc's mmap threshold (which rises to 32 MiB after the
    first large free) come from the heap; a layer's freed tensors then stay in the RSS and
    the next layer's sizes do not reuse them exactly, so the RSS crept up layer by layer.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


class _Loader:
    """Loads a module's parameters (and persistent buffers) from the checkpoint in the compute dtype."""

    def __init__(self, index: dict[str, _Stored], dtype):
        self.index = index
        self.dtype = dtype

    def stored(self, key: str) -> _Stored:
        t = self.index.get(key)
        if t is None:
            raise CheckpointError(f"checkpoint has no tensor {key}",
                                  hint="pass a complete Gemma 4 checkpoint of the configured architecture")
        if t.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"tensor {key} is {t.dtype}, not a float dtype ({', '.join(FLOAT_DTYPES)})",
                hint="activation ranges are computed from float checkpoints only; dequantize it first")
        return t

    def load(self, module, prefix: str, *, buffers: bool) -> None:
        for mname, mod in module.named_modules():
            base = f"{prefix}.{mname}" if mname else prefix
            for name, p in list(mod._parameters.items()):  # noqa: SLF001
                if p is None:
                    continue
                t = self.stored(f"{base}.{name}")
                if t.shape != tuple(p.shape):
                    raise CheckpointError(f"tensor {t.name} has shape {t.shape}, the config gives {tuple(p.shape)}",
                                          hint="the checkpoint's config.json does not match its weights")
                _set_param(mod, name, _read(t).to(self.dtype))
            if not buffers:
                continue
            for name, b in list(mod._buffers.items()):  # noqa: SLF001
                if b is None or name in mod._non_persistent_buffers_set:  # noqa: SLF001
                    continue
                t = self.stored(f"{base}.{name}")
                mod._buffers[name] = _read(t).to(self.dtype).reshape(b.shape)  # noqa: SLF001


# ------------------------------------------------------------------ the ranges
class _Ranges:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def add(self, name: str, x, y, tokens: int) -> None:
        import torch

        lo_i, hi_i = (float(v) for v in torch.aminmax(x))  # one pass over the tensor, not two
        lo_o, hi_o = (float(v) for v in torch.aminmax(y))
        r = self.data.get(name)
        if r is None:
            self.data[name] = {"in_min": lo_i, "in_max": hi_i, "out_min": lo_o, "out_max": hi_o, "tokens": tokens}
        else:  # several calls of one module (the lm_head's vocabulary blocks): widen the ranges
            r["in_min"], r["in_max"] = min(r["in_min"], lo_i), max(r["in_max"], hi_i)
            r["out_min"], r["out_max"] = min(r["out_min"], lo_o), max(r["out_max"], hi_o)


def _check_chunks(token_chunks: Sequence[Sequence[int]], vocab: int, vocab_pl: int | None) -> list[list[int]]:
    if len(token_chunks) == 0:
        raise UsageError("no token chunks to calibrate on", hint="pass at least one chunk of token ids")
    chunks = [list(c) for c in token_chunks]
    length = len(chunks[0])
    if length == 0 or any(len(c) != length for c in chunks):
        raise UsageError(f"token chunks must all have the same non-zero length (got {sorted({len(c) for c in chunks})})",
                         hint="cut the token stream into equal-length chunks; no padding is applied")
    limit = min(vocab, vocab_pl) if vocab_pl else vocab
    for c in chunks:
        for t in c:
            if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < limit:
                raise UsageError(f"token id {t!r} is outside the vocabulary (0..{limit - 1})",
                                 hint="tokenize with the checkpoint's own tokenizer")
    return [[int(t) for t in c] for c in chunks]


def linear_ranges(
    checkpoint_dir: str | os.PathLike,
    token_chunks: list[list[int]],
    *,
    compute_dtype: str = "float32",
    progress: Progress | None = None,
) -> dict[str, dict]:
    """Min/max of the input and output of every Linear of the text model over ``token_chunks``.

    The chunks (equal length, no padding) run as one batch through the Hugging Face
    Gemma 4 text forward from position 0, causal, without a KV cache. Returns
    ``{hf_module_name: {"in_min", "in_max", "out_min", "out_max", "tokens"}}``; ``tokens``
    is the number of token positions each module saw.
    """
    import numpy as np
    import torch

    if compute_dtype not in COMPUTE_DTYPES:
        raise UsageError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    dtype = getattr(torch, compute_dtype)
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist", hint="pass a Hugging Face model folder")
    say = progress or (lambda _msg: None)

    cfg = _text_config(root)
    index = _tensor_index(root)
    ple_dim = cfg.hidden_size_per_layer_input or 0
    chunks = _check_chunks(token_chunks, cfg.vocab_size, cfg.vocab_size_per_layer_input if ple_dim else None)
    batch, length = len(chunks), len(chunks[0])
    tokens = batch * length

    model = _meta_text_model(cfg)
    loader = _Loader(index, dtype)
    # every weight present, float and of the configured shape before anything runs
    # (a bad checkpoint fails here, not after minutes of forward)
    for pname, p in model.named_parameters():
        t = loader.stored(f"{TEXT_PREFIX}.{pname}")
        if t.shape != tuple(p.shape):
            raise CheckpointError(f"tensor {t.name} has shape {t.shape}, the config gives {tuple(p.shape)}",
                                  hint="the checkpoint's config.json does not match its weights")
    # everything outside the decoder layers and the embedding tables is small: keep it loaded
    for name, mod in model.named_children():
        if name in ("layers", "embed_tokens", "embed_tokens_per_layer", "rotary_emb"):
            continue
        loader.load(mod, f"{TEXT_PREFIX}.{name}", buffers=True)

    ranges = _Ranges()
    hooks = []
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            key = f"{TEXT_PREFIX}.{mname}"
            hooks.append(mod.register_forward_hook(
                lambda m, args, out, key=key: ranges.add(key, args[0], out, tokens)))
    n_layers = len(model.layers)
    for i, layer in enumerate(model.layers):
        prefix = f"{TEXT_PREFIX}.layers.{i}"

        def pre(mod, args, prefix=prefix, i=i):
            say(f"layer {i + 1}/{n_layers}")
            loader.load(mod, prefix, buffers=True)

        hooks.append(layer.register_forward_pre_hook(pre))
        hooks.append(layer.register_forward_hook(lambda mod, args, out: _to_meta(mod)))

    ids = np.asarray(chunks, dtype=np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(ids.shape))
    try:
        with torch.no_grad():
            # Gemma4TextScaledWordEmbedding: rows * embed_scale (a float32 scalar cast to the weight dtype)
            emb_t = loader.stored(f"{TEXT_PREFIX}.embed_tokens.weight")
            scale = torch.tensor(cfg.hidden_size ** 0.5).to(dtype)
            embeds = _gather_rows(emb_t, uniq).to(dtype)[inverse] * scale
            per_layer = None
            if ple_dim:
                ple_t = loader.stored(f"{TEXT_PREFIX}.embed_tokens_per_layer.weight")
                ple_scale = torch.tensor(ple_dim ** 0.5).to(dtype)
                per_layer = (_gather_rows(ple_t, uniq).to(dtype)[inverse] * ple_scale).reshape(
                    batch, length, cfg.num_hidden_layers, ple_dim)
            say(f"forward: {batch} chunks x {length} tokens")
            out = model(inputs_embeds=embeds, per_layer_inputs=per_layer, use_cache=False)
            hidden = out.last_hidden_state
            del out, embeds, per_layer
            _lm_head_ranges(ranges, hidden, index, loader, tokens, say)
    finally:
        for h in hooks:
            h.remove()
    return ranges.data


def _lm_head_ranges(ranges: _Ranges, hidden, index: dict[str, _Stored], loader: _Loader, tokens: int,
                    say: Progress) -> None:
    """Raw logits of ``lm_head`` (tied to the main embedding when the checkpoint has no
    ``lm_head.weight``), computed one block of vocabulary rows at a time."""
    import torch

    key = f"{LM_HEAD}.weight"
    t = loader.stored(key if key in index else f"{TEXT_PREFIX}.embed_tokens.weight")
    rows = t.shape[0]
    x = hidden.reshape(-1, hidden.shape[-1])
    step = min(rows, max(1, LM_HEAD_BLOCK_BYTES // (4 * max(math.prod(t.shape[1:]), x.shape[0]))))
    say(f"lm_head: {rows} rows in blocks of {step}")
    # one weight buffer and one logits buffer for every block: fresh tensors per block
    # leave freed heap behind in the allocator (peak RSS varied 80-390 MB at e2b width/8)
    raw_w, raw = _empty_rows(t, step)
    w_c = raw_w if raw_w.dtype == x.dtype else torch.empty(raw_w.shape, dtype=x.dtype)
    logits = torch.empty(x.shape[0] * step, dtype=x.dtype)
    rb = t.row_bytes
    with open(t.path, "rb", buffering=0) as f:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            _pread_into(f.fileno(), raw[:n * rb], t.offset + start * rb, t)
            w = raw_w[:n]
            if w_c is not raw_w:
                w_c[:n].copy_(w)
                w = w_c[:n]
            y = logits[: x.shape[0] * n].view(x.shape[0], n)
            torch.matmul(x, w.t(), out=y)
            ranges.add(LM_HEAD, x, y, tokens)
