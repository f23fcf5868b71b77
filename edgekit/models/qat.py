"""Google's mobile QAT checkpoints (``quant_method: gemma``): read, validate, dequantize.

The reference semantics are transformers 5.17's own code
(``utils/quantization_config.py`` ``GemmaQuantizationConfig``,
``quantizers/quantizer_gemma.py``, ``integrations/gemma_quant.py``):

* ``config.json`` carries ``quantization_config = {quant_method: "gemma", num_bits,
  quantize_embeddings, module_quant_configs: {regex: {num_bits}}, modules_to_not_convert}``.
  The regexes are joined into one alternation and ``re.search``-ed on the module name:
  the leftmost match wins, ties go to the earlier pattern (that is what transformers does).
* a quantized ``nn.Linear`` stores ``weight`` (int2/int4 packed in uint8, low bits first,
  stored unsigned with an offset; int8 as int8), ``weight_scale`` float32 ``(out, 1)``,
  ``input_activation_scale`` / ``output_activation_scale`` float32 scalars (static-range
  int8 rounding, 0 = that side is not quantized);
* a quantized ``nn.Embedding`` stores ``embedding_quantized`` packed the same way and
  ``embedding_scale`` float32 ``(rows, blocks)``: one block for the main table, one per
  decoder layer for the per-layer table;
* ``k_cache_scale`` / ``v_cache_scale`` per attention layer (transformers ignores them).

Everything here works from safetensors *headers* first (:func:`validate_qat_checkpoint`)
so a bad checkpoint is refused with one line before any weight is read; dequantizing is
exact (integer x scale in float32, the same arithmetic transformers uses).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.errors import CheckpointError

QUANT_METHOD = "gemma"
ALLOWED_BITS = (2, 4, 8)

# Published E2B map, in order (../shared/notes/gemma4.md). The MLP split is the
# preset's: layers before the first KV-shared layer at 4 bits, the "decode" layers at 2.
E2B_NOT_CONVERTED = (
    "model.vision_tower.patch_embedder",
    "model.audio_tower.subsample_conv_projection",
    "model.audio_tower.output_proj",
    "relative_k_proj",
    "model.embed_audio",
    "model.embed_vision",
    "per_layer_model_projection",
)


def _layer_range_regex(n: int) -> str:
    """A regex matching the decimal layer numbers 0..n-1 (the published E2B map writes
    layers 0-14 as ``(\\d|1[0-4])``; we write the same for n == 15)."""
    if n == 15:
        return r"(\d|1[0-4])"
    return "(" + "|".join(str(i) for i in range(n - 1, -1, -1)) + ")"


def default_module_quant_configs(num_layers: int, first_shared: int, *, family: str = "e2b") -> dict:
    """The mobile bit map as ``module_quant_configs`` for a model with ``num_layers`` decoder
    layers whose KV-shared ("decode") layers start at ``first_shared``.

    ``family="e2b"`` is the published E2B map; ``"e4b"`` the E4B one (embeddings, head and
    per-layer table at 2 bits, every MLP and attention at 4, per-layer gates at 8).
    """
    if family == "e4b":
        rules = [
            (r"^lm_head$", 2),
            (r"language_model\.embed_tokens$", 2),
            (r"language_model\.embed_tokens_per_layer$", 2),
            (r"language_model\.layers\.\d+\.mlp\.", 4),
        ]
    else:
        rules = [
            (r"^lm_head$", 2),
            (r"language_model\.embed_tokens$", 2),
            (r"language_model\.embed_tokens_per_layer$", 4),
            (r"language_model\.layers\." + _layer_range_regex(first_shared) + r"\.mlp\.", 4),
            (r"language_model\.layers\.\d+\.mlp\.", 2),
        ]
    rules += [
        (r"language_model\.layers\.\d+\.per_layer_input_gate$", 8),
        (r"language_model\.layers\.\d+\.per_layer_projection$", 8),
        (r"language_model\.layers\.\d+\.self_attn\.", 4),
        (r"vision_tower", 8),
        (r"audio_tower(?!.*lconv1d\.linear_start)", 2),
        (r"audio_tower\.layers\.\d+\.lconv1d\.linear_start\.", 4),
    ]
    return {pat: {"num_bits": bits} for pat, bits in rules}


@dataclass(frozen=True)
class QatConfig:
    """The ``quantization_config`` of a ``quant_method: gemma`` checkpoint."""

    num_bits: int = 4
    quantize_embeddings: bool = False
    rules: tuple[tuple[str, int], ...] = ()
    modules_to_not_convert: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> "QatConfig":
        if not isinstance(d, dict) or d.get("quant_method") != QUANT_METHOD:
            raise CheckpointError(
                f"quantization_config.quant_method is {d.get('quant_method') if isinstance(d, dict) else d!r}, "
                f"not {QUANT_METHOD!r}",
                hint="only Google's mobile QAT format (quant_method: gemma) is read pre-quantized",
            )
        num_bits = d.get("num_bits", 4)
        if num_bits not in ALLOWED_BITS:
            raise CheckpointError(f"quantization_config.num_bits is {num_bits!r}; allowed: 2, 4, 8")
        rules = []
        for pat, opts in (d.get("module_quant_configs") or {}).items():
            try:
                re.compile(pat)
            except re.error as exc:
                raise CheckpointError(f"quantization_config.module_quant_configs: bad regex {pat!r}: {exc}") from None
            bits = (opts or {}).get("num_bits", num_bits)
            if bits not in ALLOWED_BITS:
                raise CheckpointError(
                    f"quantization_config.module_quant_configs[{pat!r}].num_bits is {bits!r}; allowed: 2, 4, 8"
                )
            rules.append((pat, int(bits)))
        return cls(
            num_bits=int(num_bits),
            quantize_embeddings=bool(d.get("quantize_embeddings", False)),
            rules=tuple(rules),
            modules_to_not_convert=tuple(d.get("modules_to_not_convert") or ()),
        )

    def to_dict(self) -> dict:
        return {
            "quant_method": QUANT_METHOD,
            "num_bits": self.num_bits,
            "quantize_embeddings": self.quantize_embeddings,
            "module_quant_configs": {p: {"num_bits": b} for p, b in self.rules},
            "modules_to_not_convert": list(self.modules_to_not_convert),
        }

    def bits_for(self, module_name: str) -> int | None:
        """Bits of ``module_name`` exactly as transformers resolves them; None if the module
        is in ``modules_to_not_convert`` (kept float)."""
        if not _should_convert(module_name, self.modules_to_not_convert):
            return None
        if not self.rules:
            return self.num_bits
        matcher = re.compile("|".join(f"(?P<g{i}>{p})" for i, (p, _) in enumerate(self.rules)))
        m = matcher.search(module_name)
        if m is None:
            return self.num_bits
        for i, (_, bits) in enumerate(self.rules):
            if m.group(f"g{i}") is not None:
                return bits
        return self.num_bits  # pragma: no cover - one group always matched


def _should_convert(name: str, patterns) -> bool:
    # transformers.quantizers.quantizers_utils.should_convert_module
    return not any(
        re.match(f"{k}\\.", name) or re.match(f"{k}", name) or name.endswith(k) for k in patterns
    )


def is_qat_config(config: dict) -> bool:
    """True when a checkpoint's config.json declares the mobile QAT format."""
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


# --------------------------------------------------------------------------- packing


def packed_width(width: int, bits: int) -> int:
    """Bytes of the last dimension of a packed tensor of ``width`` values."""
    if bits == 2:
        return (width + 3) // 4
    if bits == 4:
        return (width + 1) // 2
    return width


def storage_dtype(bits: int) -> str:
    """safetensors dtype of the packed storage (``U8`` for int2/int4, ``I8`` for int8)."""
    return "I8" if bits == 8 else "U8"


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers (last axis = values) -> transformers' packed storage."""
    q = np.asarray(q)
    if bits == 8:
        return q.astype(np.int8)
    per = 8 // bits
    offset = 1 << (bits - 1)
    u = (q.astype(np.int16) + offset).astype(np.uint8)
    width = u.shape[-1]
    pad = (-width) % per
    if pad:
        u = np.concatenate([u, np.zeros(u.shape[:-1] + (pad,), np.uint8)], axis=-1)
    u = u.reshape(u.shape[:-1] + (-1, per))
    out = np.zeros(u.shape[:-1], np.uint8)
    for k in range(per):
        out |= (u[..., k] << (bits * k)).astype(np.uint8)
    return out


def unpack(packed: np.ndarray, bits: int, width: int) -> np.ndarray:
    """transformers' packed storage -> signed int8 values (``_unpack_int2/_unpack_int4``)."""
    if bits == 8:
        return np.asarray(packed).astype(np.int8)[..., :width]
    p = np.asarray(packed).astype(np.uint8)
    per = 8 // bits
    mask = (1 << bits) - 1
    offset = 1 << (bits - 1)
    parts = [((p >> (bits * k)) & mask).astype(np.int8) - offset for k in range(per)]
    return np.stack(parts, axis=-1).reshape(p.shape[:-1] + (-1,))[..., :width].astype(np.int8)


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class QuantModule:
    """One module the checkpoint stores quantized, as transformers will build it."""

    name: str
    kind: str  # "linear" | "embedding"
    bits: int
    rows: int  # out_features / num_embeddings
    width: int  # in_features / embedding_dim
    blocks: int = 1  # embedding_scale blocks per row

    def tensors(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Expected safetensors entries: key -> (dtype, shape)."""
        pw = packed_width(self.width, self.bits)
        sd = storage_dtype(self.bits)
        if self.kind == "embedding":
            return {
                f"{self.name}.embedding_quantized": (sd, (self.rows, pw)),
                f"{self.name}.embedding_scale": ("F32", (self.rows, self.blocks)),
            }
        return {
            f"{self.name}.weight": (sd, (self.rows, pw)),
            f"{self.name}.weight_scale": ("F32", (self.rows, 1)),
            f"{self.name}.input_activation_scale": ("F32", ()),
            f"{self.name}.output_activation_scale": ("F32", ()),
        }


@dataclass
class QatLayout:
    """What a QAT checkpoint of a given config must hold."""

    qconfig: QatConfig
    modules: dict[str, QuantModule]
    float_params: dict[str, tuple[int, ...]]  # parameters/buffers kept float: name -> shape
    kv_layers: list[str] = field(default_factory=list)  # self_attn modules that own a KV cache
    num_layers: int = 0


def _build_meta_model(hf_config):
    import torch
    import transformers

    cls = transformers.Gemma4ForConditionalGeneration
    if getattr(hf_config, "model_type", "") == "gemma4_text":
        cls = transformers.Gemma4ForCausalLM
    with torch.device("meta"):
        return cls(hf_config)


def quant_layout(hf_config, qconfig: QatConfig) -> QatLayout:
    """Which modules are quantized at which width, and every tensor's expected shape.

    Builds the model on the meta device (no memory) and resolves each ``nn.Linear`` /
    ``nn.Embedding`` with transformers' own rules, so this layout is what
    ``from_pretrained`` will expect.
    """
    import torch

    model = _build_meta_model(hf_config)
    text = getattr(hf_config, "text_config", hf_config)
    num_layers = int(text.num_hidden_layers)
    modules: dict[str, QuantModule] = {}
    covered: set[str] = set()
    kv_layers: list[str] = []
    for name, mod in model.named_modules():
        if type(mod).__name__.endswith("TextAttention") and getattr(mod, "k_proj", None) is not None:
            kv_layers.append(name)
        if isinstance(mod, torch.nn.Embedding):
            if not qconfig.quantize_embeddings:
                continue
            bits = qconfig.bits_for(name)
            if bits is None:
                continue
            blocks = num_layers if name.endswith("embed_tokens_per_layer") else 1
            modules[name] = QuantModule(name, "embedding", bits, mod.num_embeddings, mod.embedding_dim, blocks)
            covered.add(f"{name}.weight")
        elif isinstance(mod, torch.nn.Linear):
            bits = qconfig.bits_for(name)
            if bits is None:
                continue
            modules[name] = QuantModule(name, "linear", bits, mod.out_features, mod.in_features)
            covered.add(f"{name}.weight")
    # what save_pretrained writes: parameters and persistent buffers
    float_params = {n: tuple(p.shape) for n, p in model.state_dict().items() if n not in covered}
    return QatLayout(qconfig, modules, float_params, kv_layers, num_layers)


# --------------------------------------------------------------------------- safetensors headers


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "U8": np.uint8, "I8": np.int8,
              "I32": np.int32, "I64": np.int64, "F64": np.float64, "BOOL": np.bool_}
_ST_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1, "I32": 4, "I64": 8, "F64": 8, "BOOL": 1}


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in file
    end: int


def read_safetensors_headers(ckpt_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor's dtype, shape and byte range, from the headers only.

    Raises CheckpointError for a truncated or corrupt file (a header that does not parse,
    a tensor whose bytes run past the end of the file or do not match its shape).
    """
    ckpt_dir = Path(ckpt_dir)
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {ckpt_dir}", hint="point --checkpoint at a Hugging Face model folder")
    out: dict[str, TensorEntry] = {}
    for f in files:
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n <= 0 or 8 + n > size:
                    raise ValueError("header length past end of file")
                header = json.loads(fh.read(n))
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{f.name}: corrupt safetensors header ({exc})", hint="re-copy the checkpoint") from None
        base = 8 + n
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            dtype = meta.get("dtype")
            shape = tuple(int(x) for x in meta.get("shape", ()))
            s, e = (int(x) for x in meta.get("data_offsets", (0, 0)))
            want = math.prod(shape) * _ST_ITEMSIZE.get(dtype, 0)
            if e - s != want:
                raise CheckpointError(
                    f"{f.name}: tensor {key} holds {e - s} bytes but {dtype}{list(shape)} needs {want}",
                    hint="the file is corrupt; re-copy the checkpoint",
                )
            if base + e > size:
                raise CheckpointError(
                    f"{f.name}: tensor {key} is truncated ({size - base - s} of {e - s} bytes present)",
                    hint="the file was cut short; re-copy the checkpoint",
                )
            if key in out:
                raise CheckpointError(f"tensor {key} appears in two files ({out[key].file.name}, {f.name})")
            out[key] = TensorEntry(f, dtype, shape, base + s, base + e)
    return out


def read_tensor(entry: TensorEntry) -> np.ndarray:
    """Read one tensor's bytes (no other tensor is touched)."""
    with open(entry.file, "rb") as fh:
        fh.seek(entry.start)
        buf = fh.read(entry.end - entry.start)
    if entry.dtype == "BF16":
        u16 = np.frombuffer(buf, np.uint16).astype(np.uint32) << 16
        return u16.view(np.float32).reshape(entry.shape)
    return np.frombuffer(buf, _ST_DTYPES[entry.dtype]).reshape(entry.shape).copy()


# --------------------------------------------------------------------------- validation


@dataclass
class QatCheckpoint:
    """A validated QAT checkpoint: where everything is and what it means."""

    path: Path
    config: dict  # config.json
    qconfig: QatConfig
    layout: QatLayout
    entries: dict[str, TensorEntry]

    @property
    def modules(self) -> dict[str, QuantModule]:
        return self.layout.modules

    def integers(self, name: str) -> np.ndarray:
        """Signed integer values of module ``name`` (rows x width)."""
        m = self.layout.modules[name]
        key = f"{name}.embedding_quantized" if m.kind == "embedding" else f"{name}.weight"
        return unpack(read_tensor(self.entries[key]), m.bits, m.width)

    def integer_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Signed integer values of rows ``start:stop`` of module ``name``: only those rows'
        packed bytes are read (plain reads, no memory map), so a block of a full-vocabulary
        table costs its own bytes only."""
        m = self.layout.modules[name]
        key = f"{name}.embedding_quantized" if m.kind == "embedding" else f"{name}.weight"
        e = self.entries[key]
        pw = packed_width(m.width, m.bits)
        start, stop = max(0, start), min(m.rows, stop)
        n = max(0, stop - start)
        a = np.empty((n, pw), dtype=np.int8 if m.bits == 8 else np.uint8)
        with open(e.file, "rb", buffering=0) as fh:
            fh.seek(e.start + start * pw)
            got = fh.readinto(memoryview(a).cast("B"))
        if got != a.nbytes:
            raise CheckpointError(f"{key}: short read ({got} of {a.nbytes} bytes)", hint="re-copy the checkpoint")
        return unpack(a, m.bits, m.width)

    def dequantized_rows(self, name: str, start: int, stop: int, scales: np.ndarray | None = None) -> np.ndarray:
        """Exact float32 rows ``start:stop`` (``int x scale``); ``scales`` = :meth:`scales`, if already read."""
        s = self.scales(name) if scales is None else scales
        return dequantize(self.integer_rows(name, start, stop), s[start:stop])

    def scales(self, name: str) -> np.ndarray:
        """float32 scales: (rows, 1) for linears, (rows, blocks) for embeddings."""
        m = self.layout.modules[name]
        key = f"{name}.embedding_scale" if m.kind == "embedding" else f"{name}.weight_scale"
        return read_tensor(self.entries[key]).astype(np.float32)

    def dequantized(self, name: str) -> np.ndarray:
        """Exact float32 weights, ``int x scale`` as transformers computes them."""
        return dequantize(self.integers(name), self.scales(name))

    def srq_scales(self, name: str) -> tuple[float, float]:
        """(input, output) activation scales of a linear; 0.0 = not quantized."""
        i = read_tensor(self.entries[f"{name}.input_activation_scale"]).reshape(())
        o = read_tensor(self.entries[f"{name}.output_activation_scale"]).reshape(())
        return float(np.float32(i)), float(np.float32(o))

    def kv_cache_scales(self) -> dict[str, tuple[float | None, float | None]]:
        out = {}
        for attn in self.layout.kv_layers:
            k = self.entries.get(f"{attn}.k_cache_scale")
            v = self.entries.get(f"{attn}.v_cache_scale")
            out[attn] = (
                float(read_tensor(k).reshape(-1)[0]) if k else None,
                float(read_tensor(v).reshape(-1)[0]) if v else None,
            )
        return out


def dequantize(ints: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``int x scale`` in float32; scales (rows, blocks) are repeated over equal blocks."""
    ints = ints.astype(np.float32)
    scales = np.asarray(scales, np.float32)
    if scales.ndim == 2 and scales.shape[1] > 1:
        block = ints.shape[-1] // scales.shape[1]
        scales = np.repeat(scales, block, axis=1)
    return ints * scales


def _check_scales(key: str, arr: np.ndarray, *, positive: bool) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise CheckpointError(f"{key}: {bad} scale(s) are NaN or infinite", hint="the checkpoint is corrupt; re-export it")
    if positive and np.any(arr <= 0):
        raise CheckpointError(f"{key}: {int(np.sum(arr <= 0))} scale(s) are zero or negative; weight scales must be > 0",
                              hint="the checkpoint is corrupt; re-export it")
    if not positive and np.any(arr < 0):
        raise CheckpointError(f"{key}: negative activation scale {float(arr.min())}; SRQ scales must be >= 0 (0 = not quantized)",
                              hint="the checkpoint is corrupt; re-export it")


def validate_qat_checkpoint(ckpt_dir, hf_config, *, preset_name: str | None = None,
                            allowed_bits: dict | None = None, check_values: bool = True) -> QatCheckpoint:
    """Check a QAT checkpoint against the model config (the preset's) before any long work.

    ``hf_config`` is the transformers config the preset expects (its shapes are the truth);
    ``allowed_bits`` maps a module-name regex to the set of widths the preset allows there
    (first match wins; default: :func:`preset_allowed_bits`). Checks, in order: the config
    declares ``quant_method: gemma``; the model size (hidden size, layers, vocab) is the
    preset's; every module's width is allowed; every expected tensor is present with the
    right dtype and packed shape and is not truncated; every scale is finite, weight scales
    > 0, SRQ and KV scales >= 0 (``check_values``: reads only the small scale tensors).
    Raises :class:`CheckpointError` (exit 6) with one line naming the first problem.
    """
    ckpt_dir = Path(ckpt_dir)
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{ckpt_dir} has no config.json", hint="point --checkpoint at a Hugging Face model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not is_qat_config(config):
        raise CheckpointError(f"{ckpt_dir} is not a quant_method: gemma checkpoint (no such quantization_config)")
    qconfig = QatConfig.from_dict(config["quantization_config"])

    _check_model_size(config, hf_config, preset_name)

    layout = quant_layout(_qat_view_of(hf_config), qconfig)
    allowed = allowed_bits if allowed_bits is not None else preset_allowed_bits(hf_config)
    for m in layout.modules.values():
        ok = _allowed_for(m.name, allowed)
        if ok is not None and m.bits not in ok:
            raise CheckpointError(
                f"{m.name} is quantized to {m.bits} bits, which the {preset_name or 'preset'} preset does not allow "
                f"there (allowed: {', '.join(str(b) for b in sorted(ok))})",
                hint="use a checkpoint made for this model's mobile bit map",
            )

    entries = read_safetensors_headers(ckpt_dir)
    for m in layout.modules.values():
        for key, (dtype, shape) in m.tensors().items():
            e = entries.get(key)
            if e is None:
                what = "scale" if key.endswith("scale") else "tensor"
                raise CheckpointError(f"missing {what} {key} ({m.bits}-bit {m.kind})",
                                      hint="the checkpoint is incomplete; re-export it")
            if m.kind == "embedding" and key.endswith("embedding_scale"):
                # one block per row (main table) or one per decoder layer (per-layer table)
                if e.dtype != "F32" or len(e.shape) != 2 or e.shape[0] != m.rows or m.width % e.shape[1]:
                    raise CheckpointError(f"{key} is {e.dtype}{list(e.shape)}; expected F32[{m.rows}, blocks] "
                                          f"with blocks dividing {m.width}")
                continue
            eshape = tuple(e.shape)
            if key.endswith("activation_scale") and math.prod(eshape) == 1:
                eshape = ()
            if e.dtype != dtype or eshape != shape:
                if e.dtype == dtype and len(eshape) == len(shape) and eshape[:-1] == shape[:-1] and eshape[-1:] != shape[-1:]:
                    raise CheckpointError(
                        f"{key}: packed width {eshape[-1]} bytes, expected {shape[-1]} for {m.width} "
                        f"{m.bits}-bit values (truncated or wrong width)",
                        hint="the checkpoint does not match the model config; re-export it")
                raise CheckpointError(f"{key} is {e.dtype}{list(eshape)}; expected {dtype}{list(shape)}",
                                      hint="the checkpoint does not match the model config")
    for name, shape in layout.float_params.items():
        e = entries.get(name)
        if e is not None and tuple(e.shape) != shape:
            raise CheckpointError(f"{name} has shape {list(e.shape)}; the model expects {list(shape)}")
    ckpt = QatCheckpoint(ckpt_dir, config, qconfig, layout, entries)
    if check_values:
        for m in layout.modules.values():
            if m.kind == "embedding":
                _check_scales(f"{m.name}.embedding_scale", ckpt.scales(m.name), positive=True)
            else:
                _check_scales(f"{m.name}.weight_scale", ckpt.scales(m.name), positive=True)
                for side in ("input", "output"):
                    k = f"{m.name}.{side}_activation_scale"
                    _check_scales(k, read_tensor(entries[k]), positive=False)
        for attn in layout.kv_layers:
            for kv in ("k", "v"):
                k = f"{attn}.{kv}_cache_scale"
                if k in entries:
                    _check_scales(k, read_tensor(entries[k]), positive=False)
    return ckpt


def _qat_view_of(hf_config):
    """The preset config as the QAT checkpoint stores it: lm_head untied (its own module)."""
    import copy

    c = copy.deepcopy(hf_config)
    c.tie_word_embeddings = False
    if hasattr(c, "text_config"):
        c.text_config.tie_word_embeddings = False
    return c


def _text_cfg(d):
    if isinstance(d, dict):
        return d.get("text_config", d)
    return getattr(d, "text_config", d)


def _get(d, key):
    return d.get(key) if isinstance(d, dict) else getattr(d, key, None)


def _check_model_size(config: dict, hf_config, preset_name: str | None) -> None:
    got, want = _text_cfg(config), _text_cfg(hf_config)
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
                "num_key_value_heads", "hidden_size_per_layer_input"):
        g, w = _get(got, key), _get(want, key)
        if w is not None and g != w:
            raise CheckpointError(
                f"checkpoint has {key}={g} but the {preset_name or 'chosen'} preset has {w}: "
                f"it is a checkpoint of a different model size",
                hint="pick the preset that matches the checkpoint (e2b / e4b / tiny) or the right --width-div",
            )


def preset_allowed_bits(hf_config) -> list[tuple[str, frozenset]]:
    """Widths the mobile schema allows per module group, for a preset's config.

    The decode ("KV-shared") layers' MLPs may be 2 or 4 bits; the MLPs before them 4 or 8
    (never 2: those layers feed every later KV cache); attention 4 or 8; per-layer gates
    and projections 8; embeddings/head 2, 4 or 8; towers anything.
    """
    text = _text_cfg(hf_config)
    n = int(_get(text, "num_hidden_layers"))
    shared = int(_get(text, "num_kv_shared_layers") or 0)
    first_shared = n - shared
    pre = "|".join(str(i) for i in range(first_shared)) or "NONE"
    return [
        (r"language_model\.layers\.(" + pre + r")\.mlp\.", frozenset({4, 8})),
        (r"language_model\.layers\.\d+\.mlp\.", frozenset({2, 4, 8})),
        (r"language_model\.layers\.\d+\.self_attn\.", frozenset({4, 8})),
        (r"language_model\.layers\.\d+\.per_layer_(input_gate|projection)$", frozenset({8})),
    ]


def _allowed_for(name: str, allowed) -> frozenset | None:
    for pat, bits in allowed:
        if re.search(pat, name):
            return frozenset(bits)
    return None


def iter_dequantized_state(ckpt: QatCheckpoint) -> Iterator[tuple[str, np.ndarray]]:
    """(parameter name, float32 array) for the float model, one tensor at a time.

    Quantized modules come out as ``<name>.weight`` = int x scale (exact); float tensors
    are passed through (bf16/f16 widened to float32); SRQ and KV scales are dropped.
    """
    quant_keys = set()
    for m in ckpt.modules.values():
        quant_keys.update(m.tensors())
        yield f"{m.name}.weight", ckpt.dequantized(m.name)
    for key, e in ckpt.entries.items():
        if key in quant_keys or key.endswith(("k_cache_scale", "v_cache_scale")):
            continue
        arr = read_tensor(e)
        if arr.dtype in (np.float16, np.float64):
            arr = arr.astype(np.float32)
        yield key, arr


def write_dequantized_checkpoint(ckpt: QatCheckpoint, out_dir, *, tokenizer_from=None) -> Path:
    """Write the exactly dequantized float32 checkpoint (HF layout) for export.

    The config is the checkpoint's without ``quantization_config`` (lm_head stays untied).
    Tokenizer files are copied from the checkpoint (or ``tokenizer_from``).
    """
    import shutil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(ckpt.config)
    cfg.pop("quantization_config", None)
    cfg["tie_word_embeddings"] = False
    if isinstance(cfg.get("text_config"), dict):
        cfg["text_config"] = dict(cfg["text_config"], tie_word_embeddings=False)
    cfg["torch_dtype"] = cfg["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    # streamed: one tensor in memory at a time (a full-vocabulary E2B is several GB of float32)
    specs = []
    for m in ckpt.modules.values():
        specs.append((f"{m.name}.weight", "F32", (m.rows, m.width)))
    quant_keys = {k for m in ckpt.modules.values() for k in m.tensors()}
    for key, e in ckpt.entries.items():
        if key in quant_keys or key.endswith(("k_cache_scale", "v_cache_scale")):
            continue
        specs.append((key, "F32" if e.dtype in ("F32", "F16", "BF16", "F64") else e.dtype, tuple(e.shape)))
    order = {k: i for i, (k, _, _) in enumerate(specs)}
    w = SafetensorsStreamWriter(out_dir / "model.safetensors", specs,
                                metadata={"format": "pt", "edgekit": "dequantized-qat"})
    pending: dict[str, np.ndarray] = {}
    for k, v in iter_dequantized_state(ckpt):  # yields in spec order
        if order[k] != w._next:
            pending[k] = v
            continue
        w.write(k, v)
        while w._next < len(specs) and specs[w._next][0] in pending:
            w.write(specs[w._next][0], pending.pop(specs[w._next][0]))
    w.close()
    src = Path(tokenizer_from) if tokenizer_from else ckpt.path
    for f in src.iterdir():
        if f.suffix in (".json", ".model", ".txt", ".jinja") and f.name not in ("config.json",) and not f.name.endswith(".safetensors.index.json"):
            shutil.copy(f, out_dir / f.name)
    return out_dir


# --------------------------------------------------------------------------- writing


CLIP_RATIOS = tuple(np.round(np.linspace(0.5, 1.0, 11), 3))


def quantize_rows(w: np.ndarray, bits: int, blocks: int = 1, *, clip_search: bool = True,
                  narrow_int8: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row (per row-block) quantization.

    The scale of each row (block) is ``r * absmax / qmax`` with the clipping ratio ``r`` in
    :data:`CLIP_RATIOS` that minimises the squared error (``clip_search=False``: r = 1, plain
    min-max), the way QAT recipes learn clipped step sizes. Returns (int8 values in
    [qmin, qmax], float32 scales of shape (rows, blocks)); ``dequantize(*quantize_rows(w, b))``
    is exact in float32.
    """
    w = np.asarray(w, np.float32)
    rows, width = w.shape
    qmin, qmax = qrange(bits)
    if bits == 8 and narrow_int8:
        qmin = -127  # LiteRT's int8 weights are narrow-range; a LiteRT-targeted QAT stays inside
    wb = w.reshape(rows, blocks, width // blocks)
    absmax = np.maximum(np.abs(wb).max(axis=-1), 1e-8)
    best_s = (absmax / np.float32(qmax)).astype(np.float32)
    if clip_search:
        best_err = np.full(absmax.shape, np.inf, np.float64)
        for r in CLIP_RATIOS:
            s = (np.float32(r) * absmax / np.float32(qmax)).astype(np.float32)
            d = np.clip(np.rint(wb / s[..., None]), qmin, qmax) * s[..., None]
            err = ((d - wb) ** 2).sum(axis=-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s = np.where(better, s, best_s)
    q = np.clip(np.rint(wb / best_s[..., None]), qmin, qmax).astype(np.int8)
    return q.reshape(rows, width), best_s.astype(np.float32)


class SafetensorsStreamWriter:
    """Write a safetensors file one tensor at a time (the header is computed up front from
    declared dtypes and shapes, so memory holds one tensor at most)."""

    _NP = {"F32": np.float32, "U8": np.uint8, "I8": np.int8, "F16": np.float16, "I64": np.int64, "I32": np.int32}

    def __init__(self, path, specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None = None):
        self.path = Path(path)
        self.specs = list(specs)
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        off = 0
        for key, dtype, shape in self.specs:
            n = math.prod(shape) * _ST_ITEMSIZE[dtype]
            header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)
        self._fh = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, key: str, arr: np.ndarray) -> None:
        k, dtype, shape = self.specs[self._next]
        if k != key:
            raise ValueError(f"expected tensor {k} next, got {key}")
        a = np.ascontiguousarray(np.asarray(arr).astype(self._NP[dtype], copy=False)).reshape(shape)
        self._fh.write(a.tobytes())
        self._next += 1

    def close(self) -> None:
        self._fh.close()
        if self._next != len(self.specs):
            raise ValueError(f"only {self._next} of {len(self.specs)} tensors written")
