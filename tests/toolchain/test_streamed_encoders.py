"""Multimodal bundles on the streamed route (edgekit/builder/encoders.py, towers only).

The streamed route converts each tower (vision, audio) in its own child process from a
model built on the meta device in which only that tower's tensors are real, read from
the safetensors one by one; the text weights are never loaded there. Checked on tiny:

- the loader makes exactly the tower's tensors real and drops every other parameter;
- a tower converted that way is byte for byte the section the classic route's
  conversion (whole checkpoint loaded) gives;
- ``build(route="streamed", text_only=False)`` gives a bundle with the encoder sections
  at the scheme's bits that passes inspect and loads and generates in the engine, and its
  manifest records what each tower child loaded and its peak RSS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures_bundles import bundle_cache_root

ENCODER_SECS = ("tf_lite_vision_encoder", "tf_lite_vision_adapter", "tf_lite_audio_encoder_hw",
                "tf_lite_audio_adapter")


def _tiny_dir() -> Path:
    from edgekit.models.presets import get_preset

    return Path(get_preset("tiny").shipped_checkpoint_dir)


def _meta_model(ckpt: Path):
    import torch
    import transformers
    from litert_torch.generative.export_hf.core import weights_loader as wl

    config = transformers.AutoConfig.from_pretrained(str(ckpt), dtype=torch.float32)
    with wl.init_params_on_meta():
        return transformers.AutoModelForImageTextToText.from_config(config=config, torch_dtype=torch.float32)


@pytest.mark.parametrize("tower", ["vision", "audio"])
def test_materialize_loads_only_the_tower(tower):
    from edgekit.builder import encoders as enc
    from edgekit.models.qat import read_safetensors_headers

    ckpt = _tiny_dir()
    prefixes = enc.TOWER_PREFIXES[tower]
    model = _meta_model(ckpt)
    rec = enc.materialize_towers(model, ckpt, prefixes)
    want = {k for k in read_safetensors_headers(ckpt) if k.startswith(prefixes)}
    assert want and rec["tensors"] == len(want)
    assert rec["loaded_outside_prefixes"] == []
    real = {n for n, p in model.named_parameters() if not p.is_meta}
    assert real and all(n.startswith(prefixes) for n in real), sorted(real - want)[:3]
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    # the text model kept no parameter at all: nothing of it was read
    assert not [n for n, _ in model.named_parameters() if n.startswith("model.language_model.")]
    held = sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * 4 for n, b in model.named_buffers() if n in want)  # persistent buffers read too
    assert rec["bytes"] == held


def test_materialize_refuses_a_checkpoint_without_the_tower(tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    from edgekit.builder import encoders as enc

    ckpt = _tiny_dir()
    (tmp_path / "x").mkdir()
    tensors = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items()
               if not k.startswith("model.embed_vision.")}
    save_file(tensors, str(tmp_path / "x" / "model.safetensors"))
    shutil.copy(ckpt / "config.json", tmp_path / "x" / "config.json")
    # the model has a tower parameter the checkpoint lacks: a named error, not a meta tensor in the export
    with pytest.raises(ValueError, match=r"model\.embed_vision\..* is not in the checkpoint"):
        enc.materialize_towers(_meta_model(ckpt), tmp_path / "x", enc.TOWER_PREFIXES["vision"])


def _classic_sections(work: Path) -> dict[str, Path]:
    """The classic route's multimodal float export of tiny, unpacked (the export cache the
    tiny_multimodal_bundle fixture fills: ``python -m edgekit.builder.export --with-encoders``)."""
    from edgekit.builder import export as ex
    from edgekit.builder import quantize as qz
    from edgekit.builder.pipeline import plan_source
    from edgekit.models.presets import get_preset

    preset = get_preset("tiny")
    d, info = plan_source(preset, None, False, 0, 1, bundle_cache_root())
    ident = {"preset": preset.name, "width_div": 1, "weights_sha256": info.weights_sha256}
    opts = ex.ExportOptions(text_only=False, prefill_length=preset.default_prefill,
                            cache_length=preset.default_cache_length)
    res = ex.export_checkpoint(d, ident, opts, cache_dir=bundle_cache_root())
    return qz.section_files(qz.unpack(res.bundle, work))


@pytest.mark.slow
def test_tower_children_give_the_classic_sections_byte_for_byte(tmp_path):
    from edgekit.builder import encoders as enc

    files, rec = enc.convert_towers(_tiny_dir(), tmp_path / "towers")
    assert set(files) == set(ENCODER_SECS)
    for tower, t in rec["towers"].items():
        assert t["peak_rss_bytes"] > 0 and t["seconds"] > 0
        assert t["loaded"]["prefixes"] == list(enc.TOWER_PREFIXES[tower])
        assert t["loaded"]["loaded_outside_prefixes"] == []
    classic = _classic_sections(tmp_path / "classic")  # the export child loaded the whole checkpoint
    assert set(files) <= set(classic)
    for sec in files:
        assert files[sec].read_bytes() == classic[sec].read_bytes(), sec


@pytest.fixture(scope="module")
def streamed_mm(tmp_path_factory):
    from edgekit.builder.pipeline import build

    out = tmp_path_factory.mktemp("streamed-mm")
    res = build("tiny", random_weights=True, route="streamed", text_only=False, output=out,
                cache_dir=bundle_cache_root(), quality=False)
    return res


@pytest.mark.slow
def test_streamed_multimodal_build(streamed_mm):
    from edgekit.bundle import inspect as insp
    from edgekit.models.presets import get_preset
    from edgekit.models.qat import read_safetensors_headers
    from edgekit.schemes import Scheme

    m = json.loads(streamed_mm.manifest_path.read_text())
    assert m["lock"]["options"]["route"] == "streamed" and m["lock"]["options"]["text_only"] is False
    assert m["encoders"] == {"vision": True, "audio": True}
    preset = get_preset("tiny")
    scheme = Scheme.from_dict(m["scheme"]).resolve(preset)
    report = insp.inspect_bundle(streamed_mm.bundle)
    names = {s["name"] for s in report["sections"]}
    assert set(ENCODER_SECS) <= names and "tf_lite_prefill_decode" in names
    assert insp.check(report, scheme, preset, m) == []
    enc = [w for w in report["weights"] if w["section"] in ENCODER_SECS and w["op"] == "FULLY_CONNECTED"]
    bits = {(w["module"].split(".")[1], insp.INTEGER_WEIGHT_TYPES.get(w["weight_dtype"])) for w in enc}
    assert ("vision_tower", 8) in bits and ("audio_tower", 2) in bits and ("audio_tower", 4) in bits
    assert m["runtime"]["litert_lm"]["ok"] is True and m["runtime"]["litert_lm"]["decode_tokens"] > 0
    # each tower child loaded its own tensors and nothing of the text model; its peak RSS is counted
    ckpt = Path(m["source"]["path"]) if m["source"].get("path") else None
    towers = m["build"]["encoders"]["export"]["towers"]
    assert set(towers) == {"vision", "audio"}
    for tower, t in towers.items():
        assert all(p.startswith(("model.vision_tower.", "model.embed_vision.", "model.audio_tower.",
                                 "model.embed_audio.")) for p in t["loaded"]["prefixes"])
        assert t["loaded"]["loaded_outside_prefixes"] == [] and t["loaded"]["tensors"] > 0
        if ckpt is not None and ckpt.is_dir():  # every tensor of the tower, no other
            want = [k for k in read_safetensors_headers(ckpt) if k.startswith(tuple(t["loaded"]["prefixes"]))]
            assert t["loaded"]["tensors"] == len(want)
        assert t["peak_rss_bytes"] > 0
        if not t["cached"]:  # a child that ran in this build counts in its peak
            assert t["peak_rss_bytes"] <= m["build"]["peak_rss_bytes"]
    assert towers["vision"]["loaded"]["tensors"] + towers["audio"]["loaded"]["tensors"] < \
        towers["vision"]["loaded"]["checkpoint_tensors"]


@pytest.mark.slow
def test_a_second_build_takes_the_towers_from_the_cache(streamed_mm):
    from edgekit.builder import encoders as enc
    from edgekit.builder.pipeline import plan_source
    from edgekit.models.presets import get_preset

    m = streamed_mm.manifest
    d, info = plan_source(get_preset("tiny"), None, True, 0, 1, bundle_cache_root())
    ident = {"preset": "tiny", "width_div": 1, "weights_sha256": info.weights_sha256}
    files, rec = enc.cached_towers(d, ident, bundle_cache_root())
    assert set(files) == set(ENCODER_SECS) and all(f.is_file() for f in files.values())
    built = m["build"]["encoders"]["export"]["towers"]
    for tower, t in rec["towers"].items():
        assert t["cached"] is True  # no child ran: the build's conversion is reused
        assert t["key"] == built[tower]["key"] and t["peak_rss_bytes"] == built[tower]["peak_rss_bytes"]
