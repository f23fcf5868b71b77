"""edgekit.runtime.signatures.BundleModel against PyTorch and against LiteRT-LM's engine."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.runtime.litertlm_file import NotALiteRTLMFile, read_header
from edgekit.runtime.signatures import BundleModel, softcap

PROMPT = "Once upon a time there was a small robot who liked to read books about the sea and the stars."


def _ids(bm: BundleModel, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return [2] + Tokenizer.from_str(bm.tokenizer_json()).encode(text).ids


@pytest.mark.slow
def test_float_export_matches_pytorch(tiny_source, tiny_float_bundle):
    import torch
    from transformers import Gemma4ForConditionalGeneration

    ckpt, info = tiny_source
    cap = info.config["text_config"]["final_logit_softcapping"]
    bm = BundleModel(tiny_float_bundle, softcap_value=cap)
    ids = _ids(bm, PROMPT)
    assert len(ids) > max(bm.prefill_lengths)  # crosses a prefill window
    model = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = bm.score(ids)
    assert got.shape == (len(ids) - 1, bm.vocab_size)
    err = np.abs(got - ref[:-1]).max()
    assert err < 2e-3, f"max |logit diff| vs PyTorch {err}"
    assert np.array_equal(got.argmax(-1), ref[:-1].argmax(-1))
    # prefill (padded windows) then decode equals the token-by-token path
    bm.reset()
    n = len(ids) - 2
    last = bm.prefill(ids[:n])
    assert np.abs(last - ref[n - 1]).max() < 2e-3
    nxt = bm.decode(ids[n])
    assert np.abs(nxt - ref[n]).max() < 2e-3
    assert bm.position == n + 1


def test_softcap_from_bundle_metadata(tiny_bundles, tiny_source):
    _, info = tiny_source
    cap = info.config["text_config"]["final_logit_softcapping"]
    for path in tiny_bundles.values():
        bm = BundleModel(path)
        assert bm.softcap == pytest.approx(cap)
        logits = bm.prefill(_ids(bm, "hello world"))
        assert np.all(np.abs(logits) <= cap)
    raw = np.array([100.0, -100.0, 0.0], dtype=np.float32)
    assert np.allclose(softcap(raw, 30.0), 30.0 * np.tanh(raw / 30.0))


def test_fp16_prefill_windows_agree_with_decode_path(tiny_bundles):
    """Padded prefill windows + decode give the logits of the token-by-token path (float16 weights)."""
    bm = BundleModel(tiny_bundles["fp16"])
    ids = _ids(bm, PROMPT)
    rows = bm.score(ids)
    for n in (3, max(bm.prefill_lengths) + 1, len(ids) - 1):
        bm.reset()
        last = bm.prefill(ids[:n])
        assert bm.position == n
        assert np.abs(last - rows[n - 1]).max() < 5e-3, n


def test_cache_length_enforced(tiny_bundles):
    bm = BundleModel(tiny_bundles["fp16"])
    with pytest.raises(ValueError, match="cache length"):
        bm.prefill([5] * (bm.cache_length + 1))
    with pytest.raises(ValueError):
        bm.score([5])


def test_not_a_bundle(tmp_path):
    bad = tmp_path / "x.litertlm"
    bad.write_bytes(b"NOTLITERT" + b"\0" * 100)
    with pytest.raises(NotALiteRTLMFile):
        read_header(bad)
    with pytest.raises(NotALiteRTLMFile):
        BundleModel(bad)


def test_section_table_matches_litert_lm_builder(tiny_bundles, tmp_path):
    """Our header reader and litert-lm-builder's unpack see the same sections and sizes."""
    import tomllib

    from litert_lm_builder import litertlm_builder

    path = tiny_bundles["wNa8o8"]
    litertlm_builder.LitertLmFileBuilder.unpack(str(path), str(tmp_path))
    toml = tomllib.loads((tmp_path / "model.toml").read_text())
    theirs = [(s["section_type"], (tmp_path / s["data_path"]).stat().st_size) for s in toml["section"]]
    ours = read_header(path).sections
    tfl = [(s.data_type, s.size) for s in ours if s.data_type == "TFLiteModel"]
    assert tfl == [(t, n) for t, n in theirs if t == "TFLiteModel"]
    assert len(ours) == len(theirs)


@pytest.mark.slow
def test_engine_and_interpreter_generate_the_same_greedy_text_fp16(tiny_bundles):
    """LiteRT-LM's CPU engine runs the fp16 bundle; greedy text equals the interpreter path's."""
    from tokenizers import Tokenizer

    from edgekit.builder.verify import engine_generate

    res = engine_generate(tiny_bundles["fp16"], "Once upon a time there was", 10)
    assert res["ok"], res
    bm = BundleModel(tiny_bundles["fp16"])
    toks = bm.generate([res["bos"]] + res["prompt_ids"], 10)
    text = Tokenizer.from_str(bm.tokenizer_json()).decode(toks)
    assert text == res["text"]


@pytest.mark.slow
def test_engine_runs_static_int8_bundle(tiny_bundles):
    """The static-int8 (wNa8o8) bundle loads in LiteRT-LM's CPU engine and generates tokens."""
    from edgekit.builder.verify import check_engine, engine_generate

    from tokenizers import Tokenizer

    res = engine_generate(tiny_bundles["wNa8o8"], "Once upon a time there was", 12)
    assert res["ok"] and res["text"], res
    # same file, two runtimes, same greedy text (symmetric int8 activations; with the
    # quantizer's asymmetric default the engine's int8 path diverges from the interpreter's)
    bm = BundleModel(tiny_bundles["wNa8o8"])
    toks = bm.generate([res["bos"]] + res["prompt_ids"], 12)
    assert Tokenizer.from_str(bm.tokenizer_json()).decode(toks) == res["text"]
    bench = check_engine(tiny_bundles["wNa8o8"], prefill=16, decode=8)
    assert bench["ok"], bench
    assert bench["decode_tokens"] == 8 and bench["prefill_tokens"] == 16
    assert bench["decode_tps"] > 0
