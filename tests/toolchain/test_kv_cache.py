"""The int8 KV cache (``--kv-cache int8``, classic route): the KV-cache inputs and outputs of every
prefill/decode signature are int8 with one calibrated scale per cache, the same in every signature
(ai-edge-quantizer's ``align_quant_stats``); the LiteRT-LM CPU engine allocates its KV buffers in
the graph's type and runs it; quality against fp16 is that of the float-KV build.

Measured on the tiny model (engine scoring, 4 windows, 508 tokens, vs the tiny fp16 bundle): ppl ratio
1.5953 with the int8 KV cache, 1.6016 with the float one (mean |log p| delta 1.007 vs 1.009); the
same greedy text from "The quick brown fox". The bound below (5%) is well outside that 0.4% gap and
well inside what a broken cache gives (a zero or misaligned scale scrambles every later token).
"""

from __future__ import annotations

import math

import pytest

from edgekit.builder import pipeline as pl
from edgekit.builder import quality_engine as qe
from edgekit.bundle.inspect import check, inspect_bundle
from edgekit.errors import UsageError
from edgekit.models.presets import get_preset
from edgekit.schemes import load_scheme

pytestmark = pytest.mark.slow
TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def kv8(tmp_path_factory):
    from tests.fixtures_bundles import bundle_cache_root

    out = tmp_path_factory.mktemp("kv8")
    return pl.build("tiny", text_only=True, output=out, cache_dir=bundle_cache_root(), quality=False,
                    kv_cache="int8")


@pytest.fixture(autouse=True)
def own_scores_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(qe, "scores_dir", lambda: tmp_path / "scores")


def test_int8_kv_cache_is_in_the_file_and_runs_in_both_runtimes(kv8, tiny_bundles):
    m = kv8.manifest
    assert kv8.bundle.name == "tiny-wNa8o8-kv8-text.litertlm"
    assert m["scheme"]["kv_cache"] == "int8" and m["scheme"]["name"] == "wNa8o8-kv8"
    rep = inspect_bundle(kv8.bundle)
    kv = rep["tflite"]["tf_lite_prefill_decode"]["kv_cache"]
    base = inspect_bundle(tiny_bundles["wNa8o8"], with_sha256=False)["tflite"]["tf_lite_prefill_decode"]["kv_cache"]
    assert kv["dtypes"] == ["INT8"] and kv["caches"] == base["caches"] and kv["elements"] == base["elements"]
    assert kv["bytes"] * 4 == base["bytes"]  # a quarter of the float32 cache
    assert len(kv["scales"]) == kv["caches"] and all(s > 0 for s in kv["scales"].values())
    assert kv["inconsistent"] == []  # one scale per cache in prefill and decode alike
    scheme = load_scheme("wNa8o8", TINY)
    assert check(rep, pl._with_kv_cache(scheme, "int8", False), TINY, m) == []
    assert any("scheme keeps it float" in v for v in check(rep, scheme, TINY))
    assert m["runtime"]["interpreter"]["ok"] and m["runtime"]["litert_lm"]["ok"]
    assert m["runtime"]["litert_lm"]["decode_tokens"] > 0


def test_int8_kv_cache_costs_no_quality_against_the_float_cache(kv8, tiny_bundles):
    kw = {"max_tokens": 4 * 127}
    q8 = qe.evaluate_engine(kv8.bundle, tiny_bundles["fp16"], **kw)
    qf = qe.evaluate_engine(tiny_bundles["wNa8o8"], tiny_bundles["fp16"], **kw)
    assert q8["tokens"] == qf["tokens"] == 508
    assert abs(math.log(q8["ppl_ratio"] / qf["ppl_ratio"])) < 0.05, (q8["ppl_ratio"], qf["ppl_ratio"])


def test_kv_cache_option_refuses_what_it_cannot_build():
    fp16 = load_scheme("fp16", TINY)
    with pytest.raises(UsageError, match="static int8 activations"):
        pl._with_kv_cache(fp16, "int8", False)
    with pytest.raises(UsageError, match="QAT"):
        pl._with_kv_cache(load_scheme("wNa8o8", TINY), "int8", True)
    w = pl._with_kv_cache(load_scheme("wNa8o8", TINY), "int8", False)
    assert (w.name, w.kv_cache) == ("wNa8o8-kv8", "int8")
    assert pl._with_kv_cache(w, "float", False).name == "wNa8o8"
    with pytest.raises(UsageError, match="classic route only"):
        pl.build("tiny", text_only=True, kv_cache="int8", route="streamed", quality=False)
