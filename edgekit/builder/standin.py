"""Export a cheap stand-in of a checkpoint's text model: same graph, weights that cost nothing.

litert-torch's conversion costs about 20 bytes of RSS per parameter of the
prefill/decode graph (docs/build-memory.md): full-size E2B would need ~45 GiB.
The graph's structure does not depend on the values of the big weights, only on
their shapes, so the export child converts a stand-in instead:

- every ``nn.Linear`` of a decoder layer shares one parameter with every other
  Linear of the same role, shape and bit width (``tie groups``, planned by the
  parent from the scheme); torch.export lifts a shared parameter once and the
  converter writes one buffer that all those FULLY_CONNECTED ops read;
- the vocabulary is shrunk to ``STANDIN_VOCAB`` rows (main embedding, per-layer
  embedding table, lm_head), so no table is ever converted at full size;
- every other parameter and persistent buffer (norms, ``layer_scalar``,
  ``per_layer_model_projection``) is loaded with its real value from the
  checkpoint, so whatever the converter folds into constants is folded right.

:mod:`edgekit.builder.fill` then gives each op its own tensor holding the real
(quantized) weights, streamed from the checkpoint, and restores the vocabulary.

Child: ``python -m edgekit.builder.standin --model CKPT --plan PLAN.json --output-dir OUT ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

# Rows of every vocabulary-sized tensor in the stand-in. Chosen so no other
# dimension of a Gemma 4 graph equals it (hidden sizes, head dims, cache and
# prefill lengths are even; this is odd), which lets the fill step find every
# tensor whose shape carries the vocabulary.
STANDIN_VOCAB = 1031
STANDIN_SEED = 20261203
TEXT_LAYERS = "model.language_model.layers."
_LAYER_LINEAR = re.compile(r"^model\.language_model\.layers\.(\d+)\.(.+)$")


def tie_key(module: str, shape: tuple[int, ...], bits: int | None) -> str | None:
    """The tie group of a decoder-layer Linear, or None for a module kept real."""
    m = _LAYER_LINEAR.match(module)
    if not m:
        return None
    return f"{m.group(2)}|{'x'.join(map(str, shape))}|{bits}"


def plan(linears: dict[str, tuple[int, ...]], bits_for) -> dict[str, Any]:
    """Parent side: {"vocab": V, "tie": {module: group}} for the child.

    ``linears``: Hugging Face name -> weight shape of every text-model Linear;
    ``bits_for``: the scheme's bit width of a module (None = float).
    """
    tie: dict[str, str] = {}
    for name, shape in sorted(linears.items()):
        k = tie_key(name, tuple(shape), bits_for(name))
        if k is not None:
            tie[name] = k
    return {"schema": 1, "vocab": STANDIN_VOCAB, "tie": tie}


# ------------------------------------------------------------------ child side
def _standin_config_dir(ckpt: Path, out: Path, vocab: int) -> Path:
    """A folder with the checkpoint's tokenizer files and a config whose vocabulary is ``vocab``."""
    d = out / "standin-config"
    d.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("quantization_config", None)
    text = cfg.get("text_config", cfg)
    text["vocab_size"] = vocab
    if "vocab_size_per_layer_input" in text:
        text["vocab_size_per_layer_input"] = vocab
    text.pop("quantization_config", None)
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in ckpt.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json" and not f.name.endswith(".index.json"):
            dst = d / f.name
            if not dst.exists():
                os.symlink(f.resolve(), dst)
    return d


def _load_real(model, ckpt: Path, tie: dict[str, str], vocab: int) -> dict[str, int]:
    """Materialize the stand-in's text parameters: tied groups random, the rest from the checkpoint."""
    import numpy as np
    import torch
    from torch import nn

    from edgekit.models.qat import read_safetensors_headers, read_tensor

    entries = read_safetensors_headers(ckpt)
    gen = torch.Generator().manual_seed(STANDIN_SEED)
    leaders: dict[str, nn.Parameter] = {}
    counts = {"tied": 0, "groups": 0, "real": 0, "random": 0}
    modules = dict(model.named_modules())

    def real(name: str, shape) -> torch.Tensor | None:
        e = entries.get(name)
        if e is None or tuple(e.shape) != tuple(shape) or e.dtype not in ("F32", "BF16", "F16"):
            return None
        return torch.from_numpy(np.ascontiguousarray(read_tensor(e), dtype=np.float32))

    for mname, mod in modules.items():
        for pname, p in list(mod._parameters.items()):
            if p is None:
                continue
            full = f"{mname}.{pname}" if mname else pname
            if not (full.startswith("model.language_model.") or full == "lm_head.weight"):
                continue  # vision / audio towers stay on meta: the text export never traces them
            if isinstance(mod, nn.Linear) and pname == "weight" and mname in tie:
                g = tie[mname]
                if g not in leaders:
                    t = torch.randn(tuple(p.shape), generator=gen) * 0.02
                    leaders[g] = nn.Parameter(t, requires_grad=False)
                    counts["groups"] += 1
                mod._parameters[pname] = leaders[g]
                counts["tied"] += 1
                continue
            if p.device.type != "meta" and full not in entries:
                continue
            t = real(full, p.shape)
            if t is None:
                if vocab in tuple(p.shape) or full == "lm_head.weight":
                    t = torch.randn(tuple(p.shape), generator=gen) * 0.02  # shrunk table: filled later
                    counts["random"] += 1
                else:
                    raise ValueError(f"stand-in: no float tensor {full} {tuple(p.shape)} in the checkpoint")
            else:
                counts["real"] += 1
            mod._parameters[pname] = nn.Parameter(t, requires_grad=False)
        for bname, b in list(mod._buffers.items()):
            if b is None:
                continue
            full = f"{mname}.{bname}" if mname else bname
            t = real(full, b.shape) if full in entries else None
            if t is not None:
                mod._buffers[bname] = t.to(b.dtype)
    # The text export never traces the towers; left on meta they would make ``model.device``
    # (its first parameter's) meta, and the exporter builds its sample inputs there.
    inner = getattr(model, "model", None)
    for tower in ("vision_tower", "audio_tower", "embed_vision", "embed_audio"):
        if inner is not None and isinstance(getattr(inner, tower, None), nn.Module):
            setattr(inner, tower, nn.Module())
    # lm_head tied to the (shrunk) embedding, as the model ties them
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head is not None and emb is not None and getattr(model.config, "tie_word_embeddings", True) is not False:
        text_cfg = getattr(model.config, "text_config", model.config)
        if getattr(text_cfg, "tie_word_embeddings", True) is not False:
            head.weight = emb.weight
    return counts


def _make_load_model(ckpt: Path, cfg_dir: Path, tie: dict[str, str], vocab: int, record: dict):
    def load_model(model_path, export_config, trust_remote_code=False, auto_model_override=None, task=None):
        import torch
        import transformers
        from litert_torch.generative.export_hf.core import export_lib
        from litert_torch.generative.export_hf.core import weights_loader as wl

        config = transformers.AutoConfig.from_pretrained(str(cfg_dir), dtype=torch.float32)
        for c in (config, getattr(config, "text_config", None)):
            if c is not None and hasattr(c, "allow_global_per_layer_attribute_access"):
                c.allow_global_per_layer_attribute_access = True
        config._attn_implementation = "lrt_transposed_attention"
        for sub in ("text_config", "vision_config", "audio_config"):
            s = getattr(config, sub, None)
            if s is not None and hasattr(s, "dtype"):
                s.dtype = torch.float32
        with wl.init_params_on_meta():
            model = transformers.AutoModelForCausalLM.from_config(config=config, torch_dtype=torch.float32)
        record["params"] = _load_real(model, ckpt, tie, vocab)
        model.generation_config.cache_implementation = "static"
        model.generation_config.do_sample = False
        text_cfg = getattr(config, "text_config", config)
        tok = transformers.AutoTokenizer.from_pretrained(str(cfg_dir))
        return export_lib.SourceModelArtifacts(model=model, model_config=config, text_model_config=text_cfg,
                                               tokenizer=tok)

    return load_model


def _child(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.builder.standin")
    ap.add_argument("--model", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--prefill", type=int, required=True)
    ap.add_argument("--cache-length", type=int, required=True)
    ap.add_argument("--lightweight", action="store_true")  # always on for the stand-in
    a = ap.parse_args(argv)
    from litert_torch.generative.export_hf import export as hf_export
    from litert_torch.generative.export_hf.core import export_lib

    from edgekit.builder.export import lightweight_everywhere
    from edgekit.fsutil import atomic_write_json

    ckpt = Path(a.model).resolve()
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = json.loads(Path(a.plan).read_text())
    cfg_dir = _standin_config_dir(ckpt, out, int(p["vocab"]))
    record: dict[str, Any] = {"vocab": int(p["vocab"])}
    export_lib.load_model = _make_load_model(ckpt, cfg_dir, p["tie"], int(p["vocab"]), record)
    with lightweight_everywhere():
        hf_export.export(
            model=str(cfg_dir), output_dir=str(out), task="text_generation", quantization_recipe="none",
            prefill_lengths=[a.prefill], cache_length=a.cache_length, externalize_embedder=True,
            split_cache=False, bundle_litert_lm=True, export_vision_encoder=False, export_audio_encoder=False,
            experimental_lightweight_conversion=True,
        )
    atomic_write_json(out / "standin.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(_child())
