"""Vision/audio encoder sections (edgekit/builder/encoders.py): a tiny multimodal build, read back."""

from __future__ import annotations

import copy
import json

import pytest

from edgekit.bundle import inspect as insp
from edgekit.bundle.tensor_names import ENCODER_SECTIONS, encoder_module_name, shared_linear_paths

_P = "litert_torch.generative.export_hf.model_ext.gemma4.audio_exportable.LiteRTExportableModuleForGemma4AudioEncoder"
_L = "transformers.models.gemma4.modeling_gemma4"


def _name(*chunks: str) -> str:
    return "".join(c + ";" for c in chunks)


def _path(proj: str, layer: int = 0) -> str:
    return (f"{_P}/{_L}.Gemma4AudioModel_audio_tower/{_L}.Gemma4AudioLayer_{layer}/{_L}.Gemma4AudioAttention_self_attn/"
            f"{_L}.Gemma4ClippableLinear_{proj}/torch.nn.modules.linear.Linear_linear")


def test_encoder_module_names_resolve_joined_paths():
    # the converter joins module paths in one weight name, in either order: the own one is unshared
    q, k, v = _name(_path("q_proj")), _name(_path("k_proj"), _path("q_proj")), _name(_path("q_proj"), _path("v_proj"))
    shared = shared_linear_paths([q, k, v])
    assert shared == {_path("q_proj")}
    got = [encoder_module_name(n, "tf_lite_audio_encoder_hw", shared) for n in (q, k, v)]
    assert got == [f"model.audio_tower.layers.0.self_attn.{p}.linear" for p in ("q_proj", "k_proj", "v_proj")]
    # without the graph context the first path wins: k would be misnamed
    assert encoder_module_name(v, "tf_lite_audio_encoder_hw") != got[2]


@pytest.fixture(scope="module")
def mm(tiny_multimodal_bundle):
    from edgekit.models.presets import get_preset
    from edgekit.schemes import Scheme

    manifest = json.loads((tiny_multimodal_bundle.parent / "manifest.json").read_text())
    preset = get_preset("tiny")
    scheme = Scheme.from_dict(manifest["scheme"]).resolve(preset)
    return insp.inspect_bundle(tiny_multimodal_bundle), manifest, scheme, preset


@pytest.mark.slow
def test_multimodal_bundle_has_encoders_with_scheme_bits(mm):
    report, manifest, scheme, preset = mm
    names = {s["name"] for s in report["sections"]}
    for sec in ("tf_lite_vision_encoder", "tf_lite_vision_adapter", "tf_lite_audio_encoder_hw", "tf_lite_audio_adapter"):
        assert sec in names
    assert report["has_vision"] and report["has_audio"] and manifest["encoders"] == {"vision": True, "audio": True}
    enc = [w for w in report["weights"] if w["section"] in ENCODER_SECTIONS and w["op"] == "FULLY_CONNECTED"]
    assert enc
    seen_bits = set()
    for w in enc:  # every encoder linear carries the bits the scheme gives its HF module, read from the file
        want = scheme.bits_for(w["module"])
        got = insp.INTEGER_WEIGHT_TYPES.get(w["weight_dtype"])
        assert got == want, (w["module"], w["weight_dtype"], want)
        if want is not None:
            assert w["weight_scales"] == w["shape"][0]  # channel-wise
            assert w["activations"] == "dynamic"  # weight-only: named in the manifest
        seen_bits.add((w["module"].split(".")[1], got))
    # the E2B map as named in the brief: vision 8-bit, audio 2-bit, lconv1d.linear_start 4-bit
    assert ("vision_tower", 8) in seen_bits and ("audio_tower", 2) in seen_bits and ("audio_tower", 4) in seen_bits
    starts = {w["weight_dtype"] for w in enc if "lconv1d.linear_start" in w["module"]}
    assert starts == {"INT4"}
    groups = report["encoder_weights"]["tf_lite_audio_encoder_hw"]
    assert groups["model.audio_tower.layers.*.lconv1d.linear_start.linear"]["bits"] == {"4-bit": preset.config().audio_config.num_hidden_layers}
    q = manifest["build"]["encoders"]["quantization"]
    assert "dynamic-range" in q["tf_lite_audio_encoder_hw"]["activations"]
    # the text path: static int8 activations, and it loaded and generated in LiteRT-LM's CPU engine
    assert insp.check(report, scheme, preset, manifest) == []
    assert manifest["runtime"]["litert_lm"]["ok"] and manifest["runtime"]["litert_lm"]["decode_tokens"] > 0


@pytest.mark.slow
def test_check_flags_wrong_encoder_bits(mm):
    report, manifest, scheme, preset = mm
    bad = copy.deepcopy(report)
    w = next(w for w in bad["weights"] if "lconv1d.linear_start" in w["module"])
    w["weight_dtype"], w["bits"] = "INT2", 2
    v = insp.check(bad, scheme, preset)
    assert any("linear_start" in x and "scheme says 4-bit" in x for x in v), v


@pytest.mark.slow
def test_text_only_bundle_has_no_encoders(tiny_bundles):
    report = insp.inspect_bundle(tiny_bundles["wNa8o8"], with_sha256=False)
    assert not report["has_vision"] and not report["has_audio"]
    assert report["encoder_weights"] == {}
    assert not {s["name"] for s in report["sections"]} & set(ENCODER_SECTIONS)
