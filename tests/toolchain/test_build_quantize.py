"""Static int8 activations are faithful: with 8-bit weights, the static-int8 bundle tracks fp16.

This isolates the activation path (calibration, fixed scales, float graph inputs/outputs)
from the 2/4-bit weights of wNa8o8, whose loss is the weights' (see the build report).
"""

from __future__ import annotations

import pytest

W8A8 = """
name = "w8a8o8"
description = "8-bit channel-wise weights everywhere, static int8 activations and outputs"
default_weight_bits = 8
activations = "int8_static"
outputs = "int8"
rules = []
"""


@pytest.mark.slow
def test_static_int8_activations_track_fp16(tiny_bundles, tmp_path):
    from fixtures_bundles import bundle_cache_root

    from edgekit import quality
    from edgekit.builder.pipeline import build
    from edgekit.bundle.inspect import inspect_bundle

    toml = tmp_path / "w8a8o8.toml"
    toml.write_text(W8A8)
    res = build("tiny", scheme=toml, text_only=True, output=tmp_path / "dist", cache_dir=bundle_cache_root(),
                quality=False)
    rep = inspect_bundle(res.bundle)
    fcs = [w for w in rep["weights"] if w["op"] == "FULLY_CONNECTED"]
    assert fcs and all(w["weight_dtype"] == "INT8" and w["activations"] == "static_int8" for w in fcs)
    q = quality.evaluate(res.bundle, tiny_bundles["fp16"], max_tokens=512)
    # measured on the trained tiny model: KL ~0.001, top-1 ~96%, ppl ratio ~1.002
    # (ai-edge-quantizer's default moving-average ranges gave KL ~0.065, top-1 ~86%)
    assert q["kl_mean"] < 0.02, q
    assert q["top1_agreement"] > 0.9, q
    assert q["ppl_ratio"] < 1.02, q
