"""A QAT (``quant_method: gemma``) checkpoint through the streamed build route.

The streamed route (edgekit/builder/streamed.py) reads the QAT checkpoint itself: the
stand-in export loads only its float tensors (norms, ``layer_scalar``,
``per_layer_model_projection``), the activation statistics are the checkpoint's SRQ scales
(``edgekit.builder.qat.srq_qsv``), and fill writes the stored integers and per-row scales
into every op (``edgekit.builder.fill.QatCheckpointWeights``). No dequantized float
checkpoint is written. The bundle is read back here against the checkpoint
(``edgekit.bundle.exactness``), independently of what the manifest says.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest

import qat_helpers as H
from edgekit.models import qat
from edgekit.models.presets import get_preset

PLE = "model.language_model.embed_tokens_per_layer"


def _tiny_ckpt(path):
    return qat.validate_qat_checkpoint(path, get_preset("tiny").config(), preset_name="tiny")


# ------------------------------------------------------------------ fast: the pieces


def test_text_linears_reads_unpacked_shapes_of_a_qat_checkpoint():
    """The stand-in's tie plan groups by shape: a packed int4/int2 weight gives its real width."""
    from edgekit.builder import streamed as sm

    src = H.random_checkpoint("tiny")
    ck = _tiny_ckpt(src)
    lin = sm.text_linears(src)
    layer_mods = {n: m for n, m in ck.modules.items() if n.startswith("model.language_model.layers.")}
    assert layer_mods and set(layer_mods) <= set(lin)
    for n, m in layer_mods.items():
        assert lin[n] == (m.rows, m.width), n
    assert {m.bits for m in layer_mods.values()} >= {2, 4, 8}  # every packing was exercised


def test_fill_writes_checkpoint_integers_block_by_block_without_a_float_copy(monkeypatch):
    """Each quantized Linear / main table: the stored integers and scales, read a row block at a
    time; neither the whole-tensor readers nor any dequantization runs for them."""
    from ai_edge_quantizer.transformations import transformation_utils as tu

    from edgekit.builder import fill as fl

    ck = _tiny_ckpt(H.random_checkpoint("tiny"))
    for forbidden in ("integers", "dequantized", "dequantized_rows"):
        monkeypatch.setattr(ck, forbidden, lambda *a, **k: (_ for _ in ()).throw(AssertionError("float/whole read")))
    monkeypatch.setattr(fl, "ROW_BLOCK_BYTES", 4096)  # many blocks even on tiny
    seen: list[int] = []
    orig = ck.integer_rows

    def rows(name, start, stop):
        seen.append(stop - start)
        return orig(name, start, stop)

    monkeypatch.setattr(ck, "integer_rows", rows)
    w = fl.QatCheckpointWeights(ck)
    dt = {2: fl.INT2, 4: fl.INT4, 8: fl.INT8}
    names = ["model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.9.mlp.down_proj",
             "model.language_model.layers.0.per_layer_input_gate", "model.language_model.embed_tokens", "lm_head"]
    clipped = 0
    for name in names:
        m = ck.modules[name]
        seen.clear()
        data, scales = fl._weight_bytes(w, name, dt[m.bits], "embedding" if m.kind == "embedding" else "fc")
        assert len(seen) > 1 and max(seen) <= max(1, 4096 // (m.width * 4)), (name, seen)
        want = np.concatenate([orig(name, s, min(m.rows, s + 64)) for s in range(0, m.rows, 64)])
        if m.bits == 8:  # -128 is clipped to -127 (LiteRT int8 weights are narrow-range), counted
            assert w.stats[name].get("int8_clipped", 0) == int((want == -128).sum())
            want = np.maximum(want, -127).astype(np.int8)
        want_bytes = (tu.pack_data(m.bits, want) if m.bits != 8 else want).view(np.uint8).reshape(-1)
        assert np.array_equal(data, want_bytes), name
        assert np.array_equal(scales.view(np.uint32), qat.read_tensor(
            ck.entries[f"{name}.{'embedding_scale' if m.kind == 'embedding' else 'weight_scale'}"]
        ).astype(np.float32).reshape(-1).view(np.uint32)), name
        assert w.stats[name]["written"] == "checkpoint integers and scales"
        clipped += w.stats[name].get("int8_clipped", 0)
    assert clipped > 0  # the random checkpoint holds int8 -128s: the clipping branch ran


def test_srq_qsv_gives_back_every_checkpoint_scale_exactly():
    """The qsv the stand-in is quantized with: ai-edge-quantizer's min/max arithmetic returns the
    checkpoint's SRQ scale bit for bit; zero-scale Linears (lm_head) get no statistics."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    from edgekit.builder import qat as bq

    ck = _tiny_ckpt(H.random_checkpoint("tiny"))
    fcs = [(n, f"{n}/in", f"{n}/out") for n, m in ck.modules.items()
           if m.kind == "linear" and n.startswith(("model.language_model", "lm_head"))]
    qsv, rec = bq.srq_qsv(ck, fcs)
    assert rec["roundtrip_failed"] == [] and rec["scales_checked_roundtrip"] > 0
    n_set = 0
    for n, i, o in fcs:
        s_in, s_out = ck.srq_scales(n)
        if s_in == 0 and s_out == 0:
            assert i not in qsv and o not in qsv
            continue
        for name, s in ((i, s_in), (o, s_out)):
            _, sc = uqt.tensor_zp_scale_from_min_max(qsv[name]["min"], qsv[name]["max"], 8, True,
                                                     qtyping.QuantGranularity.TENSORWISE)
            assert np.float32(np.asarray(sc).reshape(-1)[0]).view(np.uint32) == np.float32(s).view(np.uint32)
            n_set += 1
    assert n_set == len(qsv) == rec["activation_tensors_set"] > 0


def test_reference_agreement_is_skipped_with_its_reason_when_it_cannot_fit(monkeypatch):
    """transformers' float32 forward of a full-size checkpoint does not fit beside the bundle:
    the qat record says why instead of a figure, and inspect prints that reason."""
    from edgekit.builder import pipeline
    from edgekit.builder import qat as bq
    from edgekit.bundle.exactness import format_qat

    src = H.random_checkpoint("tiny")
    b = bq.QatBuild.prepare(src, "tiny", H.workdir(), dequantize=False)
    assert b.float_dir is None  # validated only: no dequantized copy
    bundle = src / "model.safetensors"  # any file: only its size is read
    monkeypatch.setattr(pipeline, "mem_available", lambda: 64 << 30)
    assert b.reference_skip(bundle) is None
    monkeypatch.setattr(pipeline, "mem_available", lambda: 1 << 20)
    why = b.reference_skip(bundle)
    assert why and "available" in why
    line = format_qat({"checkpoint": str(src), "agreement": {"skipped": why}})
    assert f"vs transformers reference: skipped ({why})" in line


def test_streamed_route_refuses_requantize(tmp_path, capsys):
    from edgekit.cli.main import main

    src = H.random_checkpoint("tiny")
    code = main(["build", "tiny", "--checkpoint", str(src), "--text-only", "--route", "streamed", "--requantize",
                 "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--requantize" in err and "Traceback" not in err, err


# ------------------------------------------------------------------ slow: the build

# Measured on this route (tiny QAT checkpoint of tests/qat_helpers.py, 40 steps): top-1 agreement
# with transformers' forward 255/256 (0.9961), KL 7.2e-4. Floor: the measured count less a paired
# 95% interval on the discordant positions (1.96 * sqrt(1) / 256), as in tests/toolchain/test_qat_build.py.
AGREE_TOKENS = 256
AGREE_MEASURED = 255
AGREE_FLOOR = (AGREE_MEASURED - 1.96 * math.sqrt(AGREE_TOKENS - AGREE_MEASURED)) / AGREE_TOKENS  # 0.9885


@functools.lru_cache(maxsize=None)
def _build():
    from edgekit.builder import pipeline

    def no_float_copy(*a, **k):
        raise AssertionError("the streamed route wrote a dequantized float checkpoint")

    ckpt = H.tiny_qat_checkpoint()
    orig = qat.write_dequantized_checkpoint
    qat.write_dequantized_checkpoint = no_float_copy
    try:
        t0 = time.time()
        res = pipeline.build("tiny", checkpoint=ckpt, text_only=True, output=H.workdir() / "dist-streamed",
                             quality=False, route="streamed")
    finally:
        qat.write_dequantized_checkpoint = orig
    return res, time.time() - t0


@pytest.mark.slow
def test_streamed_qat_build_is_integer_exact_with_exact_srq_scales_and_generates():
    from edgekit.bundle.exactness import exactness_report
    from edgekit.bundle.inspect import inspect_bundle

    res, _ = _build()
    m = res.manifest
    assert m["build"]["estimate"] is not None and m["lock"]["options"]["route"] == "streamed"
    q = m["qat"]
    assert q["route"] == "streamed" and q["mode"] == "exact"
    ck = _tiny_ckpt(H.tiny_qat_checkpoint())

    # read back from the file, not taken from the manifest
    ex = exactness_report(res.bundle, ck)
    text = {n for n in ck.modules if "language_model" in n or n == "lm_head"}
    assert {t["module"] for t in ex["tensors"]} == text
    linears = {n for n in text if ck.modules[n].kind == "linear"}
    assert linears and all(t["exact"] and t["bundle_bits"] == ck.modules[t["module"]].bits
                           for t in ex["tensors"] if t["module"] in linears)
    main_table = next(t for t in ex["tensors"] if t["module"] == "model.language_model.embed_tokens")
    assert main_table["exact"]  # one scale per row: carried as stored
    # the per-layer table's per-(row, layer) scales: re-quantized per row at 8 bits, as on the classic path
    assert {t["module"] for t in ex["tensors"] if not t["exact"]} == {PLE}
    assert next(t for t in ex["tensors"] if t["module"] == PLE)["bundle_bits"] == 8
    assert PLE in [a["what"] for a in q["approximations"]]
    srq_expected = sum((a > 0) + (b > 0) for a, b in (ck.srq_scales(n) for n in linears))
    assert ex["srq_total"] == srq_expected > 0 and ex["srq_carried"] == ex["srq_total"]
    assert q["exactness"]["srq_carried"] == ex["srq_carried"]
    assert q["exactness"]["tensors_exact"] == ex["tensors_exact"] == ex["tensors_total"] - 1
    assert q["weights"]["written_as_stored"] == len(text) - 1
    assert q["srq"]["roundtrip_failed"] == []

    # no calibration ran (and _build refuses any dequantized float checkpoint being written)
    assert "calibrate" not in m["build"]["stages_s"]
    assert m["build"]["calibration"] is None

    # static int8 activations in the file, weight-only lm_head (its SRQ scales are 0)
    rep = inspect_bundle(res.bundle)
    fcs = [w for w in rep["weights"] if w["op"] == "FULLY_CONNECTED" and w["module"] != "lm_head"
           and w["weight_dtype"].startswith("INT")]
    assert fcs and all(w["activations"] == "static_int8" for w in fcs)

    # agreement with transformers' forward, and the engine generates
    a = q["agreement"]
    assert a["tokens"] == AGREE_TOKENS and a["top1_agreement"] >= AGREE_FLOOR, a
    assert a["kl_mean"] < 1e-3
    assert m["runtime"]["litert_lm"]["ok"] and m["runtime"]["litert_lm"]["decode_tokens"] > 0
    assert m["runtime"]["interpreter"]["ok"]


@pytest.mark.slow
def test_streamed_fp16_baseline_of_a_qat_checkpoint_is_its_dequantized_float(tmp_path):
    """The float baseline on the streamed route: fill writes ``int x scale`` read row block by
    row block (no dequantized checkpoint written), and it agrees with transformers' forward."""
    from edgekit.builder import pipeline

    def no_float_copy(*a, **k):
        raise AssertionError("the streamed route wrote a dequantized float checkpoint")

    orig = qat.write_dequantized_checkpoint
    qat.write_dequantized_checkpoint = no_float_copy
    try:
        res = pipeline.build("tiny", checkpoint=H.tiny_qat_checkpoint(), text_only=True, scheme="fp16",
                             output=tmp_path / "dist", quality=False, route="streamed")
    finally:
        qat.write_dequantized_checkpoint = orig
    q = res.manifest["qat"]
    assert q["mode"] == "dequantized float baseline"
    # measured 248/256 (0.96875, KL 1.3e-3): the reference rounds every activation to its SRQ scale,
    # the float baseline does not (the exact wNa8o8-qat bundle agrees better, 255/256). Floor: the
    # measured count less a paired 95% interval on the 8 discordant positions.
    floor = (248 - 1.96 * math.sqrt(AGREE_TOKENS - 248)) / AGREE_TOKENS  # 0.9471
    assert q["agreement"]["tokens"] == AGREE_TOKENS and q["agreement"]["top1_agreement"] >= floor, q["agreement"]
    assert res.manifest["runtime"]["litert_lm"]["ok"]


@pytest.mark.slow
def test_streamed_qat_build_carries_the_kv_cache_scales(tmp_path):
    """--kv-cache int8 on the streamed route (the full-size path) from a QAT checkpoint: the stand-in's KV
    caches get the checkpoint's k/v cache scales and the fill leaves them: read back from the file."""
    from edgekit.builder import pipeline
    from edgekit.bundle.exactness import exactness_report

    res = pipeline.build("tiny", checkpoint=H.tiny_qat_checkpoint(), text_only=True, output=tmp_path / "dist",
                         quality=False, route="streamed", kv_cache="int8")
    q = res.manifest["qat"]
    ck = _tiny_ckpt(H.tiny_qat_checkpoint())
    n_kv = 2 * len(ck.kv_cache_scales())
    assert res.bundle.name == "tiny-wNa8o8-qat-kv8-text.litertlm" and q["route"] == "streamed"
    assert q["kv_cache_scales"] == {"in_checkpoint": n_kv, "carried": n_kv} and n_kv > 0
    ex = exactness_report(res.bundle, ck)
    assert ex["kv_scales_carried"] == ex["kv_scales_total"] == n_kv
    assert ex["srq_carried"] == ex["srq_total"] > 0
    assert not any("KV" in a["what"] for a in q["approximations"])
    assert res.manifest["runtime"]["litert_lm"]["ok"] and res.manifest["runtime"]["interpreter"]["ok"]
    # measured 253/256 (KL 8.6e-4; the float KV cache of the same build: 255/256, 7.2e-4; the tiny checkpoint's
    # k scales are k_norm amax / 127 taken before RoPE, so some rotated keys clip). Floor: the measured count
    # less a paired 95% interval on the 3 discordant positions.
    floor = (253 - 1.96 * math.sqrt(AGREE_TOKENS - 253)) / AGREE_TOKENS  # 0.9751
    assert q["agreement"]["tokens"] == AGREE_TOKENS and q["agreement"]["top1_agreement"] >= floor, q["agreement"]
