"""The streamed build route: quantize a converted stand-in, then fill in the real weights.

For full-size E2B/E4B the classic route (float export of the whole model,
calibration through the float signatures, ai-edge-quantizer on float sections)
needs 45+ GiB (docs/build-memory.md). This route never holds a float section:

1. :mod:`edgekit.builder.standin` converts the graph with shared decoder weights and
   a shrunk vocabulary (a few hundred MB at full E2B);
2. ai-edge-quantizer quantizes that small graph with the scheme's recipe, the
   static activation ranges given directly (``qsv``) instead of calibrated on it:
   they come from the real model (:func:`ranges_to_qsv`);
3. :mod:`edgekit.builder.fill` writes the checkpoint's weights, quantized with
   ai-edge-quantizer's numerics row block by row block, into every op.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.builder import fill as fl

Ranges = dict[str, dict[str, float]]  # module -> in_min, in_max, out_min, out_max


def op_plans(section_path: str | os.PathLike, section: str, bits_for) -> list:
    """:class:`edgekit.builder.quantize.OpPlan` of every FC / lookup op of a stand-in section."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgekit.builder.quantize import OpPlan

    model = fu.read_model(str(section_path))
    out = []
    for fo in fl.map_ops(model, section):
        sg = model.subgraphs[fo.subgraph]
        op = sg.operators[fo.op_index]
        out.append(OpPlan(fo.subgraph, fo.op_index, fo.kind, fu.get_op_scope(op, sg.tensors),
                          fl._name(sg.tensors[fo.weight]), fo.module, bits_for(fo.module)))
    return out


def _io_names(model, section: str) -> list[tuple[str, str, str]]:
    """(module, input tensor name, output tensor name) of every FC op."""
    out = []
    for fo in fl.map_ops(model, section):
        if fo.kind != "fc":
            continue
        sg = model.subgraphs[fo.subgraph]
        op = sg.operators[fo.op_index]
        out.append((fo.module, fl._name(sg.tensors[int(op.inputs[0])]), fl._name(sg.tensors[int(op.outputs[0])])))
    return out


def ranges_from_qsv(section_path: str | os.PathLike, section: str, qsv: dict[str, Any]) -> Ranges:
    """Per-module FC input/output ranges of a calibrated graph (any layout of the same model)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(section_path))
    out: Ranges = {}
    for module, i, o in _io_names(model, section):
        if i not in qsv or o not in qsv:
            continue
        r = out.setdefault(module, {"in_min": np.inf, "in_max": -np.inf, "out_min": np.inf, "out_max": -np.inf})
        r["in_min"] = min(r["in_min"], float(np.min(qsv[i]["min"])))
        r["in_max"] = max(r["in_max"], float(np.max(qsv[i]["max"])))
        r["out_min"] = min(r["out_min"], float(np.min(qsv[o]["min"])))
        r["out_max"] = max(r["out_max"], float(np.max(qsv[o]["max"])))
    return out


def ranges_to_qsv(section_path: str | os.PathLike, section: str, ranges: Ranges,
                  quantized: set[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The stand-in's qsv (tensor name -> min/max) for every FC input and output, from module ranges.

    ``quantized``: the modules the scheme quantizes (others stay float and need no range).
    A tensor read by several FCs (q/k/v read one normed input) gets the union of their ranges.
    """
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(section_path))
    qsv: dict[str, dict[str, np.ndarray]] = {}

    def put(name: str, lo: float, hi: float) -> None:
        if name in qsv:
            lo = min(lo, float(qsv[name]["min"]))
            hi = max(hi, float(qsv[name]["max"]))
        qsv[name] = {"min": np.array(lo, dtype=np.float32), "max": np.array(hi, dtype=np.float32)}

    missing = []
    for module, i, o in _io_names(model, section):
        if quantized is not None and module not in quantized:
            continue
        r = ranges.get(module)
        if r is None:
            missing.append(module)
            continue
        put(i, r["in_min"], r["in_max"])
        put(o, r["out_min"], r["out_max"])
    if missing:
        raise ValueError(f"no activation range for {len(missing)} module(s) of {section}, e.g. {sorted(set(missing))[:3]}")
    return qsv


def quantize_standin_static(src: str | os.PathLike, dst: str | os.PathLike, plans, qsv,
                            symmetric_act: bool = True) -> None:
    """ai-edge-quantizer on the stand-in section with the given qsv (no calibration run)."""
    from ai_edge_quantizer import quantizer

    from edgekit.builder import quantize as qz

    with qz.float_graph_io("minmax"):
        q = quantizer.Quantizer(str(src))
        q.load_quantization_recipe(qz.static_recipe(plans, symmetric_act))
        res = q.quantize(qsv)
    qz._export(res, dst)  # noqa: SLF001 - the same writer as the classic route


def quantize_standin_qat(src: str | os.PathLike, dst: str | os.PathLike, plans, ckpt,
                         kv_int8: bool = False) -> dict[str, Any]:
    """ai-edge-quantizer on the stand-in's prefill/decode section for a QAT checkpoint.

    Each FC gets the checkpoint's bit width; its input and output activation statistics are
    the checkpoint's SRQ scales as :func:`edgekit.builder.qat.srq_qsv` writes them (ai-edge-quantizer
    derives exactly those scales back); a Linear whose SRQ scales are 0 keeps float
    activations (weight-only integers). Weights are min-max quantized here only to give the
    graph its integer tensors: the fill step replaces them with the checkpoint's integers and
    scales. Returns the SRQ record (:func:`edgekit.builder.qat.srq_qsv`).
    """
    from ai_edge_quantizer import quantizer

    from edgekit.builder import qat as bq
    from edgekit.builder import quantize as qz
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from ai_edge_quantizer import recipe_manager

    fcs = _io_names(fu.read_model(str(src)), "tf_lite_prefill_decode")
    qsv, srq = bq.srq_qsv(ckpt, fcs)
    rm = recipe_manager.RecipeManager()
    rm.load_quantization_recipe(bq.standin_recipe(plans, ckpt))
    kv_tensors: frozenset[str] = frozenset()
    if kv_int8:  # the KV cache int8 at the checkpoint's k/v cache scales (the fill leaves them as set here)
        srq["kv_carried"], kv_tensors = bq.kv_int8_setup(ckpt, src, qsv, {}, rm)
    with qz.float_graph_io("minmax", kv_tensors):
        q = quantizer.Quantizer(str(src))
        q.load_quantization_recipe(rm.get_quantization_recipe())
        res = q.quantize(qsv)
    qz._export(res, dst)  # noqa: SLF001 - the same writer as the classic route
    return srq


def quantize_sections(secs: dict[str, Path], scheme, work: Path, ranges: Ranges | None,
                      run: Callable | None = None, qat_ckpt=None,
                      kv_int8: bool = False) -> tuple[dict[str, Path], dict[str, list]]:
    """Quantize every stand-in section per the scheme. Returns (section -> quantized file, plans).

    ``qat_ckpt`` (a :class:`edgekit.models.qat.QatCheckpoint`): the prefill/decode section
    takes the checkpoint's bit widths and SRQ activation scales (:func:`quantize_standin_qat`),
    and ``ranges`` is not used; its SRQ record is in ``plans["_srq"]``.
    """
    # no 10 GiB qsv check, patterns compiled once, arrays compared with numpy
    from edgekit.builder.quantizer_memory import lean_quantizer

    with lean_quantizer():
        return _quantize_sections(secs, scheme, work, ranges, run, qat_ckpt, kv_int8)


def _quantize_sections(secs: dict[str, Path], scheme, work: Path, ranges: Ranges | None,
                       run: Callable | None = None, qat_ckpt=None,
                       kv_int8: bool = False) -> tuple[dict[str, Path], dict[str, list]]:
    from edgekit.builder import quantize as qz

    run = run or (lambda _stage, _what, fn, *a, **k: fn(*a, **k))
    out: dict[str, Path] = {}
    plans = {sec: op_plans(p, sec, scheme.bits_for) for sec, p in secs.items()}
    for sec, path in secs.items():
        dst = work / f"{sec}.standin-q.tflite"
        if scheme.is_float:
            if scheme.float_dtype == "float16":
                run("quantize", f"{sec}: float16 weights (stand-in)", qz.quantize_weights, path, dst, qz.fp16_recipe())
                out[sec] = dst
            else:
                out[sec] = path
            continue
        if sec == "tf_lite_prefill_decode":
            if qat_ckpt is not None:
                plans["_srq"] = run("quantize", "prefill/decode: checkpoint bit widths, SRQ activation scales"
                                    + (", KV-cache scales" if kv_int8 else "") + " (stand-in)",
                                    quantize_standin_qat, path, dst, plans[sec], qat_ckpt, kv_int8)
            elif scheme.static_activations:
                if ranges is None:
                    raise ValueError("static activations need the model's activation ranges")
                qsv = ranges_to_qsv(path, sec, ranges, {p.module for p in plans[sec] if p.bits is not None})
                run("quantize", "prefill/decode: static int8 activations, N-bit weights (stand-in)",
                    quantize_standin_static, path, dst, plans[sec], qsv)
            else:
                run("quantize", "prefill/decode: N-bit weights (stand-in)", qz.quantize_weights, path, dst,
                    qz.dynamic_recipe(plans[sec]))
            out[sec] = dst
            continue
        rec = qz.embedding_recipe(plans[sec]) + qz.dynamic_recipe(plans[sec])
        if rec:
            run("quantize", f"{sec}: channel-wise weights (stand-in)", qz.quantize_weights, path, dst, rec)
            out[sec] = dst
        else:
            out[sec] = path
    return out, plans


def fill_sections(qsecs: dict[str, Path], ckpt_dir: str | os.PathLike, work: Path, vocab: int,
                  run: Callable | None = None, progress: Callable[[str], None] | None = None,
                  weights: fl.CheckpointWeights | None = None
                  ) -> tuple[dict[str, Path], dict[str, fl.FillReport]]:
    """Fill every quantized stand-in section with the checkpoint's weights (``weights``:
    a :class:`edgekit.builder.fill.QatCheckpointWeights` for a QAT checkpoint)."""
    from edgekit.builder.standin import STANDIN_VOCAB

    run = run or (lambda _stage, _what, fn, *a, **k: fn(*a, **k))
    weights = weights if weights is not None else fl.CheckpointWeights(ckpt_dir)
    out: dict[str, Path] = {}
    reports: dict[str, fl.FillReport] = {}
    for sec, path in qsecs.items():
        dst = work / f"{sec}.tflite"
        reports[sec] = run("fill", f"{sec}: real weights from the checkpoint", fl.fill_section, path, dst, sec,
                           weights, STANDIN_VOCAB, vocab, progress)
        out[sec] = dst
    return out, reports


# ------------------------------------------------------------------ pipeline steps
STREAMED_PRESETS = ("e2b", "e4b")


def use_streamed(route: str, preset_name: str, width_div: int) -> bool:
    """``route``: "classic", "streamed" or "auto" (streamed for E2B/E4B at every width: the classic
    route cannot convert them at full width in 24 GiB, and at width/4 its interpreter calibration with
    the 4096-token KV cache was killed at 21.85 GiB)."""
    if route not in ("auto", "classic", "streamed"):
        from edgekit.errors import UsageError

        raise UsageError(f"--route must be auto, classic or streamed, got {route!r}")
    if route == "auto":
        return preset_name in STREAMED_PRESETS
    return route == "streamed"


def text_linears(ckpt_dir: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Hugging Face name -> weight shape of every decoder-layer Linear, from the safetensors headers."""
    from edgekit.models.qat import read_safetensors_headers

    import json

    from edgekit.models.qat import QatConfig, is_qat_config

    cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    qc = QatConfig.from_dict(cfg["quantization_config"]) if is_qat_config(cfg) else None
    entries = read_safetensors_headers(Path(ckpt_dir))
    out = {}
    for k, e in entries.items():
        if k.startswith("model.language_model.layers.") and k.endswith(".weight") and len(e.shape) == 2:
            name = k[: -len(".weight")]
            shape = tuple(e.shape)
            bits = qc.bits_for(name) if qc is not None and f"{name}.weight_scale" in entries else None
            if bits is not None and bits < 8:  # QAT: int2/int4 packed in uint8 (validated before)
                shape = (shape[0], shape[1] * (8 // bits))
            out[name] = shape
    return out


def export_standin(ckpt_dir, source_identity: dict, options, bits_for, cache_dir: Path):
    """The stand-in's float export (cached like the classic export, keyed by its tie plan).

    ``bits_for`` decides the tie groups (weights of different widths are never shared);
    a float scheme passes the preset's default scheme's, so its build reuses that export.
    """
    import json

    from edgekit.builder import export as ex
    from edgekit.builder import standin
    from edgekit.fsutil import atomic_write_text

    plan = standin.plan(text_linears(ckpt_dir), bits_for)
    plans_dir = Path(cache_dir) / "standin-plans"
    plans_dir.mkdir(parents=True, exist_ok=True)
    import hashlib

    blob = json.dumps(plan, sort_keys=True)
    path = plans_dir / f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        atomic_write_text(path, blob)
    return ex.export_checkpoint(ckpt_dir, source_identity, options, cache_dir=cache_dir,
                                child="edgekit.builder.standin", child_args=("--plan", str(path)),
                                key_extra={"standin": plan})


def calibration_chunks(ids: list[list[int]], length: int, max_chunks: int = 16) -> list[list[int]]:
    """Equal-length chunks (no padding) of the calibration prompts' tokens, in order."""
    stream = [t for p in ids for t in p]
    n = min(max_chunks, len(stream) // length)
    if n < 1:
        from edgekit.errors import ConfigError

        raise ConfigError(f"the calibration prompts hold {len(stream)} tokens, fewer than one chunk of {length}",
                          hint="pass a longer --calibration file")
    return [stream[i * length:(i + 1) * length] for i in range(n)]


def build_sections(secs: dict[str, Path], ckpt_dir, scheme, work: Path, vocab: int, run: Callable,
                   chunks: list[list[int]] | None, progress: Callable[[str], None] | None = None,
                   qat=None) -> tuple[dict[str, Path], dict[str, Any]]:
    """Activation ranges (when static) -> quantized stand-in -> filled sections. Returns (files, record).

    ``qat``: a :class:`edgekit.builder.qat.QatBuild` of a ``quant_method: gemma`` checkpoint
    (``ckpt_dir`` is that checkpoint). Its exact path takes activation scales from the
    checkpoint's SRQ scales (no calibration) and fills its integers and scales as stored;
    a float scheme fills ``int x scale``. The QAT record goes to ``qat.record``.
    """
    if qat is not None:
        return _build_sections_qat(secs, scheme, work, vocab, run, progress, qat)
    ranges = None
    rec: dict[str, Any] = {"route": "streamed"}
    if not scheme.is_float and scheme.static_activations:
        from edgekit.builder.torch_calibration import linear_ranges

        ranges = run("calibrate", f"{len(chunks)} chunks of {len(chunks[0])} tokens through the checkpoint's "
                     "text forward (layer by layer)", linear_ranges, ckpt_dir, chunks, progress=progress)
        rec["calibration"] = {"chunks": len(chunks), "chunk_tokens": len(chunks[0]), "source": "torch forward",
                              "range": "min/max", "merged": "prefill and decode signatures share each module's range"}
    qsecs, _plans = quantize_sections(secs, scheme, work, ranges, run)
    filled, reports = fill_sections(qsecs, ckpt_dir, work, vocab, run, progress)
    rec["fill"] = {s: {"ops": r.ops, "weight_bytes": r.weight_bytes, "vocab_tensors": r.vocab_tensors}
                   for s, r in reports.items()}
    return filled, rec


def _build_sections_qat(secs: dict[str, Path], scheme, work: Path, vocab: int, run: Callable,
                        progress: Callable[[str], None] | None, qat) -> tuple[dict[str, Path], dict[str, Any]]:
    exact = not scheme.is_float
    qsecs, plans = quantize_sections(secs, scheme, work, None, run, qat.ckpt if exact else None,
                                     kv_int8=exact and qat.kv_int8)
    weights = fl.QatCheckpointWeights(qat.ckpt)
    filled, reports = fill_sections(qsecs, qat.checkpoint_dir, work, vocab, run, progress, weights)
    rec: dict[str, Any] = {"route": "streamed", "fill": {
        s: {"ops": r.ops, "weight_bytes": r.weight_bytes, "vocab_tensors": r.vocab_tensors}
        for s, r in reports.items()}}
    if exact:
        qat.record = qat.streamed_record(weights.stats, plans.get("_srq") or {})
    return filled, rec
