"""edgekit.builder.strategies: the registry of quantize strategies, each callable without an export.

The strategies run here on the tiny stand-in's sections (already converted once per session
for tests/toolchain/test_streamed.py), with a ``run`` that records the steps; the whole builds that
go through them are in tests/toolchain/test_build.py, test_streamed.py and test_qat_build.py.
"""

from __future__ import annotations

import types

import pytest

from test_streamed import SEC_PD, _classic_float_bundle, _scheme, _standin


def _sch(kind: str):
    return _scheme({"fp16": "fp16", "wNa8o8": "wNa8o8"}.get(kind, kind))


def test_every_kind_the_build_can_pick_has_a_strategy():
    from edgekit.builder import strategies as sg

    fp16, w = _sch("fp16"), _sch("wNa8o8")
    f32 = types.SimpleNamespace(is_float=True, float_dtype="float32", static_activations=False)
    dyn = types.SimpleNamespace(is_float=False, float_dtype=None, static_activations=False)
    exact, naive = types.SimpleNamespace(exact=True), types.SimpleNamespace(exact=False)
    picked = {
        sg.kind_of(w, None, True): "streamed",
        sg.kind_of(fp16, None, False): "float16",
        sg.kind_of(f32, None, False): "float32",
        sg.kind_of(w, exact, False): "qat_exact",
        sg.kind_of(w, naive, False): "static",  # --requantize: a QAT checkpoint calibrated like float weights
        sg.kind_of(w, None, False): "static",
        sg.kind_of(dyn, None, False): "dynamic",
    }
    assert all(k == v for k, v in picked.items()), picked
    assert set(picked) == set(sg.STRATEGIES)


def test_a_new_kind_is_one_function(monkeypatch, tmp_path):
    from edgekit.builder import strategies as sg

    seen = []
    monkeypatch.setitem(sg.STRATEGIES, "mine", lambda job: (seen.append(job.secs) or {}, {"k": 1}))
    job = sg.QuantizeJob(secs={"a": tmp_path / "a.tflite"}, scheme=None, work=tmp_path, run=None)
    assert sg.quantize_text("mine", job) == ({}, {"k": 1}) and seen == [job.secs]
    with pytest.raises(KeyError):
        sg.quantize_text("no-such-kind", job)


def _job(kind_scheme: str, tmp_path):
    from edgekit.builder import strategies as sg

    _res, _toml, secs = _standin("wNa8o8")
    steps = []

    def run(stage, what, fn, *a, **k):
        steps.append((stage, what))
        return fn(*a, **k)

    return sg.QuantizeJob(secs=dict(secs), scheme=_sch(kind_scheme), work=tmp_path, run=run), steps


@pytest.mark.slow
def test_float16_and_float32_strategies_on_stand_in_sections(tmp_path):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgekit.builder import strategies as sg

    job, steps = _job("fp16", tmp_path)
    out, calib = sg.quantize_text("float16", job)
    assert calib is None and set(out) == set(job.secs) and all(p.is_file() for p in out.values())
    assert [s for s, _ in steps] == ["quantize"] * len(job.secs)
    model = fu.read_model(str(out[SEC_PD]))
    types_ = {t.type for sg_ in model.subgraphs for t in sg_.tensors}
    assert 1 in types_  # FLOAT16 weights (schema TensorType 1)
    assert sg.quantize_text("float32", job) == ({}, None)


@pytest.mark.slow
def test_dynamic_strategy_quantizes_prefill_decode_and_the_lookup_tables(tmp_path):
    from edgekit.builder import quantize as qz
    from edgekit.builder import strategies as sg

    # the classic route's float sections (the stand-in's tensor names are mapped by fill.map_ops instead)
    secs = qz.section_files(qz.unpack(_classic_float_bundle(), tmp_path / "unpacked"))
    job, steps = _job("wNa8o8", tmp_path)
    job.secs = dict(secs)
    out, calib = sg.quantize_text("dynamic", job)
    assert calib is None and SEC_PD in out and out[SEC_PD].is_file()
    assert steps[0] == ("quantize", "prefill/decode: N-bit weights (dynamic activations)")
    assert len(out) >= 2  # the embedder's lookup table too
