"""Checkpoints in the Hugging Face layout: make shape-exact random ones, validate given ones.

``make_random_checkpoint`` builds the model on the meta device and materializes one
module at a time (transformers' own initializer, fixed seed), streaming each tensor into
a single ``model.safetensors``, so peak memory stays near the largest module, not the
model. ``load_checkpoint`` validates a folder *before* any weight is loaded: config,
model type and size, every tensor's shape from the safetensors headers (which are
checked against the file size), tokenizer files; it returns a :class:`CheckpointInfo`
with the weight files' sha256 and dtypes.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgekit.errors import CheckpointError, OutputNotWritable, ResourceError, UsageError
from edgekit.fsutil import atomic_dir, atomic_write_json, sha256_file
from edgekit.models.presets import (
    CONFIG_FILE,
    TOKENIZER_FILE_SETS,
    Preset,
    get_preset,
    preset_for_config,
    width_div_for_config,
)

EDGEKIT_META_FILE = "edgekit_checkpoint.json"
META_SCHEMA = 1
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
# Embedding tables above this many elements are initialized and written in row blocks.
CHUNKED_INIT_MIN_NUMEL = 1 << 25

# safetensors dtype code -> bytes per element
ST_DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_TORCH_TO_ST = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}

# Tensors a valid checkpoint may hold beyond the model's own parameters: KV-shared
# layers' k/v projections (published checkpoints keep them; transformers ignores them),
# and the QAT format's scales.
_ALLOWED_EXTRA = [
    re.compile(r"\.self_attn\.(k_proj|v_proj)\.weight$"),
    re.compile(r"\.self_attn\.(k_norm|v_norm)\.weight$"),
    re.compile(r"\.(k_cache_scale|v_cache_scale)$"),
    re.compile(r"\.(weight_scale|embedding_scale|input_activation_scale|output_activation_scale)$"),
    re.compile(r"rqv2_muls"),
]

# Gemma special tokens at their published ids; placed into the synthetic tokenizer.
_GEMMA_SPECIALS: dict[int, str] = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>",
    105: "<start_of_turn>", 106: "<end_of_turn>",
    255_999: "<start_of_image>", 256_000: "<start_of_audio>",
    258_880: "<image_soft_token>", 258_881: "<audio_soft_token>", 258_882: "<end_of_image>",
    258_883: "<end_of_audio>", 258_884: "<video_soft_token>",
}


# ============================================================ safetensors headers
@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors code: F32, BF16, U8, ...
    shape: tuple[int, ...]
    file: str


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorEntry]:
    """Read and check one safetensors file's header without touching tensor data.

    Checks the header length against the file size, that the header is a JSON object,
    and that every tensor's byte range matches its dtype and shape and lies inside the
    file (a truncated file is reported with the first tensor that runs past its end).
    """
    path = Path(path)
    fname = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)",
                    hint="re-download or re-create the checkpoint",
                )
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{path}: corrupt safetensors header (header length {n} does not fit a {size}-byte file)",
                    hint="the file is truncated or not safetensors; re-download or re-create the checkpoint",
                )
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})", hint="check the file's permissions") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: corrupt safetensors header (not valid JSON: {exc})",
            hint="re-download or re-create the checkpoint",
        ) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)",
                              hint="re-download or re-create the checkpoint")
    data_size = size - 8 - n
    out: dict[str, TensorEntry] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = meta["dtype"]
            shape = tuple(int(d) for d in meta["shape"])
            start, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}",
                                  hint="re-download or re-create the checkpoint") from exc
        if dtype not in ST_DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name} has unknown dtype {dtype!r}",
                                  hint="re-download or re-create the checkpoint")
        nbytes = math.prod(shape) * ST_DTYPE_SIZES[dtype]
        if start < 0 or end - start != nbytes:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: tensor {name} spans {end - start} bytes, "
                f"its dtype and shape need {nbytes}",
                hint="re-download or re-create the checkpoint",
            )
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name} ends at byte {end} of the data but the file holds "
                f"only {data_size}",
                hint="the download or copy was interrupted; re-download or re-create the checkpoint",
            )
        out[name] = TensorEntry(name, dtype, shape, fname)
    return out


def write_safetensors(path: str | os.PathLike, entries: list[tuple[str, str, tuple[int, ...]]],
                      tensors: Iterable[tuple[str, Any]], metadata: Mapping[str, str] | None = None) -> None:
    """Stream tensors into one safetensors file, one tensor in memory at a time.

    ``entries`` lists (name, dtype code, shape) in file order: the header is written
    first from it; ``tensors`` must then yield (name, torch tensor) in the same order.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * ST_DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)  # align the data section to 8 bytes
    expected = iter(entries)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, tensor in tensors:
            ename, dtype, shape = next(expected)
            if name != ename:
                raise RuntimeError(f"tensor stream out of order at {name} (expected {ename})")
            # a tensor, or a ChunkedTensor yielding row blocks (for tables too big to hold twice)
            parts = tensor.chunks() if isinstance(tensor, ChunkedTensor) else (tensor,)
            rows = 0
            for part in parts:
                if tuple(part.shape[1:]) != tuple(shape[1:]) or _TORCH_TO_ST[_dtype_name(part)] != dtype:
                    raise RuntimeError(f"tensor {name}: got {_dtype_name(part)} {tuple(part.shape)}, "
                                       f"header says {dtype} {tuple(shape)}")
                rows += part.shape[0] if part.dim() else 1
                f.write(part.detach().contiguous().view(-1).view(_uint8()).numpy().data)
            if rows != (shape[0] if shape else 1):
                raise RuntimeError(f"tensor {name}: wrote {rows} rows, header says {tuple(shape)}")
        if next(expected, None) is not None:
            raise RuntimeError("tensor stream ended early")
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class ChunkedTensor:
    """A 2-D random-normal table produced block by block (rows), never whole in memory."""

    shape: tuple[int, int]
    std: float
    seed: int
    torch_dtype: Any
    zero_row: int | None = None
    rows_per_chunk: int = 0

    def chunks(self):
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        rows, cols = self.shape
        step = self.rows_per_chunk or max(1, (16 << 20) // max(cols, 1))  # ~64 MB of float32
        for start in range(0, rows, step):
            n = min(step, rows - start)
            block = torch.empty(n, cols, dtype=torch.float32).normal_(0.0, self.std, generator=gen)
            if self.zero_row is not None and start <= self.zero_row < start + n:
                block[self.zero_row - start].zero_()
            yield block.to(self.torch_dtype)


def _uint8():
    import torch

    return torch.uint8


def _dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


# ============================================================ random checkpoints
def make_random_checkpoint(
    preset: str | Preset,
    out_dir: str | os.PathLike,
    seed: int = 0,
    width_div: int = 1,
    dtype: str = "float32",
    *,
    reuse: bool = False,
) -> Path:
    """Write a shape-exact random-weight checkpoint of ``preset`` to ``out_dir``.

    Hugging Face layout: ``config.json``, ``model.safetensors`` (tied lm_head omitted),
    tokenizer files (the shipped tokenizer for tiny; a deterministic synthetic byte-level
    tokenizer of the full vocabulary for e2b/e4b, marked as synthetic), and
    ``edgekit_checkpoint.json`` recording seed, width_div, dtype and weight sha256.
    Same preset, seed, width_div and dtype give byte-identical files. The folder is
    built under a temporary name and renamed into place when complete.
    With ``reuse``, an ``out_dir`` that already holds the same random checkpoint (same preset,
    seed, width_div, dtype, torch version, weight shapes) is returned as it is.
    """
    import torch

    p = get_preset(preset)
    if dtype not in _TORCH_TO_ST:
        raise UsageError(f"checkpoint dtype must be one of {', '.join(sorted(_TORCH_TO_ST))}, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed!r}")
    if reuse and _holds_random_checkpoint(p, Path(out_dir), seed, width_div, dtype):
        return Path(out_dir)
    t0 = time.monotonic()
    model = p.meta_model(width_div)
    torch_dtype = getattr(torch, dtype)
    st = _TORCH_TO_ST[dtype]
    shapes = p.expected_shapes(width_div)
    # state_dict order; dtype of every tensor is the checkpoint dtype (buffers included)
    entries = [(name, st, shape) for name, shape in shapes.items()]
    out_dir = Path(out_dir)
    need = random_checkpoint_bytes(p, width_div, dtype)
    _check_free_space(out_dir, need)
    with atomic_dir(out_dir) as tmp:
        try:
            write_safetensors(
                tmp / WEIGHTS_FILE,
                entries,
                _materialize(model, set(shapes), seed, torch_dtype),
                metadata={"format": "pt", "edgekit": "random", "preset": p.name, "seed": str(seed),
                          "width_div": str(width_div)},
            )
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceError(f"disk full while writing {out_dir / WEIGHTS_FILE} "
                                    f"({need / 1e9:.2f} GB needed)") from exc
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise OutputNotWritable(f"cannot write {out_dir}: {exc.strerror}") from exc
            raise
        (tmp / CONFIG_FILE).write_text(
            json.dumps(p.config_dict(width_div, dtype=dtype), indent=2, sort_keys=True) + "\n")
        _write_generation_config(p, width_div, tmp)
        synthetic = write_tokenizer(p, tmp) == "synthetic"
        counts = p.param_counts(width_div)
        meta = {
            "schema": META_SCHEMA,
            "kind": "random_weights",
            "preset": p.name,
            "seed": seed,
            "width_div": width_div,
            "dtype": dtype,
            "init": "transformers Gemma4PreTrainedModel._init_weights, torch.manual_seed(seed), module order; "
                    f"embedding tables over {CHUNKED_INIT_MIN_NUMEL} elements: normal(0, initializer_range) "
                    "from a per-tensor generator, in row blocks",
            "torch_version": torch.__version__,
            "param_count": counts["total"],
            "synthetic_tokenizer": synthetic,
            "weights": {WEIGHTS_FILE: sha256_file(tmp / WEIGHTS_FILE)},
            "seconds": round(time.monotonic() - t0, 3),
        }
        atomic_write_json(tmp / EDGEKIT_META_FILE, meta)
        _make_readable(tmp)
    return out_dir


def random_checkpoint_bytes(preset: str | Preset, width_div: int = 1, dtype: str = "float32") -> int:
    """Bytes of the weight file :func:`make_random_checkpoint` writes (header excluded)."""
    p = get_preset(preset)
    size = ST_DTYPE_SIZES[_TORCH_TO_ST[dtype]]
    return sum(math.prod(s) for s in p.expected_shapes(width_div).values()) * size


def _check_free_space(out_dir: Path, need: int) -> None:
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    margin = 64 << 20
    if free < need + margin:
        raise ResourceError(
            f"not enough disk for the random checkpoint in {out_dir}: needs {need / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free", hint="free disk space, choose another folder, or use a larger --width-div")


def ensure_random_checkpoint(preset: str | Preset, out_dir: str | os.PathLike, **options: Any) -> Path:
    """``make_random_checkpoint(preset, out_dir, reuse=True, **options)``: reuse ``out_dir`` if it
    holds the same random checkpoint, otherwise (re)make it."""
    return make_random_checkpoint(preset, out_dir, reuse=True, **options)


def _holds_random_checkpoint(p: Preset, out: Path, seed: int, width_div: int, dtype: str) -> bool:
    """Does ``out`` hold the random checkpoint these settings make (torch version and weight shapes included)?"""
    import torch

    meta_path = out / EDGEKIT_META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        same = (
            meta.get("schema") == META_SCHEMA and meta.get("kind") == "random_weights"
            and meta.get("preset") == p.name and meta.get("seed") == seed
            and meta.get("width_div") == width_div and meta.get("dtype") == dtype
            and meta.get("torch_version") == torch.__version__
        )
        weights = out / WEIGHTS_FILE
        if same and weights.is_file():
            header = read_safetensors_header(weights)
            if {k: e.shape for k, e in header.items()} == p.expected_shapes(width_div):
                return True
    except (OSError, ValueError, CheckpointError, AttributeError):
        pass
    return False


def _make_readable(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give the result the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def _materialize(model, keep: set[str], seed: int, torch_dtype) -> Iterable[tuple[str, Any]]:
    """Yield (state_dict name, tensor) module by module, each initialized then freed."""
    import torch
    from transformers import PreTrainedModel

    torch.manual_seed(seed)
    owners: list[tuple[str, Any]] = []  # (prefix, PreTrainedModel) for the right _init_weights
    for mname, mod in model.named_modules():
        if isinstance(mod, PreTrainedModel):
            owners.append((mname, mod))

    def owner_of(mname: str):
        best = model
        blen = -1
        for prefix, m in owners:
            if (prefix == "" or mname == prefix or mname.startswith(prefix + ".")) and len(prefix) > blen:
                best, blen = m, len(prefix)
        return best

    for mname, mod in model.named_modules():
        direct = [(n, t) for n, t in list(mod._parameters.items()) + list(mod._buffers.items()) if t is not None]
        if not direct:
            continue
        keys = [f"{mname}.{n}" if mname else n for n, _ in direct]
        if not any(k in keep for k in keys):  # e.g. lm_head tied to the embedding: not written
            continue
        if (isinstance(mod, torch.nn.Embedding) and mod.weight.numel() > CHUNKED_INIT_MIN_NUMEL
                and [k for k in keys if k in keep] == [f"{mname}.weight"]):
            # the same init as transformers (normal(0, initializer_range), padding row zero), drawn
            # from a per-tensor generator in row blocks: the table is never whole in memory
            key = f"{mname}.weight"
            std = getattr(owner_of(mname).config, "initializer_range", None) or 0.02
            sub_seed = (seed * 1_000_003 + zlib.crc32(key.encode())) & 0x7FFF_FFFF_FFFF_FFFF
            yield key, ChunkedTensor(tuple(mod.weight.shape), float(std), sub_seed, torch_dtype, mod.padding_idx)
            continue
        mod.to_empty(device="cpu", recurse=False)
        with torch.no_grad():
            owner_of(mname)._init_weights(mod)
        for (n, _), key in zip(direct, keys):
            t = getattr(mod, n)
            if key in keep:
                yield key, t.detach().to(torch_dtype)
        mod.to_empty(device="meta", recurse=False)


def _write_generation_config(p: Preset, width_div: int, out: Path) -> None:
    """generation_config.json as save_pretrained writes it (bos/eos/pad ids)."""
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(p.config(width_div)).save_pretrained(str(out))


def write_tokenizer(preset: str | Preset, out: str | os.PathLike) -> str:
    """Put ``preset``'s tokenizer files into ``out``; returns "shipped" or "synthetic".

    tiny: the shipped tokenizer; e2b/e4b: the deterministic synthetic tokenizer of the full
    vocabulary (no real Gemma tokenizer is available offline).
    """
    p = get_preset(preset)
    out = Path(out)
    if p.tokenizer_dir is not None:
        for fname in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            src = p.tokenizer_dir / fname
            if src.exists():
                shutil.copyfile(src, out / fname)
        return "shipped"
    write_synthetic_tokenizer(out, p.vocab_size)
    return "synthetic"


_write_tokenizer = write_tokenizer  # old private name (edgekit/builder/qat.py uses it)


def write_synthetic_tokenizer(out: str | os.PathLike, vocab_size: int) -> None:
    """A deterministic byte-level tokenizer with exactly ``vocab_size`` ids (no merges).

    Gemma's special tokens sit at their published ids, the 256 byte symbols after the
    first specials, the rest are ``<unused_N>`` placeholders. It encodes any text (one
    token per byte) so random-weight bundles can be driven end to end; it is not
    Gemma's tokenizer and is marked ``"edgekit_synthetic": true``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    out = Path(out)
    vocab: dict[str, int] = {}
    specials = {i: s for i, s in _GEMMA_SPECIALS.items() if i < vocab_size}
    byte_syms = pre_tokenizers.ByteLevel.alphabet()
    byte_syms.sort()
    next_id = 0
    bi = iter(byte_syms)
    for i in range(vocab_size):
        if i in specials:
            vocab[specials[i]] = i
        elif i >= 16 and (sym := next(bi, None)) is not None:
            vocab[sym] = i
        else:
            vocab[f"<unused_{i}>"] = i
        next_id = i
    del next_id
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials.values()))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"synthetic tokenizer has {tok.get_vocab_size()} ids, wanted {vocab_size}")
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 131072,
        "edgekit_synthetic": True,
        "edgekit_note": "synthetic byte-level tokenizer of Gemma's vocabulary size; not Gemma's tokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    smap = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n")


# ============================================================ validation
@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_checkpoint` found; no weights are loaded."""

    path: Path
    preset: str
    width_div: int
    config: dict[str, Any]
    weight_files: tuple[str, ...]
    weights_sha256: dict[str, str]
    dtypes: dict[str, int]  # safetensors dtype code -> tensor count
    float_dtype: str | None  # "float32" / "bfloat16" / "float16" (dominant float dtype)
    num_tensors: int
    num_params: int  # elements stored (packed for QAT)
    tokenizer_files: tuple[str, ...]
    has_vision: bool
    has_audio: bool
    quantization_config: dict[str, Any] | None
    unexpected: tuple[str, ...] = ()  # tolerated extras (KV-shared k/v projections, scales)
    edgekit_meta: dict[str, Any] | None = None  # edgekit_checkpoint.json, if present
    synthetic_tokenizer: bool = False

    @property
    def is_qat(self) -> bool:
        return bool(self.quantization_config) and self.quantization_config.get("quant_method") == "gemma"

    @property
    def is_random(self) -> bool:
        return bool(self.edgekit_meta) and self.edgekit_meta.get("kind") == "random_weights"

    def source_record(self) -> dict[str, Any]:
        """Provenance for manifests."""
        rec: dict[str, Any] = {
            "kind": "random_weights" if self.is_random else "checkpoint",
            "path": str(self.path),
            "preset": self.preset,
            "width_div": self.width_div,
            "weights_sha256": dict(self.weights_sha256),
            "float_dtype": self.float_dtype,
            "qat": self.is_qat,
            "synthetic_tokenizer": self.synthetic_tokenizer,
        }
        if self.is_random:
            rec["seed"] = self.edgekit_meta.get("seed")
        return rec


def load_checkpoint(path: str | os.PathLike, preset: str | Preset, *, hash_weights: bool = True) -> CheckpointInfo:
    """Validate a Hugging Face checkpoint folder against ``preset``; raise CheckpointError.

    Order: folder, config.json, model_type, preset/size match, tokenizer files, weight
    files and their headers, every tensor's name and shape. Only then are the weight
    files hashed (``hash_weights``).
    """
    p = get_preset(preset)
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"checkpoint folder {root} does not exist",
                              hint="pass --checkpoint DIR with a Hugging Face model folder, or use --random-weights")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root} is not a folder",
                              hint="pass the folder holding config.json and *.safetensors")
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{root}: no {CONFIG_FILE}",
                              hint="a Hugging Face checkpoint folder needs config.json next to its safetensors")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})",
                              hint="repair or re-download config.json") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object", hint="repair or re-download config.json")

    mt = config.get("model_type")
    if mt != "gemma4":
        extra = (" (a text-only Gemma4ForCausalLM checkpoint; edgekit needs the multimodal "
                 "Gemma4ForConditionalGeneration layout)") if mt == "gemma4_text" else ""
        raise CheckpointError(f"{cfg_path}: model_type is {mt!r}, expected 'gemma4'{extra}",
                              hint=f"pass a Gemma 4 {p.name.upper()} checkpoint folder")
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError(f"{cfg_path}: no text_config object", hint="repair or re-download config.json")

    matched = preset_for_config(config)
    if matched is None:
        raise CheckpointError(
            f"{cfg_path}: architecture ({text.get('num_hidden_layers')} layers, vocab {text.get('vocab_size')}) "
            f"matches no known preset; expected {p.name}",
            hint=f"pass a Gemma 4 {p.name.upper()} checkpoint folder",
        )
    if matched.name != p.name:
        raise CheckpointError(
            f"{root} is a {matched.name} checkpoint ({matched.num_layers} layers), not {p.name}",
            hint=f"build it as `{matched.name}` or pass a {p.name} checkpoint",
        )
    wd = width_div_for_config(p, config)
    if wd is None:
        raise CheckpointError(
            f"{cfg_path}: hidden_size {text.get('hidden_size')} is not {p.name}'s {p.text['hidden_size']} "
            "divided by a whole number", hint=f"pass a {p.name} checkpoint")
    try:
        want_text = p.text_kwargs(wd)
    except Exception as exc:  # width not derivable from this preset
        raise CheckpointError(f"{cfg_path}: widths do not match {p.name} at width_div {wd}: {exc}",
                              hint=f"pass a {p.name} checkpoint") from exc
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "hidden_size_per_layer_input", "vocab_size_per_layer_input", "use_double_wide_mlp"):
        if key in text and text[key] != want_text[key]:
            raise CheckpointError(
                f"{cfg_path}: text_config.{key} is {text[key]!r}, {p.name}"
                + (f" at width_div {wd}" if wd > 1 else "") + f" has {want_text[key]!r}",
                hint=f"pass a {p.name} checkpoint")
    has_vision = isinstance(config.get("vision_config"), dict)
    has_audio = isinstance(config.get("audio_config"), dict)

    tok_files = _find_tokenizer(root)
    _check_tokenizer_vocab(root, int(text.get("vocab_size") or 0))
    weight_files = _weight_files(root)
    found: dict[str, TensorEntry] = {}
    for wf in weight_files:
        for name, entry in read_safetensors_header(root / wf).items():
            if name in found:
                raise CheckpointError(f"{root}: tensor {name} appears in both {found[name].file} and {wf}",
                                      hint="remove the duplicate weight file")
            found[name] = entry

    qcfg = config.get("quantization_config")
    qcfg = qcfg if isinstance(qcfg, dict) else None
    is_qat = bool(qcfg) and qcfg.get("quant_method") == "gemma"
    expected = _expected_for(p, wd, has_vision, has_audio)
    unexpected = _check_tensors(root, p, wd, expected, found, is_qat)

    dtypes: dict[str, int] = {}
    nparams = 0
    for e in found.values():
        dtypes[e.dtype] = dtypes.get(e.dtype, 0) + 1
        nparams += math.prod(e.shape)
    floats = {d: n for d, n in dtypes.items() if d in FLOAT_DTYPES}
    float_dtype = FLOAT_DTYPES[max(floats, key=floats.get)] if floats else None
    shas = {wf: sha256_file(root / wf) for wf in weight_files} if hash_weights else {}
    meta = None
    mp = root / EDGEKIT_META_FILE
    if mp.is_file():
        try:
            meta = json.loads(mp.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = None
    synthetic = False
    tc = root / "tokenizer_config.json"
    if tc.is_file():
        try:
            synthetic = bool(json.loads(tc.read_text(encoding="utf-8")).get("edgekit_synthetic", False))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            synthetic = False
    return CheckpointInfo(
        path=root.resolve(),
        preset=p.name,
        width_div=wd,
        config=config,
        weight_files=tuple(weight_files),
        weights_sha256=shas,
        dtypes=dict(sorted(dtypes.items())),
        float_dtype=float_dtype,
        num_tensors=len(found),
        num_params=nparams,
        tokenizer_files=tok_files,
        has_vision=has_vision,
        has_audio=has_audio,
        quantization_config=qcfg,
        unexpected=tuple(sorted(unexpected)),
        edgekit_meta=meta,
        synthetic_tokenizer=synthetic,
    )


def _find_tokenizer(root: Path) -> tuple[str, ...]:
    for files in TOKENIZER_FILE_SETS:
        if all((root / f).is_file() for f in files):
            extras = [f for f in ("tokenizer_config.json", "special_tokens_map.json") if (root / f).is_file()]
            return tuple(files) + tuple(extras)
    raise CheckpointError(
        f"{root}: no tokenizer ({' or '.join(s[0] for s in TOKENIZER_FILE_SETS)})",
        hint="copy the model's tokenizer files into the checkpoint folder",
    )


def _check_tokenizer_vocab(root: Path, vocab_size: int, max_bytes: int = 64 << 20) -> None:
    """A tokenizer.json whose ids reach past the model's vocabulary would index out of range."""
    tj = root / "tokenizer.json"
    if vocab_size <= 0 or not tj.is_file() or tj.stat().st_size > max_bytes:
        return
    try:
        data = json.loads(tj.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{tj}: not valid JSON ({exc})", hint="repair or re-download the tokenizer") from exc
    ids: list[int] = []
    vocab = (data.get("model") or {}).get("vocab") if isinstance(data, dict) else None
    if isinstance(vocab, dict):
        ids.extend(v for v in vocab.values() if isinstance(v, int))
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        ids.append(len(vocab) - 1)
    for tok in (data.get("added_tokens") or []) if isinstance(data, dict) else []:
        if isinstance(tok, dict) and isinstance(tok.get("id"), int):
            ids.append(tok["id"])
    if ids and max(ids) >= vocab_size:
        raise CheckpointError(
            f"{tj}: token ids reach {max(ids)} but the model's vocabulary has {vocab_size} entries",
            hint="the tokenizer belongs to another model; copy the model's own tokenizer files")


def _weight_files(root: Path) -> list[str]:
    index = root / INDEX_FILE
    if index.is_file():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(wm.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: corrupt index ({exc})", hint="repair or re-download the index") from exc
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise CheckpointError(f"{root}: weight file {missing[0]} named in {INDEX_FILE} is missing",
                                  hint="re-download the missing shard")
        return files
    files = sorted(f.name for f in root.glob("*.safetensors") if f.is_file())
    if not files:
        hint = ("convert it to safetensors first" if any(root.glob("*.bin")) or any(root.glob("*.pt"))
                else "the folder needs the model's *.safetensors files")
        raise CheckpointError(f"{root}: no *.safetensors weight files", hint=hint)
    return files


def _expected_for(p: Preset, wd: int, vision: bool, audio: bool) -> dict[str, tuple[int, ...]]:
    shapes = p.expected_shapes(wd)
    out = {}
    for k, v in shapes.items():
        if not vision and (".vision_tower." in f".{k}" or ".embed_vision." in f".{k}"):
            continue
        if not audio and (".audio_tower." in f".{k}" or ".embed_audio." in f".{k}"):
            continue
        out[k] = v
    return out


def _check_tensors(root: Path, p: Preset, wd: int, expected: dict[str, tuple[int, ...]],
                   found: dict[str, TensorEntry], is_qat: bool) -> list[str]:
    where = f"{p.name}" + (f" at width_div {wd}" if wd > 1 else "")
    for name, shape in expected.items():
        e = found.get(name)
        if e is None and is_qat and name.endswith(".weight"):
            e = found.get(name[: -len(".weight")] + ".embedding_quantized")
        if e is None:
            if name.endswith(("_inv_freq", ".embed_scale")) or _is_buffer_like(name):
                continue
            n_missing = sum(1 for k in expected if k not in found)
            raise CheckpointError(
                f"{root}: tensor {name} is missing from the weights ({n_missing} of {len(expected)} expected "
                f"tensors missing)", hint=f"the checkpoint is incomplete or not {where}")
        if e.shape == shape:
            continue
        if is_qat and e.dtype in ("U8", "I8") and len(shape) == 2 and len(e.shape) == 2 and e.shape[0] == shape[0] \
                and e.shape[1] in (shape[1], (shape[1] + 1) // 2, (shape[1] + 3) // 4):
            continue  # packed int8/int4/int2 rows of the QAT format
        raise CheckpointError(
            f"{root / e.file}: tensor {name} has shape {list(e.shape)}, {where} needs {list(shape)}",
            hint=f"the checkpoint does not match preset {where}")
    unexpected = []
    for name in found:
        if name in expected:
            continue
        if is_qat and name.endswith(".embedding_quantized"):
            continue
        if name == "lm_head.weight":
            unexpected.append(name)  # untied head (the mobile checkpoints untie it)
            continue
        if any(r.search(name) for r in _ALLOWED_EXTRA):
            unexpected.append(name)
            continue
        raise CheckpointError(f"{root / found[name].file}: unexpected tensor {name} (not part of {where})",
                              hint=f"the checkpoint does not match preset {where}")
    return unexpected


def _is_buffer_like(name: str) -> bool:
    # persistent buffers transformers recreates on load (e.g. layer_scalar, clipping bounds)
    return bool(re.search(r"(layer_scalar|input_min|input_max|output_min|output_max|softcap|inv_timescales)$",
                          name))
