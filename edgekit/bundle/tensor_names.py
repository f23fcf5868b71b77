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


def module_name_for(weight_name: str, scope: str, is_gate: bool | None, section: str) -> str | None:
    """The Hugging Face module a weight tensor of ``section`` belongs to, or None.

    ``is_gate`` disambiguates an MLP's two input projections, which the converter
    names both after ``gate_proj``: the gate is the one whose output feeds the
    activation function.
    """
    if section == "tf_lite_embedder":
        return f"{TEXT_PREFIX}.embed_tokens"
    if section == "tf_lite_per_layer_embedder":
        return f"{TEXT_PREFIX}.embed_tokens_per_layer"
    lin = _LINEAR_RE.findall(weight_name + ";")
    if not lin:
        # (QAT engineer) with trained/dequantized weights the converter may fold the
        # projection's constant scale into its weight and name the result after the owner
        # module: the only Linear Gemma4TextModel owns directly is per_layer_model_projection.
        if weight_name.rstrip(";").endswith("Gemma4TextModel_language_model"):
            return f"{TEXT_PREFIX}.per_layer_model_projection"
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
