"""Model presets: Gemma 4 E2B, E4B (exact published shapes) and ``tiny`` (same family, shrunk).

A :class:`Preset` turns into a transformers ``Gemma4Config`` (multimodal
``Gemma4ForConditionalGeneration``: text + vision + audio) with :meth:`Preset.config`.
Every text field is set explicitly: ``Gemma4TextConfig``'s defaults are neither E2B
nor E4B (see ../shared/notes/gemma4.md).

``width_div`` divides the widths (hidden, intermediate, head dims, per-layer input
width, tower widths) while keeping the vocabulary, the layer count, the layer types and
the KV-sharing structure, so a machine that cannot hold the full model can still build
an architecture-faithful one. Parameter counts are computed from the model built on the
meta device (no memory is allocated), never copied from a table.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgekit.errors import UsageError

ASSETS = Path(__file__).resolve().parent / "assets"

ROPE_PARAMETERS: dict[str, dict[str, Any]] = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}

# Files a Hugging Face checkpoint folder must hold for edgekit to use it.
CONFIG_FILE = "config.json"
WEIGHT_GLOB = "*.safetensors"
TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),  # tokenizers-library file (fast tokenizer)
    ("tokenizer.model",),  # SentencePiece model
)
TOKENIZER_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")


def layer_pattern(num_layers: int, period: int) -> list[str]:
    """``period - 1`` sliding layers then one full-attention layer, repeated."""
    return ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(num_layers)]


def _div(value: int, k: int, what: str, preset: str, multiple: int = 1) -> int:
    if value % k or (value // k) % multiple:
        raise UsageError(
            f"--width-div {k} does not divide {preset}'s {what} ({value})"
            + (f" into a multiple of {multiple}" if multiple > 1 else ""),
            hint="use a width divisor such as 1, 2, 4 or 8",
        )
    return value // k


@dataclass(frozen=True)
class Preset:
    """One model shape edgekit knows how to build.

    ``text``, ``vision`` and ``audio`` are the full keyword sets of
    ``Gemma4TextConfig`` / ``Gemma4VisionConfig`` / ``Gemma4AudioConfig`` at width_div 1;
    ``top`` holds the ``Gemma4Config`` fields (multimodal token ids).
    """

    name: str
    description: str
    text: Mapping[str, Any]
    vision: Mapping[str, Any]
    audio: Mapping[str, Any]
    top: Mapping[str, Any] = field(default_factory=dict)
    default_scheme: str = "wNa8o8"
    # prefill signature and KV-cache lengths a build uses unless told: litert-torch's own
    # export defaults (ExportableModuleConfig: prefill_lengths [128], cache_length 4096),
    # which published Gemma 4 LiteRT-LM bundles and peers (hf-to-litertlm) use; tiny keeps small ones
    default_prefill: int = 128
    default_cache_length: int = 4096
    bit_map: str = "e2b"  # which published bit map the wNa8o8 scheme follows
    tokenizer_dir: Path | None = None  # shipped tokenizer (tiny); None: synthetic for random weights
    shipped_checkpoint_dir: Path | None = None  # folder with config.json (+ weights once trained)

    def __hash__(self) -> int:  # the mappings are not hashable; a preset is its name
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Preset({self.name!r})"

    # ----------------------------------------------------------------- structure
    @property
    def num_layers(self) -> int:
        return int(self.text["num_hidden_layers"])

    @property
    def layer_types(self) -> tuple[str, ...]:
        return tuple(self.text["layer_types"])

    @property
    def full_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == "full_attention")

    @property
    def first_kv_shared_layer(self) -> int:
        return self.num_layers - int(self.text["num_kv_shared_layers"])

    @property
    def decode_layers(self) -> tuple[int, ...]:
        """Indices of the KV-shared layers (they reuse an earlier layer's KV cache).

        Their MLPs are the "2-bit decode layers" of the wNa8o8 map (double-wide when
        ``use_double_wide_mlp``).
        """
        n = int(self.text["num_kv_shared_layers"])
        return tuple(range(self.num_layers - n, self.num_layers)) if n else ()

    @property
    def vocab_size(self) -> int:
        return int(self.text["vocab_size"])

    @property
    def has_double_wide_mlp(self) -> bool:
        return bool(self.text["use_double_wide_mlp"]) and bool(self.decode_layers)

    # --------------------------------------------------------------- configs
    def text_kwargs(self, width_div: int = 1) -> dict[str, Any]:
        """Keyword arguments for ``Gemma4TextConfig`` (``global_head_dim`` is init-only)."""
        k = _check_width_div(width_div)
        t = copy.deepcopy(dict(self.text))
        if k > 1:
            t["hidden_size"] = _div(t["hidden_size"], k, "hidden_size", self.name, 2)
            t["intermediate_size"] = _div(t["intermediate_size"], k, "intermediate_size", self.name)
            t["head_dim"] = _div(t["head_dim"], k, "head_dim", self.name, 2)
            t["global_head_dim"] = _div(t["global_head_dim"], k, "global_head_dim", self.name, 8)
            t["hidden_size_per_layer_input"] = _div(
                t["hidden_size_per_layer_input"], k, "hidden_size_per_layer_input", self.name
            )
        return t

    def vision_kwargs(self, width_div: int = 1) -> dict[str, Any]:
        k = _check_width_div(width_div)
        v = copy.deepcopy(dict(self.vision))
        if k > 1:
            v["hidden_size"] = _div(v["hidden_size"], k, "vision hidden_size", self.name)
            v["intermediate_size"] = _div(v["intermediate_size"], k, "vision intermediate_size", self.name)
            v["head_dim"] = _div(v["head_dim"], k, "vision head_dim", self.name, 4)
        return v

    def audio_kwargs(self, width_div: int = 1) -> dict[str, Any]:
        k = _check_width_div(width_div)
        a = copy.deepcopy(dict(self.audio))
        if k > 1:
            a["hidden_size"] = _div(a["hidden_size"], k, "audio hidden_size", self.name, a["num_attention_heads"])
            a["output_proj_dims"] = _div(a["output_proj_dims"], k, "audio output_proj_dims", self.name)
        return a

    def config(self, width_div: int = 1, *, text_only: bool = False):
        """The transformers ``Gemma4Config`` of this preset (towers dropped if ``text_only``)."""
        from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

        text = Gemma4TextConfig(**self.text_kwargs(width_div))
        vision = None if text_only else Gemma4VisionConfig(**self.vision_kwargs(width_div))
        audio = None if text_only else Gemma4AudioConfig(**self.audio_kwargs(width_div))
        cfg = Gemma4Config(
            text_config=text,
            vision_config=vision,
            audio_config=audio,
            tie_word_embeddings=bool(self.text["tie_word_embeddings"]),
            **dict(self.top),
        )
        cfg.architectures = ["Gemma4ForConditionalGeneration"]
        return cfg

    def text_config(self, width_div: int = 1):
        """The text model alone (``Gemma4TextConfig``, model_type ``gemma4_text``).

        The experts implementation is set to eager: litert-torch's exporter refuses a
        ``Gemma4ForCausalLM`` otherwise ("does not support setting experts implementation").
        """
        from transformers import Gemma4TextConfig

        cfg = Gemma4TextConfig(**self.text_kwargs(width_div), experts_implementation="eager")
        cfg.architectures = ["Gemma4ForCausalLM"]
        return cfg

    def config_dict(self, width_div: int = 1, dtype: str | None = "float32") -> dict[str, Any]:
        """``config.json`` content, exactly what ``save_pretrained`` writes (defaults left out)."""
        cfg = self.config(width_div)
        if dtype is not None:
            cfg.dtype = dtype
        return cfg.to_diff_dict()

    # --------------------------------------------------------------- counts
    def meta_model(self, width_div: int = 1, *, text_only: bool = False):
        """``Gemma4ForConditionalGeneration`` on the meta device (no memory for weights)."""
        import torch
        from transformers import Gemma4ForConditionalGeneration

        cfg = self.config(width_div, text_only=text_only)
        with torch.device("meta"):
            return Gemma4ForConditionalGeneration(cfg)

    def param_counts(self, width_div: int = 1) -> dict[str, int]:
        """Parameter counts per component, counted on the meta device.

        Keys: ``total`` (tied lm_head counted once), ``embedding`` (main table = tied
        lm_head), ``ple`` (per-layer embedding table), ``decoder`` (decoder layers plus
        the final norm), ``ple_projection`` (per_layer_model_projection and its norm),
        ``vision`` (vision tower + embed_vision projector), ``audio`` (audio tower +
        embed_audio projector), ``towers`` (vision + audio: what text-only removes),
        ``text`` (total - towers).
        """
        return dict(_param_counts(self.name, width_div))

    def text_param_counts(self, width_div: int = 1) -> dict[str, int]:
        """The text-model part of :meth:`param_counts` (what a ``--text-only`` bundle holds)."""
        c = _param_counts(self.name, width_div)
        return {k: c[k] for k in ("embedding", "ple", "decoder", "ple_projection", "text")}

    def expected_shapes(self, width_div: int = 1) -> dict[str, tuple[int, ...]]:
        """Every parameter a checkpoint of this preset holds, with its shape.

        Tied ``lm_head.weight`` is omitted when embeddings are tied (save_pretrained
        drops it too).
        """
        return dict(_expected_shapes(self.name, width_div))

    def describe(self, width_div: int = 1) -> dict[str, Any]:
        t = self.text_kwargs(width_div)
        return {
            "name": self.name,
            "description": self.description,
            "width_div": width_div,
            "vocab_size": t["vocab_size"],
            "hidden_size": t["hidden_size"],
            "intermediate_size": t["intermediate_size"],
            "num_hidden_layers": t["num_hidden_layers"],
            "full_attention_layers": list(self.full_attention_layers),
            "decode_layers": list(self.decode_layers),
            "use_double_wide_mlp": t["use_double_wide_mlp"],
            "hidden_size_per_layer_input": t["hidden_size_per_layer_input"],
            "default_scheme": self.default_scheme,
        }

    # -------------------------------------------------------------- checkpoint
    @property
    def shipped_weights(self) -> Path | None:
        """The shipped checkpoint folder when it holds trained weights (tiny, once trained)."""
        d = self.shipped_checkpoint_dir
        if d is not None and d.is_dir() and any(d.glob("*.safetensors")):
            return d
        return None

    @property
    def checkpoint_requirements(self) -> dict[str, Any]:
        """What a ``--checkpoint DIR`` of this preset must contain."""
        return {
            "config": CONFIG_FILE,
            "model_type": "gemma4",
            "weights": WEIGHT_GLOB + " (bf16, fp16 or fp32; or a quant_method 'gemma' QAT checkpoint)",
            "tokenizer": " or ".join(s[0] for s in TOKENIZER_FILE_SETS),
            "vocab_size": self.vocab_size,
        }


def _check_width_div(width_div: int) -> int:
    if isinstance(width_div, bool) or not isinstance(width_div, int) or width_div < 1:
        raise UsageError(f"--width-div must be a positive integer, got {width_div!r}")
    return width_div


@functools.lru_cache(maxsize=32)
def _param_counts(name: str, width_div: int) -> dict[str, int]:
    m = get_preset(name).meta_model(width_div)
    inner = m.model
    lm = inner.language_model

    def n(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    total = sum(p.numel() for p in m.parameters())  # parameters() yields tied tensors once
    embedding = lm.embed_tokens.weight.numel()
    ple = lm.embed_tokens_per_layer.weight.numel() if getattr(lm, "embed_tokens_per_layer", None) is not None else 0
    decoder = n(lm.layers) + n(lm.norm)
    ple_projection = n(getattr(lm, "per_layer_model_projection", None)) + n(
        getattr(lm, "per_layer_projection_norm", None)
    )
    vision = n(inner.vision_tower) + n(inner.embed_vision)
    audio = n(inner.audio_tower) + n(inner.embed_audio)
    lm_head_untied = 0 if m.lm_head.weight is lm.embed_tokens.weight else m.lm_head.weight.numel()
    return {
        "total": total,
        "embedding": embedding,
        "ple": ple,
        "decoder": decoder,
        "ple_projection": ple_projection,
        "lm_head_untied": lm_head_untied,
        "vision": vision,
        "audio": audio,
        "towers": vision + audio,
        "text": total - vision - audio,
    }


@functools.lru_cache(maxsize=32)
def _expected_shapes(name: str, width_div: int) -> dict[str, tuple[int, ...]]:
    preset = get_preset(name)
    m = preset.meta_model(width_div)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    if preset.text["tie_word_embeddings"]:
        shapes.pop("lm_head.weight", None)
    return shapes


# ------------------------------------------------------------------ the presets
_VISION_FULL: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 16,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "head_dim": 64,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 131_072,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "pooling_kernel_size": 3,
    "patch_size": 16,
    "position_embedding_size": 10 * 1024,
    "use_clipped_linears": False,
    "standardize": False,
    "initializer_range": 0.02,
}

_AUDIO_FULL: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "hidden_act": "silu",
    "subsampling_conv_channels": [128, 32],
    "conv_kernel_size": 5,
    "residual_weight": 0.5,
    "attention_chunk_size": 12,
    "attention_context_left": 13,
    "attention_context_right": 0,
    "attention_logit_cap": 50.0,
    "attention_invalid_logits_value": -1.0e9,
    "use_clipped_linears": True,
    "rms_norm_eps": 1e-6,
    "gradient_clipping": 1e10,
    "output_proj_dims": 1536,
    "initializer_range": 0.02,
}

_TOP_GEMMA: dict[str, Any] = {
    "boi_token_id": 255_999,
    "eoi_token_id": 258_882,
    "image_token_id": 258_880,
    "video_token_id": 258_884,
    "boa_token_id": 256_000,
    "eoa_token_index": 258_883,
    "audio_token_id": 258_881,
    "initializer_range": 0.02,
}


def _text(
    *,
    vocab: int,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    global_head_dim: int,
    period: int,
    sliding_window: int,
    ple: int,
    kv_shared: int,
    double_wide: bool,
    max_pos: int,
) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "vocab_size_per_layer_input": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "global_head_dim": global_head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": max_pos,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "tie_word_embeddings": True,
        "rope_parameters": copy.deepcopy(ROPE_PARAMETERS),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "sliding_window": sliding_window,
        "layer_types": layer_pattern(layers, period),
        "final_logit_softcapping": 30.0,
        "use_bidirectional_attention": None,
        "hidden_size_per_layer_input": ple,
        "attention_k_eq_v": False,
        "num_kv_shared_layers": kv_shared,
        "enable_moe_block": False,
        "use_double_wide_mlp": double_wide,
        "num_experts": None,
        "top_k_experts": None,
        "moe_intermediate_size": None,
    }


def _released(name: str, description: str, **text: Any) -> Preset:
    """A released Gemma 4 size: the full vision and audio towers, Gemma's top, its own bit map;
    ``text`` holds what differs between the sizes (the rest is shared by E2B and E4B)."""
    shared = dict(vocab=262_144, heads=8, head_dim=256, global_head_dim=512, sliding_window=512, ple=256,
                  max_pos=131_072)
    return Preset(name=name, description=description, text=_text(**shared, **text), vision=_VISION_FULL,
                  audio=_AUDIO_FULL, top=_TOP_GEMMA, bit_map=name)


E2B = _released(
    "e2b", "Gemma 4 E2B (35 layers, hidden 1536, 20 KV-shared double-wide layers; text + vision + audio)",
    hidden=1536, intermediate=6144, layers=35, kv_heads=1, period=5, kv_shared=20, double_wide=True,
)
E4B = _released(
    "e4b", "Gemma 4 E4B (42 layers, hidden 2560, 18 KV-shared layers; text + vision + audio)",
    hidden=2560, intermediate=10240, layers=42, kv_heads=2, period=6, kv_shared=18, double_wide=False,
)

TINY = Preset(
    name="tiny",
    default_prefill=32,
    default_cache_length=256,
    description="tiny Gemma 4 (10 layers, hidden 128, vocab 2048, 4 KV-shared double-wide layers, "
    "small vision and audio towers) for demos and tests",
    text=_text(
        vocab=2048, hidden=128, intermediate=512, layers=10, heads=4, kv_heads=1, head_dim=32,
        global_head_dim=64, period=5, sliding_window=64, ple=32, kv_shared=4, double_wide=True,
        max_pos=2048,
    ),
    vision={
        **_VISION_FULL,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 2048,
        "position_embedding_size": 1024,
    },
    audio={
        **_AUDIO_FULL,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "subsampling_conv_channels": [32, 16],
        "output_proj_dims": 128,
    },
    # The tiny tokenizer has no image/audio tokens: the ids stay outside its vocabulary
    # (Gemma4Model replaces out-of-vocabulary multimodal ids by <pad> before lookup).
    top=_TOP_GEMMA,
    bit_map="e2b",
    tokenizer_dir=ASSETS / "tiny",
    shipped_checkpoint_dir=ASSETS / "tiny",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (E2B, E4B, TINY)}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (case-insensitive); UsageError listing the known ones."""
    if isinstance(name, Preset):
        return name
    key = str(name).strip().lower()
    if key not in PRESETS:
        raise UsageError(
            f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}",
            hint="pick one of: " + ", ".join(PRESETS),
        )
    return PRESETS[key]


def preset_for_config(config: Mapping[str, Any]) -> Preset | None:
    """The preset whose architecture (at any width) a ``config.json`` dict matches, or None."""
    text = config.get("text_config", config) if isinstance(config, Mapping) else {}
    if not isinstance(text, Mapping):
        return None
    for p in PRESETS.values():
        if (
            text.get("num_hidden_layers") == p.num_layers
            and text.get("vocab_size") == p.vocab_size
            and text.get("num_kv_shared_layers") == p.text["num_kv_shared_layers"]
            and (text.get("layer_types") is None or list(text["layer_types"]) == list(p.layer_types))
        ):
            return p
    return None


def width_div_for_config(preset: Preset, config: Mapping[str, Any]) -> int | None:
    """The width divisor that makes ``preset`` produce ``config``'s hidden size, or None."""
    text = config.get("text_config", config)
    hidden = text.get("hidden_size") if isinstance(text, Mapping) else None
    base = int(preset.text["hidden_size"])
    if not isinstance(hidden, int) or hidden <= 0 or base % hidden:
        return None
    return base // hidden


def write_tiny_config(path: Path | None = None) -> Path:
    """(Re)write the committed tiny checkpoint's config.json from the preset."""
    from edgekit.fsutil import atomic_write_text

    import os

    path = path or (ASSETS / "tiny" / CONFIG_FILE)
    atomic_write_text(path, json.dumps(TINY.config_dict(), indent=2, sort_keys=True) + "\n")
    os.chmod(path, 0o644)
    return path
