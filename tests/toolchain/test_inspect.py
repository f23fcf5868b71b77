"""edgekit.bundle.inspect: what the tiny bundles hold, read back from the files, and the check."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from edgekit.bundle.inspect import check, inspect_bundle
from edgekit.cli.main import main
from edgekit.models.presets import get_preset
from edgekit.schemes import load_scheme

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def reports(tiny_bundles):
    return {k: inspect_bundle(p) for k, p in tiny_bundles.items()}


def _fc(report, signature="decode"):
    return [w for w in report["weights"] if w["op"] == "FULLY_CONNECTED" and w["signature"] == signature]


def test_wna8o8_decode_layer_mlps_are_2bit_and_attention_4bit(reports):
    r = reports["wNa8o8"]
    decode_layers = set(TINY.decode_layers)
    assert decode_layers, "tiny must have KV-shared decode layers"
    fcs = _fc(r)
    mlp = [w for w in fcs if ".mlp." in w["module"]]
    attn = [w for w in fcs if ".self_attn." in w["module"]]
    # every layer's gate, up and down projections and q/o (+k/v in KV layers) are present
    assert {w["layer"] for w in mlp} == set(range(TINY.num_layers))
    assert len(mlp) == 3 * TINY.num_layers
    for layer in range(TINY.num_layers):  # gate (feeds the GELU) and up are told apart
        names = sorted(w["module"].rsplit(".", 1)[1] for w in mlp if w["layer"] == layer)
        assert names == ["down_proj", "gate_proj", "up_proj"], (layer, names)
    for w in mlp:
        want = "INT2" if w["layer"] in decode_layers else "INT4"
        assert w["weight_dtype"] == want, (w["module"], w["weight_dtype"])
        # channel-wise: one scale per output row
        assert w["weight_scales"] == w["shape"][0] and w["quantized_dimension"] == 0
    assert attn and all(w["weight_dtype"] == "INT4" for w in attn)
    assert r["layers"][str(max(decode_layers))]["mlp"] == [2]
    assert r["layers"]["0"]["mlp"] == [4] and r["layers"]["0"]["attention"] == [4]


def test_wna8o8_activations_are_static_int8(reports):
    r = reports["wNa8o8"]
    for sig in ("decode", "prefill_32"):
        quantized = [w for w in _fc(r, sig) if w["weight_dtype"].startswith("INT")]
        assert quantized, sig
        for w in quantized:
            # static: the FC input is INT8 with exactly one scale/zero point stored in the file
            assert w["input_dtype"] == "INT8" and w["input_scales"] == 1, (sig, w["module"])
            assert w["input_scale"] > 0 and w["input_zero_point"] == 0  # symmetric
            assert w["activations"] == "static_int8"
            assert w["output_dtype"] == "INT8"  # "o8": int8 outputs with a fixed scale
    # the graph's own inputs/outputs stay float (engine's sampler and KV cache)
    from edgekit.runtime.signatures import BundleModel

    bm = BundleModel(r["path"])
    assert bm._decode.get_output_details()["logits"]["dtype"].__name__ == "float32"
    assert all(bm._kv_dtypes[n].__name__ == "float32" for n in bm.kv_names)


def test_embeddings_and_sections(reports):
    r = reports["wNa8o8"]
    names = [s["name"] for s in r["sections"]]
    assert "tf_lite_per_layer_embedder" in names and "tf_lite_embedder" in names
    assert not r["has_vision"] and not r["has_audio"]
    assert not any("vision" in n or "audio" in n for n in names)
    emb = {w["module"]: w for w in r["weights"] if w["op"] == "EMBEDDING_LOOKUP"}
    main_t = emb["model.language_model.embed_tokens"]
    ple = emb["model.language_model.embed_tokens_per_layer"]
    assert main_t["weight_dtype"] == "INT2" and main_t["weight_scales"] == TINY.vocab_size
    assert ple["weight_dtype"] == "INT4" and ple["section"] == "tf_lite_per_layer_embedder"
    head = [w for w in _fc(r) if w["module"] == "lm_head"]
    assert len(head) == 1 and head[0]["weight_dtype"] == "INT2" and head[0]["shape"][0] == TINY.vocab_size


def test_fp16_bundle_has_float16_weights_and_float_activations(reports):
    r = reports["fp16"]
    ws = [w for w in r["weights"]]
    assert ws and all(w["weight_dtype"] == "FLOAT16" for w in ws)
    assert all(w["activations"] == "float" for w in ws if w["op"] == "FULLY_CONNECTED")
    summ = r["dtype_summary"]["tf_lite_prefill_decode"]
    assert summ["FLOAT16"]["bytes"] > 100 * summ.get("FLOAT32", {"bytes": 1})["bytes"] / 100


def test_check_clean_against_own_scheme(reports, tiny_manifests):
    for k in ("wNa8o8", "fp16"):
        assert check(reports[k], load_scheme(k, TINY), TINY, tiny_manifests[k]) == []


def test_check_finds_wrong_bits_and_dynamic_activations(reports, tiny_manifests):
    from dataclasses import replace

    from edgekit.schemes import Rule

    w8 = load_scheme("wNa8o8", TINY)
    # a scheme that wants the decode layers' MLPs at 4 bits
    four = replace(w8, weight_rules=tuple(r for r in w8.weight_rules if r.bits != 2 or "mlp" not in r.pattern))
    v = check(reports["wNa8o8"], four, TINY)
    layer = max(TINY.decode_layers)
    assert any(f"layer {layer} mlp.gate_proj is 2-bit, scheme says 4-bit" in x for x in v), v
    # fp16 bundle checked as wNa8o8: weights float16 and activations float
    v2 = check(reports["fp16"], w8, TINY)
    assert any("is float16, scheme says 4-bit" in x for x in v2)
    assert any("are float, not static int8" in x for x in v2)
    assert Rule  # imported for the scheme API


def test_check_text_only_and_manifest(reports, tiny_manifests):
    r = copy.deepcopy(reports["wNa8o8"])
    m = tiny_manifests["wNa8o8"]
    r["has_vision"] = True
    v = check(r, load_scheme("wNa8o8", TINY), TINY, m)
    assert "vision section present in a text-only bundle" in v
    r2 = copy.deepcopy(reports["wNa8o8"])
    r2["sha256"] = "0" * 64
    r2["has_per_layer_embedder"] = False
    v2 = check(r2, load_scheme("wNa8o8", TINY), TINY, m)
    assert any("sha256 differs" in x for x in v2)
    assert any("per-layer embedding section" in x for x in v2)


def test_manifest_matches_file(reports, tiny_manifests, tiny_bundles):
    from edgekit.fsutil import sha256_file

    for k, p in tiny_bundles.items():
        m, r = tiny_manifests[k], reports[k]
        assert m["bundle"]["sha256"] == sha256_file(p) == r["sha256"]
        assert m["bundle"]["bytes"] == p.stat().st_size
        assert m["dtype_summary"] == r["dtype_summary"]
        assert [s["bytes"] for s in m["sections"]] == [s["bytes"] for s in r["sections"]]


def test_cli_inspect_ok_json_and_violations(tiny_bundles, tmp_path, capsys):
    assert main(["inspect", str(tiny_bundles["wNa8o8"])]) == 0
    out = capsys.readouterr().out
    assert "check: ok" in out and "layer" in out
    assert main(["inspect", str(tiny_bundles["wNa8o8"].parent), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["violations"] == [] and data["report"]["layers"]
    # checked against the wrong scheme: listed, exit 10
    assert main(["inspect", str(tiny_bundles["fp16"]), "--scheme", "wNa8o8"]) == 10
    captured = capsys.readouterr()
    assert "violation" in captured.out and "error:" in captured.err
    # a bundle changed after the build no longer matches its manifest
    d = tmp_path / "copy"
    shutil.copytree(tiny_bundles["wNa8o8"].parent, d)
    f = d / tiny_bundles["wNa8o8"].name
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert main(["inspect", str(f)]) == 10
    assert "sha256 differs" in capsys.readouterr().out


def test_cli_inspect_bad_inputs(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.litertlm")]) == 2
    junk = tmp_path / "junk.litertlm"
    junk.write_bytes(b"hello")
    assert main(["inspect", str(junk)]) == 10
    err = capsys.readouterr().err
    assert "not a .litertlm file" in err and "Traceback" not in err


def test_kv_cache_is_reported_and_checked_against_the_scheme(reports, tiny_manifests):
    from dataclasses import replace

    kv = reports["wNa8o8"]["tflite"]["tf_lite_prefill_decode"]["kv_cache"]
    # read from the file: every cache input is float32
    assert kv["dtypes"] == ["FLOAT32"] and kv["caches"] > 0 and kv["bytes"] == 4 * kv["elements"]
    assert kv["scales"] == {} and kv["inconsistent"] == []
    w8 = load_scheme("wNa8o8", TINY)
    assert w8.kv_cache == "float"
    v = check(reports["wNa8o8"], replace(w8, kv_cache="int8"), TINY)
    assert "KV cache is FLOAT32, scheme says int8" in v
    r = copy.deepcopy(reports["wNa8o8"])
    r["tflite"]["tf_lite_prefill_decode"]["kv_cache"].update(dtypes=["INT8"], inconsistent=["kv_cache_k_0 in decode"])
    v2 = check(r, w8, TINY)
    assert "KV cache is INT8, scheme keeps it float" in v2
    assert any("differs between signatures: kv_cache_k_0 in decode" in x for x in v2)
