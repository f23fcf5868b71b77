"""Map tensor names of a litert-torch Gemma 4 export back to Hugging Face module names.

The exporter names each weight after the module path it was traced from, e.g.
``...Gemma4TextDecoderLayer_4/.../Gemma4TextMLP_mlp/torch.nn.modules.linear.Linear_gate_proj;``.
Scheme rules are written over Hugging Face names
(``model.language_model.layers.4.mlp.gate_proj``); this is the bridge, used both
when quantizing and when reading a bundle back.
"""

from __future__ import annotations

import re

TEXT_PREFIX = "model.language_model"
_LAYER_RE = re.compile(r"DecoderLayer_(\d+)")
_LINEAR_RE = re.compile(r"Linear_([A-Za-z0-9_]+?);")
_MODULE_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


# vision/audio sections (edgekit/builder/encoders.py) -> HF module prefix of their weights
ENCODER_SECTIONS = {
    "tf_lite_vision_encoder": "model.vision_tower",
    "tf_lite_vision_adapter": "model.embed_vision",
    "tf_lite_end_of_vision": "model.language_model.embed_tokens",
    "tf_lite_audio_encoder_hw": "model.audio_tower",
    "tf_lite_audio_adapter": "model.embed_audio",
    "tf_lite_end_of_audio": "model.language_model.embed_tokens",
}
_ENCODER_ROOTS = ("vision_tower", "audio_tower", "embed_vision", "embed_audio")


def _linear_paths(weight_name: str) -> list[str]:
    chunks = [c for c in weight_name.split(";") if "/" in c]
    return [c for c in chunks if c.rsplit("/", 1)[-1].rsplit(".", 1)[-1].startswith("Linear_")]


def shared_linear_paths(weight_names) -> frozenset[str]:
    """Module paths named by more than one weight of a graph (``q_proj`` in ``k_proj...;q_proj...``)."""
    seen: dict[str, int] = {}
    for n in set(weight_names):
        for c in set(_linear_paths(n)):
            seen[c] = seen.get(c, 0) + 1
    return frozenset(c for c, k in seen.items() if k > 1)


def encoder_module_name(weight_name: str, section: str, shared: frozenset[str] = frozenset()) -> str | None:
    """HF module of a vision/audio section's weight, from the converter's module path.

    ``.../LiteRTGemma4VisionEncoder_encoder/...Gemma4VisionEncoderLayer_0/...Gemma4VisionAttention_self_attn/
    ...Gemma4ClippableLinear_q_proj/torch.nn.modules.linear.Linear_linear;`` ->
    ``model.vision_tower.encoder.layers.0.self_attn.q_proj.linear`` (each segment is
    ``<module class>_<attribute>``; numeric attributes are ModuleList ``layers`` entries).
    """
    chunks = [c for c in weight_name.split(";") if "/" in c]
    if not chunks:
        return None
    # the converter joins several module paths in one name (``k_proj...;q_proj...``, in either
    # order): the weight's own Linear is the one no other weight of the graph names (``shared``)
    linear = _linear_paths(weight_name)
    own = [c for c in linear if c not in shared] or linear or chunks
    path = own[0]
    attrs: list[str] = []
    for seg in path.split("/")[1:]:  # the first segment is litert-torch's exportable wrapper
        cls = seg.rsplit(".", 1)[-1]
        if "_" not in cls:
            continue
        attr = cls.split("_", 1)[1]
        attrs.append(f"layers.{attr}" if attr.isdigit() else attr)
    if not attrs:
        return None
    root = next((i for i, a in enumerate(attrs) if a in _ENCODER_ROOTS), None)
    if root is not None:
        return "model." + ".".join(attrs[root:])
    prefix = ENCODER_SECTIONS.get(section)
    return f"{prefix}." + ".".join(attrs) if prefix else None


def module_name_for(weight_name: str, scope: str, is_gate: bool | None, section: str,
                    shared: frozenset[str] = frozenset()) -> str | None:
    """The Hugging Face module a weight tensor of ``section`` belongs to, or None.

    ``is_gate`` disambiguates an MLP's two input projections, which the converter
    names both after ``gate_proj``: the gate is the one whose output feeds the
    activation function.
    """
    if section in ENCODER_SECTIONS:  # ``shared``: shared_linear_paths() of the section's FC weights
        return encoder_module_name(weight_name, section, shared)
    if section == "tf_lite_embedder":
        return f"{TEXT_PREFIX}.embed_tokens"
    if section == "tf_lite_per_layer_embedder":
        return f"{TEXT_PREFIX}.embed_tokens_per_layer"
    lin = _LINEAR_RE.findall(weight_name + ";")
    if not lin:
        # with trained/dequantized weights the converter may fold the
        # projection's constant scale into its weight and name the result after the owner
        # module: the only Linear Gemma4TextModel owns directly is per_layer_model_projection.
        if weight_name.rstrip(";").endswith("Gemma4TextModel_language_model"):
            return f"{TEXT_PREFIX}.per_layer_model_projection"
        # litert-torch's lightweight conversion leaves the tied
        # lm_head weight unnamed ("arith.constant<N>"); the FC writing the logits is it.
        if section == "tf_lite_prefill_decode" and scope.rstrip(";").endswith("_logits_output"):
            return "lm_head"
        return None
    leaf = lin[-1]
    if leaf == "lm_head":
        return "lm_head"
    if leaf == "per_layer_model_projection":
        return f"{TEXT_PREFIX}.per_layer_model_projection"
    m = _LAYER_RE.search(weight_name) or _LAYER_RE.search(scope)
    if not m:
        return None
    base = f"{TEXT_PREFIX}.layers.{int(m.group(1))}"
    if "_self_attn/" in weight_name or leaf in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return f"{base}.self_attn.{leaf}"
    if "_mlp/" in weight_name or leaf in ("gate_proj", "up_proj", "down_proj"):
        if leaf in ("gate_proj", "up_proj") and is_gate is not None:
            leaf = "gate_proj" if is_gate else "up_proj"
        return f"{base}.mlp.{leaf}"
    return f"{base}.{leaf}"


def layer_of(module: str) -> int | None:
    m = _MODULE_LAYER_RE.search(module + ".")
    return int(m.group(1)) if m else None


def short_name(module: str) -> str:
    """``layers.20.mlp.gate_proj`` -> ``mlp.gate_proj``; other names unchanged."""
    m = re.search(r"\.layers\.\d+\.(.*)$", module)
    return m.group(1) if m else module
