"""The streamed build route on tiny: stand-in plan and export, weight filling, vocabulary restore, CLI.

Each section produced by the route (edgekit/builder/standin.py, fill.py, streamed.py) is
compared with what the classic route makes of the same weights:

- the stand-in filled at float32 gives the classic float export's logits;
- fp16: streamed (quantize the stand-in, then fill) == the fp16 recipe applied to the
  filled float graph, op for op and byte for byte;
- wNa8o8: streamed with module ranges == ai-edge-quantizer on the filled float graph with
  the same ranges as its qsv: every FC's weight bytes, weight and activation scales.

The stand-in export goes through the pipeline's own call (``streamed.export_standin``, with
the tie bits the pipeline plans: fp16 reuses the wNa8o8 plan) into the shared export cache
(``$EDGEKIT_CACHE``, tests/fixtures_bundles.py), so the end-to-end ``edgekit build --route
streamed`` runs below reuse it, as a rerun of the file does; the classic float export is the
one the tiny_bundles fixture builds. Cold, the file pays one stand-in export (plus the classic
float export when no other test made it); warm, about two minutes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures_bundles import bundle_cache_root, session_tempdir, tiny_source_identity

SEC_PD = "tf_lite_prefill_decode"
PREFILL, CACHE_LEN = 32, 256  # the pipeline's defaults: the exports are the ones `edgekit build tiny` uses
FULLY_CONNECTED, EMBEDDING_LOOKUP = 9, 7


# ------------------------------------------------------------------ shared material (once per session)
def _workdir() -> Path:
    return session_tempdir("edgekit-streamed-tests-")


def _source():
    """(checkpoint folder, source identity, vocabulary) exactly as the pipeline computes them for tiny."""
    return tiny_source_identity()


def _scheme(name: str):
    from edgekit.models.presets import get_preset
    from edgekit.schemes import load_scheme

    return load_scheme(name, get_preset("tiny"))


def _opts():
    from edgekit.builder import export as ex

    return ex.ExportOptions(text_only=True, prefill_length=PREFILL, cache_length=CACHE_LEN)


def _tie_bits(scheme: str):
    """The bit widths the pipeline plans a scheme's tie groups with (a float scheme: the preset default's)."""
    from edgekit.models.presets import get_preset

    sch = _scheme(scheme)
    return (_scheme(get_preset("tiny").default_scheme) if sch.is_float else sch).bits_for


@functools.lru_cache(maxsize=None)
def _standin_export(plan_json: str):
    from edgekit.builder import quantize as qz
    from edgekit.builder import streamed as sm

    ckpt, ident, _ = _source()
    tie = json.loads(plan_json)
    res = sm.export_standin(ckpt, ident, _opts(), lambda m: tie[m], bundle_cache_root())
    toml = qz.unpack(res.bundle, _workdir() / f"standin-{res.record['key']}")
    return res, toml, qz.section_files(toml)


def _tie_json(scheme: str) -> str:
    bits = _tie_bits(scheme)
    return json.dumps({m: bits(m) for m in _tiny_linears()}, sort_keys=True)


def _standin(scheme: str):
    """(stand-in export, its unpacked model.toml, section -> .tflite) as the pipeline makes it for ``scheme``."""
    return _standin_export(_tie_json(scheme))


def _filled_float(scheme: str):
    """The stand-in ``scheme`` builds from, filled at float32 (no quantization): (bundle, section -> .tflite)."""
    return _filled_float_of(_tie_json(scheme))


@functools.lru_cache(maxsize=None)
def _filled_float_of(plan_json: str):
    from edgekit.builder import fill as fl
    from edgekit.builder import quantize as qz
    from edgekit.builder.standin import STANDIN_VOCAB

    ckpt, _, vocab = _source()
    res, toml, secs = _standin_export(plan_json)
    out = _workdir() / f"filled-float-{res.record['key']}"
    out.mkdir(parents=True, exist_ok=True)
    w = fl.CheckpointWeights(ckpt)
    filled = {}
    for sec, p in secs.items():
        filled[sec] = out / f"{sec}.tflite"
        fl.fill_section(p, filled[sec], sec, w, STANDIN_VOCAB, vocab)
    bundle = out / "filled.litertlm"
    qz.repack(toml, bundle, filled)
    return bundle, filled


@functools.lru_cache(maxsize=None)
def _streamed(scheme: str, ranges_json: str | None = None):
    """The route's sections for ``scheme``: stand-in quantized per the scheme, then filled."""
    from edgekit.builder import streamed as sm

    ckpt, _, vocab = _source()
    _, _, secs = _standin(scheme)
    out = _workdir() / f"streamed-{scheme}-{abs(hash(ranges_json))}"
    out.mkdir(parents=True, exist_ok=True)
    ranges = json.loads(ranges_json) if ranges_json else None
    qsecs, _ = sm.quantize_sections(secs, _scheme(scheme), out, ranges)
    filled, reports = sm.fill_sections(qsecs, ckpt, out, vocab)
    return filled, reports


def _read(path):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    return fu.read_model(str(path))


def _code(model, op) -> int:
    oc = model.operatorCodes[op.opcodeIndex]
    return max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))


def _name(t) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else str(n or "")


def _scale(t):
    q = t.quantization
    return None if q is None or q.scale is None else np.asarray(q.scale, dtype=np.float32)


def _data(model, t):
    d = model.buffers[t.buffer].data
    return None if d is None else np.asarray(d, dtype=np.uint8)


# ------------------------------------------------------------------ 1. tie plan (fast)
def _tiny_linears():
    from edgekit.builder import streamed as sm

    return sm.text_linears(_source()[0])


def test_plan_groups_decoder_linears_by_role_shape_and_bits():
    from edgekit.builder import standin

    lin = _tiny_linears()
    assert len(lin) == 82  # tiny: 10 layers; the last 4 share their K/V (no k_proj / v_proj)
    for scheme in ("fp16", "wNa8o8"):
        sch = _scheme(scheme)
        p = standin.plan(lin, sch.bits_for)
        assert p["vocab"] == standin.STANDIN_VOCAB == 1031
        assert set(p["tie"]) == set(lin)  # every decoder-layer Linear is tied
        role = lambda m: m.split(".", 4)[4]  # noqa: E731 - "model.language_model.layers.N.<role>"
        want = {(role(m), tuple(s), sch.bits_for(m)) for m, s in lin.items()}
        assert len(set(p["tie"].values())) == len(want)
        # two modules share a group exactly when role, shape and bits agree
        for a in lin:
            for b in lin:
                same = (role(a), lin[a], sch.bits_for(a)) == (role(b), lin[b], sch.bits_for(b))
                assert (p["tie"][a] == p["tie"][b]) == same, (a, b)
    # tiny at fp16: 9 roles; two shapes each for the MLP (layers 6-9 are wider), q/o and k/v
    # (layers 4 and 9 have the wider heads); one for the per-layer gate and projection
    assert len(set(standin.plan(lin, _scheme("fp16").bits_for)["tie"].values())) == 16


def test_plan_puts_a_module_at_another_bit_width_in_another_group():
    from edgekit.builder import standin

    lin = _tiny_linears()
    odd = "model.language_model.layers.1.mlp.up_proj"
    p = standin.plan(lin, lambda m: 8 if m == odd else 4)
    same = "model.language_model.layers.2.mlp.up_proj"
    assert lin[odd] == lin[same]
    assert p["tie"][odd] != p["tie"][same]
    assert [m for m, g in p["tie"].items() if g == p["tie"][odd]] == [odd]
    assert p["tie"][same] == p["tie"]["model.language_model.layers.0.mlp.up_proj"]
    base = standin.plan(lin, lambda m: 4)
    assert len(set(p["tie"].values())) == len(set(base["tie"].values())) + 1


def test_plan_never_ties_modules_outside_the_decoder_layers():
    from edgekit.builder import standin

    lin = dict(_tiny_linears())
    extra = {"lm_head": (2048, 128), "model.language_model.embed_tokens": (2048, 128),
             "model.language_model.per_layer_model_projection": (320, 128),
             "model.vision_tower.encoder.layers.0.self_attn.q_proj": (128, 128),
             "model.language_model.layers_extra.0.mlp.up_proj": (512, 128)}
    p = standin.plan({**lin, **extra}, lambda m: 8)
    assert not set(extra) & set(p["tie"])
    for m in extra:
        assert standin.tie_key(m, extra[m], 8) is None
    assert standin.tie_key("model.language_model.layers.3.mlp.up_proj", (512, 128), 4) == "mlp.up_proj|512x128|4"


# ------------------------------------------------------------------ 8 (and 7's refusals): bad input, fast
def _cli(*args) -> int:
    from edgekit.cli.main import main

    return main(list(args))


def test_route_nonsense_is_a_usage_error(tmp_path, capsys):
    code = _cli("build", "tiny", "--text-only", "--route", "nonsense", "--output", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "nonsense" in err and "--route" in err
    assert not list(tmp_path.iterdir())


def test_use_streamed_picks_e2b_e4b_at_every_width():
    from edgekit.builder import streamed as sm
    from edgekit.errors import UsageError

    assert sm.use_streamed("auto", "e2b", 1) and sm.use_streamed("auto", "e4b", 1)
    # the classic route's calibration at e2b width/4 with the 4096-token cache was killed at 21.85 GiB
    assert sm.use_streamed("auto", "e2b", 4) and not sm.use_streamed("auto", "tiny", 1)
    assert sm.use_streamed("streamed", "tiny", 1) and not sm.use_streamed("classic", "e2b", 1)
    with pytest.raises(UsageError):
        sm.use_streamed("nonsense", "tiny", 1)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# a multimodal build on the streamed route: tests/toolchain/test_streamed_encoders.py


# A QAT checkpoint on the streamed route is built exactly: tests/toolchain/test_streamed_qat.py.


# ------------------------------------------------------------------ 2. the stand-in export
def _fc_weight_buffers(model) -> tuple[int, int]:
    """(FC ops, distinct buffers their weights read) over all subgraphs of a section."""
    ops, bufs = 0, set()
    for sg in model.subgraphs:
        for op in sg.operators:
            if _code(model, op) == FULLY_CONNECTED:
                ops += 1
                bufs.add(int(sg.tensors[int(op.inputs[1])].buffer))
    return ops, len(bufs)


def _vocab_tensors(model, vocab: int) -> list[tuple[int, int]]:
    return [(si, ti) for si, sg in enumerate(model.subgraphs) for ti, t in enumerate(sg.tensors)
            if t.shape is not None and vocab in [int(d) for d in t.shape]]


def _downstream(sg, start: set[int]) -> set[int]:
    """Tensors computed (transitively) from ``start`` in one subgraph."""
    seen = set(start)
    grew = True
    while grew:
        grew = False
        for op in sg.operators:
            if any(int(i) in seen for i in op.inputs if i >= 0):
                for o in op.outputs:
                    if int(o) not in seen:
                        seen.add(int(o))
                        grew = True
    return seen


@pytest.mark.slow
def test_standin_export_shares_fc_weights_and_shrinks_only_the_vocabulary():
    from edgekit.builder import fill as fl
    from edgekit.builder.standin import STANDIN_VOCAB

    from edgekit.builder import standin

    res, _, secs = _standin("wNa8o8")
    assert set(secs) == {SEC_PD, "tf_lite_embedder", "tf_lite_per_layer_embedder"}
    pd = _read(secs[SEC_PD])
    ops, bufs = _fc_weight_buffers(pd)
    # decode holds the 82 decoder Linears, lm_head and the per-layer model projection; prefill
    # (no logits, KV-sharing layers) fewer
    assert ops > 84, ops
    # the two signatures read one buffer per tie group, plus the untied lm_head and projection
    groups = set(standin.plan(_tiny_linears(), _scheme("wNa8o8").bits_for)["tie"].values())
    assert bufs <= len(groups) + 2, (ops, bufs, len(groups))
    for sec, p in secs.items():
        m = _read(p)
        fops = fl.map_ops(m, sec)
        allowed: dict[int, set[int]] = {}
        for fo in fops:
            sg = m.subgraphs[fo.subgraph]
            a = allowed.setdefault(fo.subgraph, set())
            if fo.kind == "embedding" or fo.module == "lm_head":
                a.add(fo.weight)
                assert int(sg.tensors[fo.weight].shape[0]) == STANDIN_VOCAB, (sec, fo.module)
            if fo.module == "lm_head":  # the logits and what is computed from them (softcap)
                a |= _downstream(sg, {int(o) for o in sg.operators[fo.op_index].outputs})
        found = _vocab_tensors(m, STANDIN_VOCAB)
        stray = [(si, _name(m.subgraphs[si].tensors[ti]), list(m.subgraphs[si].tensors[ti].shape))
                 for si, ti in found if ti not in allowed.get(si, set())]
        assert not stray, f"{sec}: stand-in vocabulary outside the tables and logits: {stray[:5]}"
        if sec == SEC_PD:
            assert any(fo.module == "lm_head" for fo in fops)
            assert len(found) >= 2  # the lm_head weight and the decode logits
        else:
            assert found, f"{sec}: the embedding table is not at the stand-in vocabulary"


# ------------------------------------------------------------------ 3. fill at float32 == the classic float export
@functools.lru_cache(maxsize=None)
def _classic_float_bundle() -> Path:
    """The classic route's float export of tiny (the same cache entry the tiny_bundles fixture uses)."""
    from edgekit.builder import export as ex

    ckpt, ident, _ = _source()
    return ex.export_checkpoint(ckpt, ident, _opts(), cache_dir=bundle_cache_root()).bundle


@pytest.mark.slow
def test_filled_float_standin_gives_the_classic_float_logits():
    from edgekit.runtime.signatures import BundleModel

    bundle, _ = _filled_float("wNa8o8")
    a, b = BundleModel(str(bundle)), BundleModel(str(_classic_float_bundle()))
    ids = list(range(5, 45))  # longer than one prefill chunk: prefill then decode signatures
    la, lb = a.prefill(ids), b.prefill(ids)
    assert la.shape == lb.shape == (2048,)
    worst = float(np.max(np.abs(la - lb)))
    for _ in range(6):
        assert int(np.argmax(la)) == int(np.argmax(lb))
        tok = int(np.argmax(lb))
        la, lb = a.decode(tok), b.decode(tok)
        worst = max(worst, float(np.max(np.abs(la - lb))))
    scale = float(np.max(np.abs(lb)))
    assert scale > 1.0  # real logits, not a zero model
    assert worst < 3e-4, worst  # measured 6.8e-5 on tiny (logits up to ~10.6)


# ------------------------------------------------------------------ 4. fp16: streamed == fp16 recipe on the filled graph
def _op_diffs(pa, pb) -> list[str]:
    """Differences of two sections op for op: codes, and every input/output's type, shape, scales, constant bytes."""
    a, b = _read(pa), _read(pb)
    out: list[str] = []
    if len(a.subgraphs) != len(b.subgraphs):
        return [f"subgraphs {len(a.subgraphs)} vs {len(b.subgraphs)}"]
    for si, (sa, sb) in enumerate(zip(a.subgraphs, b.subgraphs)):
        if len(sa.operators) != len(sb.operators):
            out.append(f"subgraph {si}: {len(sa.operators)} vs {len(sb.operators)} ops")
        for oi, (oa, ob) in enumerate(zip(sa.operators, sb.operators)):
            if _code(a, oa) != _code(b, ob):
                out.append(f"subgraph {si} op {oi}: code {_code(a, oa)} vs {_code(b, ob)}")
                break
            for kind, la, lb in (("in", oa.inputs, ob.inputs), ("out", oa.outputs, ob.outputs)):
                if len(la) != len(lb):
                    out.append(f"subgraph {si} op {oi}: {len(la)} vs {len(lb)} {kind}puts")
                    continue
                for j, (ia, ib) in enumerate(zip(la, lb)):
                    if (ia < 0) != (ib < 0):
                        out.append(f"subgraph {si} op {oi} {kind} {j}: optional input present in one only")
                    if ia < 0 or ib < 0:
                        continue
                    ta, tb = sa.tensors[int(ia)], sb.tensors[int(ib)]
                    qa, qb = _scale(ta), _scale(tb)
                    da, db = _data(a, ta), _data(b, tb)
                    what = []
                    if int(ta.type) != int(tb.type) or list(ta.shape) != list(tb.shape):
                        what.append(f"{ta.type}{list(ta.shape)} vs {tb.type}{list(tb.shape)}")
                    if (qa is None) != (qb is None) or (qa is not None and not np.array_equal(qa, qb)):
                        what.append("scales")
                    if (da is None) != (db is None) or (da is not None and not np.array_equal(da, db)):
                        what.append("constant bytes")
                    if what:
                        out.append(f"subgraph {si} op {oi} (code {_code(a, oa)}) {kind} {j}: {', '.join(what)} "
                                   f"[{_name(ta)[-60:]} | {_name(tb)[-60:]}]")
    return out


def _weights_by_module(path, sec) -> dict[tuple[int, str], list[tuple]]:
    """(subgraph, module) -> [(type, shape, bytes, weight scales, input scale, output scale)] of each FC / lookup."""
    from edgekit.builder import fill as fl

    m = _read(path)
    out: dict[tuple[int, str], list[tuple]] = {}
    for fo in fl.map_ops(m, sec):
        sg = m.subgraphs[fo.subgraph]
        op = sg.operators[fo.op_index]
        w = sg.tensors[fo.weight]
        x = sg.tensors[int(op.inputs[0])] if fo.kind == "fc" else None
        y = sg.tensors[int(op.outputs[0])]
        out.setdefault((fo.subgraph, fo.module), []).append(
            (int(w.type), [int(d) for d in w.shape], _data(m, w), _scale(w),
             None if x is None else _scale(x), _scale(y)))
    return out


def _weight_diffs(pa, pb, sec) -> list[str]:
    a, b = _weights_by_module(pa, sec), _weights_by_module(pb, sec)
    out = [f"{k}: in one section only" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
        if len(a[k]) != len(b[k]):
            out.append(f"{k}: {len(a[k])} vs {len(b[k])} ops")
            continue
        for ea, eb in zip(a[k], b[k]):
            for f, u, v in zip(("type", "shape", "weight bytes", "weight scales", "input scale", "output scale"),
                               ea, eb):
                if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
                    same = u is not None and v is not None and u.shape == v.shape and np.array_equal(u, v)
                    same = same or (u is None and v is None)
                else:
                    same = u == v
                if not same:
                    out.append(f"{k}: {f}")
    return out


@pytest.mark.slow
def test_fp16_streamed_equals_the_fp16_recipe_on_the_filled_float_graph():
    from edgekit.builder import quantize as qz

    streamed, reports = _streamed("fp16")
    _, filled = _filled_float("fp16")
    out = _workdir() / "fp16-classic"
    out.mkdir(exist_ok=True)
    for sec, p in filled.items():
        ref = out / f"{sec}.tflite"
        qz.quantize_weights(p, ref, qz.fp16_recipe())
        # the decoder's Linears really are float16 (else both sides could agree at float32)
        assert reports[sec].modules and set(reports[sec].modules.values()) == {"float16"}, reports[sec].modules
        assert _weight_diffs(streamed[sec], ref, sec) == []
        assert _op_diffs(streamed[sec], ref) == []


# ------------------------------------------------------------------ 5. wNa8o8: streamed == classic, same ranges
@functools.lru_cache(maxsize=None)
def _ranges_json() -> str:
    """Module ranges (``streamed.ranges_from_qsv``) of a short calibration of the classic float export.

    (The filled graph itself cannot be calibrated by ai-edge-quantizer: it keeps the stand-in's
    unused shared weights as tensors without data, which the calibrator's interpreter refuses.)
    """
    from ai_edge_quantizer import quantizer

    from edgekit.builder import quantize as qz
    from edgekit.builder import streamed as sm
    from edgekit.builder.pipeline import _calibration_texts, _tokenize

    bundle = _classic_float_bundle()
    secs = qz.section_files(qz.unpack(bundle, _workdir() / "classic-float"))
    texts, _ = _calibration_texts(None)
    ids = _tokenize(bundle, texts[:3], limit=CACHE_LEN - 4 - 1)
    feeds = qz.record_calibration(bundle, ids, 4, max_samples=6)
    plans = qz.plan_section(secs[SEC_PD], SEC_PD, _scheme("wNa8o8").bits_for)
    with qz.float_graph_io("minmax"):
        q = quantizer.Quantizer(str(secs[SEC_PD]))
        q.load_quantization_recipe(qz.static_recipe(plans, True))
        qsv = q.calibrate(feeds, num_threads=2)
    ranges = sm.ranges_from_qsv(secs[SEC_PD], SEC_PD, qsv)
    return json.dumps(ranges, sort_keys=True)


@functools.lru_cache(maxsize=None)
def _classic_with_ranges() -> dict[str, Path]:
    """ai-edge-quantizer on the filled float graph: static ranges as qsv (``ranges_to_qsv``), weights per scheme."""
    from edgekit.builder import quantize as qz
    from edgekit.builder import streamed as sm

    sch = _scheme("wNa8o8")
    ranges = json.loads(_ranges_json())
    _, filled = _filled_float("wNa8o8")
    out = _workdir() / "wNa8o8-classic"
    out.mkdir(exist_ok=True)
    res = {}
    for sec, p in filled.items():
        plans = sm.op_plans(p, sec, sch.bits_for)
        res[sec] = out / f"{sec}.tflite"
        if sec == SEC_PD:
            qsv = sm.ranges_to_qsv(p, sec, ranges, {pl.module for pl in plans if pl.bits is not None})
            sm.quantize_standin_static(p, res[sec], plans, qsv)
        else:
            qz.quantize_weights(p, res[sec], qz.embedding_recipe(plans) + qz.dynamic_recipe(plans))
    return res


@pytest.mark.slow
def test_wna8o8_streamed_equals_classic_quantization_with_the_same_ranges():
    ranges = json.loads(_ranges_json())
    lin = _tiny_linears()
    assert set(lin) <= set(ranges)  # every decoder Linear has a range
    assert all(r["in_min"] < r["in_max"] and r["out_min"] < r["out_max"] for r in ranges.values())
    streamed, reports = _streamed("wNa8o8", _ranges_json())
    classic = _classic_with_ranges()
    for sec in classic:
        assert _weight_diffs(streamed[sec], classic[sec], sec) == [], sec
    # the prefill/decode FCs really are integer with static int8 activations on both sides
    w = _weights_by_module(streamed[SEC_PD], SEC_PD)
    up = w[(0, "model.language_model.layers.0.mlp.up_proj")][0]
    assert up[0] in (9, 17, 19) and up[3] is not None and up[4] is not None and up[5] is not None
    assert reports[SEC_PD].modules["model.language_model.layers.0.mlp.up_proj"] == "int4"
    assert _op_diffs(streamed[SEC_PD], classic[SEC_PD]) == []


# ------------------------------------------------------------------ 6. vocabulary restored after fill
def _live_tensors(model) -> list[set[int]]:
    """Per subgraph: the tensors an op reads or writes, and the subgraph's inputs and outputs."""
    out = []
    for sg in model.subgraphs:
        used = {int(i) for op in sg.operators for i in list(op.inputs) + list(op.outputs) if i >= 0}
        out.append(used | {int(i) for i in list(sg.inputs) + list(sg.outputs)})
    return out


@pytest.mark.slow
def test_fill_leaves_no_standin_tensor_behind():
    from edgekit.builder.standin import STANDIN_VOCAB

    streamed, _ = _streamed("wNa8o8", _ranges_json())
    for sec, p in streamed.items():
        m = _read(p)
        assert _vocab_tensors(m, STANDIN_VOCAB) == [], f"{sec}: tensors still at the stand-in vocabulary"
        live = _live_tensors(m)
        assert all(len(sg.tensors) == len(live[si]) for si, sg in enumerate(m.subgraphs)), f"{sec}: unused tensors"


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["wNa8o8", "fp16"])
def test_fill_restores_the_vocabulary_everywhere(scheme):
    from edgekit.builder import fill as fl
    from edgekit.builder.standin import STANDIN_VOCAB

    ckpt, _, vocab = _source()
    weights = fl.CheckpointWeights(ckpt)
    streamed, reports = _streamed(scheme, _ranges_json() if scheme == "wNa8o8" else None)
    lookups = 0
    for sec, p in streamed.items():
        m = _read(p)
        live = _live_tensors(m)
        left = [(si, _name(m.subgraphs[si].tensors[ti])) for si, ti in _vocab_tensors(m, STANDIN_VOCAB)
                if ti in live[si]]
        assert left == [], f"{sec}: tensors read or written by ops still at the stand-in vocabulary: {left[:4]}"
        for sg in m.subgraphs:  # shape constants (reshape targets) must not carry it either
            for t in sg.tensors:
                d = _data(m, t)
                if int(t.type) == 2 and d is not None and 0 < len(d) <= 64:
                    assert STANDIN_VOCAB not in np.frombuffer(d.tobytes(), np.int32), (sec, _name(t))
        assert reports[sec].vocab_tensors > 0 or sec != SEC_PD
        for fo in fl.map_ops(m, sec):
            w = m.subgraphs[fo.subgraph].tensors[fo.weight]
            assert [int(d) for d in w.shape] == list(weights.shape(fo.module)), (sec, fo.module)
            if fo.kind == "embedding":
                lookups += 1
                assert int(w.shape[0]) == weights.shape(fo.module)[0] >= vocab
            if fo.module == "lm_head":
                assert int(w.shape[0]) == vocab
                if scheme == "wNa8o8":
                    assert len(_scale(w)) == vocab  # one scale per vocabulary row
                y = m.subgraphs[fo.subgraph].tensors[int(m.subgraphs[fo.subgraph].operators[fo.op_index].outputs[0])]
                assert int(y.shape[-1]) == vocab
    assert lookups >= 2  # the main embedding and the per-layer embedding table


# ------------------------------------------------------------------ 7. end to end: edgekit build --route streamed
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["fp16", "wNa8o8"])
def test_cli_build_streamed_route(scheme, tmp_path, capsys, monkeypatch):
    # the shared cache: the stand-in export made above (same plan, same key) is reused
    monkeypatch.setenv("EDGEKIT_CACHE", str(bundle_cache_root()))
    standin, _, _ = _standin(scheme)
    code = _cli("build", "tiny", "--text-only", "--route", "streamed", "--scheme", scheme,
                "--output", str(tmp_path), "--no-quality")
    cap = capsys.readouterr()
    assert code == 0, cap.err[-3000:]
    d = tmp_path / f"tiny-{scheme}-text"
    bundle = d / f"tiny-{scheme}-text.litertlm"
    assert cap.out.strip().splitlines()[0] == str(bundle)
    m = json.loads((d / "manifest.json").read_text())
    assert m["lock"]["options"]["route"] == "streamed"
    assert m["runtime"]["litert_lm"]["ok"] is True, m["runtime"]["litert_lm"]
    assert m["runtime"]["interpreter"]["ok"] is True, m["runtime"]["interpreter"]
    stages = m["build"]["stages_s"]
    assert {"export", "fill", "verify", "inspect"} <= set(stages), stages
    assert ("calibrate" in stages) == (scheme == "wNa8o8")
    # inspect read the bundle back (the pipeline refuses on a violation); check it again here
    from edgekit.bundle import inspect as insp
    from edgekit.models.presets import get_preset

    rep = insp.inspect_bundle(bundle)
    assert insp.check(rep, _scheme(scheme), get_preset("tiny"), m) == []
    assert m["build"]["export"]["key"] == standin.record["key"], "the manifest names another export than the stand-in"
