"""The mobile QAT checkpoint format (quant_method: gemma): transformers 5.17 is the judge.

The checkpoints come from scripts/make_qat_checkpoint.py; transformers loads them with
its own Gemma quantizer and runs a forward pass; edgekit's reading (packing, bit map,
dequantization) is compared with transformers' own on the same files.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgekit.errors import CheckpointError
from edgekit.models import qat
from edgekit.models.presets import get_preset
import qat_helpers as H


def _load_hf(path):
    import torch
    import transformers

    model, info = transformers.Gemma4ForConditionalGeneration.from_pretrained(
        str(path), dtype=torch.float32, output_loading_info=True
    )
    return model.eval(), info


# ------------------------------------------------------------------ packing


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_matches_transformers_unpack(bits):
    import torch
    from transformers.integrations import gemma_quant as gq

    rng = np.random.default_rng(bits)
    qmin, qmax = qat.qrange(bits)
    width = 37  # odd: exercises the padding of the last byte
    q = rng.integers(qmin, qmax + 1, size=(5, width)).astype(np.int8)
    packed = qat.pack(q, bits)
    assert packed.shape == (5, qat.packed_width(width, bits))
    if bits == 2:
        theirs = gq._unpack_int2(torch.from_numpy(packed), width).numpy()
    elif bits == 4:
        theirs = gq._unpack_int4(torch.from_numpy(packed), width).numpy()
    else:
        theirs = packed
    np.testing.assert_array_equal(theirs, q)
    np.testing.assert_array_equal(qat.unpack(packed, bits, width), q)


def test_quantize_rows_lies_on_lattice_and_dequantizes_exactly():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    for bits, blocks in ((2, 1), (4, 4), (8, 1)):
        q, s = qat.quantize_rows(w, bits, blocks)
        qmin, qmax = qat.qrange(bits)
        assert q.min() >= qmin and q.max() <= qmax and s.shape == (16, blocks) and np.all(s > 0)
        d = qat.dequantize(q, s)
        plain_q, plain_s = qat.quantize_rows(w, bits, blocks, clip_search=False)
        d_plain = qat.dequantize(plain_q, plain_s)
        q2, _ = qat.quantize_rows(d_plain, bits, blocks, clip_search=False)  # the lattice is a fixed point
        np.testing.assert_array_equal(q2, plain_q)
        # the clipped step size is never worse than plain min-max, and better somewhere
        err = ((d - w) ** 2).sum(axis=1)
        err_plain = ((d_plain - w) ** 2).sum(axis=1)
        assert np.all(err <= err_plain + 1e-6)
        if bits < 8:
            assert np.any(err < err_plain)


# ------------------------------------------------------------------ bit map


def test_bits_for_follows_transformers_replacement():
    """Our resolution of module_quant_configs == transformers' replace_with_quant_layers."""
    import torch
    from transformers.integrations.gemma_quant import QuantizedEmbedding, QuantizedLinear, replace_with_quant_layers
    from transformers.utils.quantization_config import GemmaQuantizationConfig

    mod = H.script_module()
    preset = get_preset("tiny")
    qc = mod.qat_config_for(preset)
    model = preset.meta_model()
    d = qc.to_dict()
    d.pop("quant_method")
    replace_with_quant_layers(model, GemmaQuantizationConfig(**d), modules_to_not_convert=list(qc.modules_to_not_convert))
    theirs = {n: m.num_bits for n, m in model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding))}
    layout = qat.quant_layout(mod._untied(preset.config()), qc)
    ours = {n: m.bits for n, m in layout.modules.items()}
    assert ours == {k: v for k, v in theirs.items() if k != "lm_head"} | {"lm_head": ours["lm_head"]}
    # the E2B map on the tiny preset: decode (KV-shared) layers' MLPs at 2 bits, the others at 4
    for i in range(preset.num_layers):
        want = 2 if i in preset.decode_layers else 4
        assert ours[f"model.language_model.layers.{i}.mlp.down_proj"] == want
    assert ours["lm_head"] == 2 and ours["model.language_model.embed_tokens"] == 2
    assert ours["model.language_model.embed_tokens_per_layer"] == 4
    assert ours["model.language_model.layers.0.per_layer_input_gate"] == 8
    assert "model.language_model.per_layer_model_projection" not in ours


def test_published_e2b_map_regexes_are_the_published_strings():
    rules = qat.default_module_quant_configs(35, 15)
    assert list(rules)[3] == r"language_model\.layers\.(\d|1[0-4])\.mlp\."
    qc = qat.QatConfig.from_dict({"quant_method": "gemma", "module_quant_configs": rules})
    assert qc.bits_for("model.language_model.layers.14.mlp.up_proj") == 4
    assert qc.bits_for("model.language_model.layers.15.mlp.up_proj") == 2
    assert qc.bits_for("model.audio_tower.layers.3.lconv1d.linear_start.linear") == 4
    assert qc.bits_for("model.audio_tower.layers.3.lconv1d.linear_end.linear") == 2


# ------------------------------------------------------------------ transformers loads ours


def test_transformers_loads_random_tiny_and_dequantizes_like_us():
    import torch

    path = H.random_checkpoint("tiny")
    model, info = _load_hf(path)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    lm = model.model.language_model
    assert type(lm.embed_tokens).__name__ == "QuantizedEmbedding"
    assert type(model.lm_head).__name__ == "QuantizedLinear" and model.lm_head.num_bits == 2
    assert lm.layers[-1].mlp.down_proj.num_bits == 2 and lm.layers[0].mlp.down_proj.num_bits == 4
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[2, 5, 9, 100, 7]]))
    assert out.logits.shape == (1, 5, get_preset("tiny").vocab_size)
    assert torch.isfinite(out.logits).all()
    # our dequantization is transformers' own, bit for bit
    ck = qat.validate_qat_checkpoint(path, get_preset("tiny").config(), preset_name="tiny")
    mods = dict(model.named_modules())
    for name in ("lm_head", "model.language_model.layers.0.self_attn.q_proj",
                 "model.language_model.layers.9.mlp.gate_proj", "model.language_model.layers.2.per_layer_input_gate"):
        theirs = mods[name]._dequantize_weights(torch.float32).detach().numpy()
        np.testing.assert_array_equal(ck.dequantized(name), theirs)
    for name in ("model.language_model.embed_tokens", "model.language_model.embed_tokens_per_layer"):
        theirs = mods[name].weight.detach().numpy()
        np.testing.assert_array_equal(ck.dequantized(name), theirs)
    assert ck.modules["model.language_model.embed_tokens_per_layer"].blocks == get_preset("tiny").num_layers


@pytest.mark.slow
def test_transformers_loads_random_e2b_at_width_div_16():
    import torch

    t0 = time.time()
    path = H.random_checkpoint("e2b", 16)
    made = time.time() - t0
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "gemma"
    assert cfg["text_config"]["hidden_size"] == 1536 // 16 and cfg["text_config"]["vocab_size"] == 262144
    ck = qat.validate_qat_checkpoint(path, get_preset("e2b").config(16), preset_name="e2b")
    assert ck.modules["model.language_model.embed_tokens_per_layer"].blocks == 35
    assert ck.modules["model.language_model.layers.15.mlp.gate_proj"].bits == 2
    assert ck.modules["model.language_model.layers.14.mlp.gate_proj"].bits == 4
    model, info = _load_hf(path)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        out = model.model.language_model(input_ids=torch.tensor([[2, 1000, 200000, 7]]))
        logits = model.lm_head(out.last_hidden_state)
    assert logits.shape == (1, 4, 262144) and torch.isfinite(logits).all()
    assert made < 600


def test_tiny_qat_checkpoint_is_trained_and_loads():
    import torch

    path = H.tiny_qat_checkpoint()
    info = json.loads((path / "qat_info.json").read_text())
    # quantization-aware fine-tuning lowers the quantized model's held-out loss
    assert info["heldout_loss_quantized_after_qat"] < info["heldout_loss_quantized_before_qat"]
    assert info["heldout_loss_float"] < info["heldout_loss_quantized_before_qat"]  # quantizing costs something
    if any((get_preset("tiny").shipped_checkpoint_dir).glob("*.safetensors")):
        assert info["source"].startswith("trained tiny model")
    model, linfo = _load_hf(path)
    assert not linfo["missing_keys"] and not linfo["unexpected_keys"] and not linfo["mismatched_keys"]
    ck = qat.validate_qat_checkpoint(path, get_preset("tiny").config(), preset_name="tiny")
    srq = {n: ck.srq_scales(n) for n, m in ck.modules.items() if m.kind == "linear" and "language_model" in n}
    assert srq and all(a > 0 and b > 0 for a, b in srq.values())  # calibrated, not placeholders
    assert ck.srq_scales("lm_head") == (0.0, 0.0)
    # q/k/v read the same tensor, so calibration gives them one input scale
    a = "model.language_model.layers.0.self_attn."
    assert srq[a + "q_proj"][0] == srq[a + "k_proj"][0] == srq[a + "v_proj"][0]
    kv = ck.kv_cache_scales()
    assert kv and all(k > 0 and v > 0 for k, v in kv.values())
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[2, 40, 41, 42]]))
    assert torch.isfinite(out.logits).all()


# ------------------------------------------------------------------ bad input


def _rewrite(path, drop=(), change=None):
    """Rewrite model.safetensors without ``drop`` keys / with ``change[key] = array``."""
    from safetensors.numpy import load_file, save_file

    f = path / "model.safetensors"
    d = load_file(str(f))
    for k in drop:
        d.pop(k)
    for k, v in (change or {}).items():
        d[k] = v
    save_file(d, str(f))


def _expect(path, preset="tiny", width_div=1, match=""):
    t0 = time.time()
    with pytest.raises(CheckpointError) as ei:
        qat.validate_qat_checkpoint(path, get_preset(preset).config(width_div), preset_name=preset)
    assert time.time() - t0 < 30  # refused before any long work
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.exit_code == 6
    assert match in msg, msg
    return msg


def test_bad_bit_width_for_preset():
    p = H.copy_checkpoint(H.random_checkpoint("tiny"), "bad-bits")
    cfg = json.loads((p / "config.json").read_text())
    # layer 0's MLP (not a decode layer) at 2 bits: the mobile schema does not allow it
    rules = {r"language_model\.layers\.0\.mlp\.": {"num_bits": 2}, **cfg["quantization_config"]["module_quant_configs"]}
    cfg["quantization_config"]["module_quant_configs"] = rules
    (p / "config.json").write_text(json.dumps(cfg))
    _expect(p, match="layers.0.mlp")


def test_truncated_packed_tensor():
    p = H.copy_checkpoint(H.random_checkpoint("tiny"), "truncated")
    f = p / "model.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size - 1000)
    _expect(p, match="truncated")


def test_packed_width_wrong():
    p = H.copy_checkpoint(H.random_checkpoint("tiny"), "packed-width")
    key = "model.language_model.layers.9.mlp.down_proj.weight"  # 2-bit: 4 values a byte
    from safetensors.numpy import load_file

    w = load_file(str(p / "model.safetensors"))[key]
    _rewrite(p, change={key: w[:, : w.shape[1] - 1].copy()})
    _expect(p, match="packed width")


@pytest.mark.parametrize("kind", ["missing", "negative", "nan", "negative_srq"])
def test_bad_scales(kind):
    p = H.copy_checkpoint(H.random_checkpoint("tiny"), f"scale-{kind}")
    key = "model.language_model.layers.1.self_attn.o_proj.weight_scale"
    from safetensors.numpy import load_file

    s = load_file(str(p / "model.safetensors"))[key]
    if kind == "missing":
        _rewrite(p, drop=[key])
        _expect(p, match="missing scale")
    elif kind == "negative":
        s = s.copy()
        s[3, 0] = -s[3, 0]
        _rewrite(p, change={key: s})
        _expect(p, match="negative")
    elif kind == "nan":
        s = s.copy()
        s[0, 0] = np.nan
        _rewrite(p, change={key: s})
        _expect(p, match="NaN")
    else:
        k2 = "model.language_model.layers.1.self_attn.o_proj.input_activation_scale"
        _rewrite(p, change={k2: np.array(-0.5, np.float32)})
        _expect(p, match="SRQ")


def test_checkpoint_of_another_model_size():
    p = H.random_checkpoint("tiny")
    msg = _expect(p, preset="e2b", match="different model size")
    assert "e2b" in msg


def test_not_a_qat_checkpoint():
    p = H.copy_checkpoint(H.random_checkpoint("tiny"), "not-qat")
    cfg = json.loads((p / "config.json").read_text())
    cfg.pop("quantization_config")
    (p / "config.json").write_text(json.dumps(cfg))
    _expect(p, match="quant_method")
