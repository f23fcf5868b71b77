"""Building from a QAT checkpoint: integer-exact bundle, SRQ scales carried, agreement
with transformers' forward of the same checkpoint; the naive --requantize path beside it;
bad QAT checkpoints refused with one line and exit 6 before any long work."""

from __future__ import annotations

import functools
import json
import math
import time

import numpy as np
import pytest

import qat_helpers as H
from edgekit.models import qat
from edgekit.models.presets import get_preset


# ------------------------------------------------------------------ fast: SRQ -> qsv


def test_srq_scale_survives_the_quantizers_min_max_arithmetic():
    """min=-127 s, max=127 s (float64) gives back s bit for bit in ai-edge-quantizer."""
    from edgekit.builder import qat as bq

    rng = np.random.default_rng(1)
    scales = np.concatenate([rng.uniform(1e-4, 1.0, 500), 10.0 ** rng.uniform(-6, 2, 500)]).astype(np.float32)
    assert all(bq._check_srq_roundtrip(float(s)) for s in scales)
    # the intuitive int8 range [-128 s, 127 s] would not: the quantizer divides max(|min|,|max|) by 127
    b = bq.srq_bounds(0.013)
    assert b["max"][0] == -b["min"][0] == np.float64(np.float32(0.013)) * 127


# ------------------------------------------------------------------ slow: builds

# Top-1 agreement of the exact build with transformers' forward, as measured on a fresh clone:
# 252 of 256 positions (0.984375; KL 6.87e-4), the same from two fresh caches and two code
# versions (identical section bytes). The QAT checkpoint
# is trained on the shipped text scripts/data/tiny_train.txt (sha256 of model.safetensors
# f7f18ea87b20...); the corpus it was generated from before depends on the interpreter and on the
# installed setuptools, and another corpus gives another checkpoint (6ea3b13a6fd3..., measured
# 249/256 with the same code: the figure moved with the machine, not with the build).
# Why below 0.99: the 4 disagreeing positions are near-ties of the reference (top-1 minus top-2
# logit 0.005-0.028) that the bundle's named approximations (8-bit per-layer table, float KV cache,
# fp32 kernels; max |logit diff| per position median 0.14) tip over; 5.9% of all positions have a
# margin below 0.05. Another CPU's kernels may tip other near-ties, so the floor is the measured
# count less a paired 95% interval on the discordant positions (McNemar: 1.96 * sqrt(4) / 256).
AGREE_TOKENS = 256
AGREE_MEASURED = 252
AGREE_FLOOR = (AGREE_MEASURED - 1.96 * math.sqrt(AGREE_TOKENS - AGREE_MEASURED)) / AGREE_TOKENS  # 0.9691


@functools.lru_cache(maxsize=None)
def _build(requantize: bool):
    from edgekit.builder import pipeline

    ckpt = H.tiny_qat_checkpoint()
    out = H.workdir() / "dist"
    t0 = time.time()
    # the project cache (keyed by the checkpoint's sha256) lets a rerun reuse the export
    res = pipeline.build("tiny", checkpoint=ckpt, text_only=True, output=out, requantize=requantize, quality=False)
    return res, time.time() - t0


@pytest.mark.slow
def test_exact_build_is_integer_exact_and_carries_every_srq_scale():
    from edgekit.bundle.exactness import exactness_report
    from edgekit.bundle.inspect import inspect_bundle

    res, seconds = _build(False)
    m = res.manifest
    q = m["qat"]
    ck = qat.validate_qat_checkpoint(H.tiny_qat_checkpoint(), get_preset("tiny").config(), preset_name="tiny")

    # recomputed here from the files, not taken from the manifest
    ex = exactness_report(res.bundle, ck)
    assert ex["tensors_exact"] == q["exactness"]["tensors_exact"]
    text_modules = {n for n, mm in ck.modules.items() if "language_model" in n or n == "lm_head"}
    assert {t["module"] for t in ex["tensors"]} == text_modules  # every text weight was read back
    inexact = {t["module"] for t in ex["tensors"] if not t["exact"]}
    # every quantized weight tensor is integer-exact except the per-layer table, whose per-(row, layer)
    # scales a channel-wise EMBEDDING_LOOKUP cannot hold (measured: 1 of 85 tensors)
    assert inexact == {"model.language_model.embed_tokens_per_layer"}, inexact
    assert ex["tensors_exact"] == ex["tensors_total"] - 1
    named = [a["what"] for a in q["approximations"]]
    assert "model.language_model.embed_tokens_per_layer" in named
    assert any("KV-cache" in w for w in named)  # a float KV cache does not carry them: named
    ple = next(t for t in ex["tensors"] if t["module"] == "model.language_model.embed_tokens_per_layer")
    assert ple["bundle_bits"] == 8
    # 2-bit decode MLPs, 4-bit attention and int2 head: integers and scales equal to the checkpoint's
    for name in ("model.language_model.layers.9.mlp.down_proj", "model.language_model.layers.0.self_attn.q_proj",
                 "lm_head", "model.language_model.embed_tokens"):
        t = next(t for t in ex["tensors"] if t["module"] == name)
        assert t["exact"] and t["bundle_bits"] == ck.modules[name].bits, t

    # SRQ: every nonzero activation scale of the text linears is the bundle's int8 scale (zero point 0)
    srq_expected = sum((a > 0) + (b > 0) for a, b in (ck.srq_scales(n) for n in text_modules
                                                        if ck.modules[n].kind == "linear"))
    assert ex["srq_total"] == srq_expected > 0
    assert ex["srq_carried"] == ex["srq_total"]

    # the upstream recovery algorithm got every integer; its float scales were checked one by one
    rec = q["recovery"]
    assert rec["integers_exact_by_recovery"] == rec["tensors"]
    assert rec["scales_exact_by_recovery"] + len(rec["corrected_from_checkpoint"]) == rec["tensors"]

    # static int8 activations in the file (read back by the inspector)
    rep = inspect_bundle(res.bundle)
    fcs = [w for w in rep["weights"] if w["op"] == "FULLY_CONNECTED" and w["module"] != "lm_head"
           and w["weight_dtype"].startswith("INT")]
    assert fcs and all(w["activations"] == "static_int8" for w in fcs)

    # agreement with transformers' forward of the checkpoint, through the runtime
    a = q["agreement"]
    assert a["tokens"] == AGREE_TOKENS, a
    assert a["top1_agreement"] >= AGREE_FLOOR, a
    assert a["kl_mean"] < 1e-3 and a["max_abs_logit_diff"] < 1.0
    assert m["runtime"]["litert_lm"]["ok"]  # the LiteRT-LM CPU engine runs it too


@pytest.mark.slow
def test_requantize_loses_what_the_exact_path_keeps():
    exact, _ = _build(False)
    naive, _ = _build(True)
    e, n = exact.manifest["qat"], naive.manifest["qat"]
    assert naive.bundle.name == "tiny-wNa8o8-qat-requant-text.litertlm"
    assert n["exactness"]["tensors_exact"] < e["exactness"]["tensors_exact"]
    assert n["exactness"]["weights_exact_pct"] < e["exactness"]["weights_exact_pct"]
    assert n["exactness"]["srq_carried"] == 0 < e["exactness"]["srq_carried"]
    assert n["agreement"]["kl_mean"] > 10 * e["agreement"]["kl_mean"]
    assert n["agreement"]["top1_agreement"] <= e["agreement"]["top1_agreement"]
    # same export, same evaluation text: the figures are comparable
    assert n["agreement"]["eval_text_sha256"] == e["agreement"]["eval_text_sha256"]


# ------------------------------------------------------------------ CLI: bad QAT checkpoints


def _cli(*args) -> int:
    from edgekit.cli.main import main

    return main(list(args))


@pytest.mark.parametrize("case", ["bits", "nan", "other-size"])
def test_cli_refuses_bad_qat_checkpoint_before_export(case, tmp_path, capsys, monkeypatch):
    src = H.random_checkpoint("tiny")
    model = "tiny"
    if case == "bits":
        p = H.copy_checkpoint(src, "cli-bits")
        cfg = json.loads((p / "config.json").read_text())
        cfg["quantization_config"]["module_quant_configs"] = {
            r"language_model\.layers\.0\.mlp\.": {"num_bits": 2}, **cfg["quantization_config"]["module_quant_configs"]}
        (p / "config.json").write_text(json.dumps(cfg))
        want = "bits"
    elif case == "nan":
        from safetensors.numpy import load_file, save_file

        p = H.copy_checkpoint(src, "cli-nan")
        d = load_file(str(p / "model.safetensors"))
        k = "model.language_model.layers.0.mlp.up_proj.output_activation_scale"
        d[k] = np.array(np.nan, np.float32)
        save_file(d, str(p / "model.safetensors"))
        want = "NaN"
    else:
        p, model, want = src, "e2b", "different model size"
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    t0 = time.time()
    code = _cli("build", model, "--checkpoint", str(p), "--text-only", "--output", str(tmp_path / "dist"))
    err = capsys.readouterr().err
    assert code == 6, err
    assert time.time() - t0 < 60
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and want in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "cache" / "exports").exists()  # refused before the export started
    assert not (tmp_path / "dist" / f"{model}-wNa8o8-qat-text").exists()


def test_requantize_needs_a_qat_checkpoint(tmp_path, capsys):
    code = _cli("build", "tiny", "--random-weights", "--requantize", "--text-only", "--output", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "--requantize" in err and "Traceback" not in err


@pytest.mark.slow
def test_inspect_shows_qat_exactness_and_passes(capsys):
    res, _ = _build(False)
    code = _cli("inspect", str(res.bundle))
    out = capsys.readouterr().out
    assert code == 0, out
    ex = res.manifest["qat"]["exactness"]
    assert f"integer-exact weight tensors: {ex['tensors_exact']}/{ex['tensors_total']}" in out
    assert f"SRQ activation scales carried: {ex['srq_carried']}/{ex['srq_total']}" in out
    assert "approximated: model.language_model.embed_tokens_per_layer" in out
    assert "vs transformers reference: top-1" in out


@pytest.mark.slow
def test_int8_kv_cache_carries_the_checkpoints_kv_scales():
    """--kv-cache int8 on the exact path: every k/v cache scale of the checkpoint is the scale of its
    int8 cache in every signature (read back from the file), no KV note remains, the engine runs it,
    and agreement with transformers holds (measured 252/256, KL 8.5e-4; float KV: 252/256, 6.9e-4)."""
    from edgekit.builder import pipeline
    from edgekit.bundle.exactness import exactness_report
    from edgekit.bundle.inspect import inspect_bundle

    ck = qat.validate_qat_checkpoint(H.tiny_qat_checkpoint(), get_preset("tiny").config(), preset_name="tiny")
    res = pipeline.build("tiny", checkpoint=H.tiny_qat_checkpoint(), text_only=True, output=H.workdir() / "dist-kv8",
                         quality=False, kv_cache="int8")
    q = res.manifest["qat"]
    assert res.bundle.name == "tiny-wNa8o8-qat-kv8-text.litertlm"
    n_kv = 2 * len(ck.kv_cache_scales())
    assert q["kv_cache_scales"] == {"in_checkpoint": n_kv, "carried": n_kv} and n_kv > 0
    ex = exactness_report(res.bundle, ck)
    assert ex["kv_scales_carried"] == ex["kv_scales_total"] == n_kv
    assert q["exactness"]["kv_scales_carried"] == n_kv
    assert not any("KV" in a["what"] for a in q["approximations"])
    assert ex["srq_carried"] == ex["srq_total"] > 0 and ex["tensors_exact"] == ex["tensors_total"] - 1
    kv = inspect_bundle(res.bundle, with_sha256=False)["tflite"]["tf_lite_prefill_decode"]["kv_cache"]
    assert kv["dtypes"] == ["INT8"] and kv["inconsistent"] == []
    assert res.manifest["runtime"]["litert_lm"]["ok"] and res.manifest["runtime"]["interpreter"]["ok"]
    a = q["agreement"]
    assert a["tokens"] == AGREE_TOKENS and a["top1_agreement"] >= AGREE_FLOOR and a["kl_mean"] < 2e-3, a
