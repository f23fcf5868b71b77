"""Exact quantization of a pre-quantized mobile QAT checkpoint (``quant_method: gemma``).

The route (verified on the tiny model, see tests/toolchain/test_qat_build.py):

1. :func:`prepare_source` validates the checkpoint against the preset from headers and
   the small scale tensors (one line, exit 6, before any long work), then writes the
   exactly dequantized float32 checkpoint (``int x scale``; values on the lattice) into
   the cache, keyed by the weights' sha256. It is what litert-torch exports, and it is
   the fp16 baseline's source too.
2. :func:`quantize_sections` quantizes the float export's sections with ai-edge-quantizer:

   * weights with its ``dequantized_weight_recovery`` algorithm (recovers integers and
     per-channel scales from values on a lattice). The recovered scale is the smallest
     gap between sorted values, computed in float32: it can land a few ulps away from the
     checkpoint's own scale (``fl(8s) - fl(7s) != s``), so each recovery is compared with
     the checkpoint and, where integers reproduce but the scale is off by rounding, the
     checkpoint's scale is used (counted in ``recovery`` of the record; the materializer
     is ai-edge-quantizer's own, only its parameter function is wrapped);
   * static int8 activations from the checkpoint's SRQ scales written directly as the
     calibration statistics (qsv) of each FULLY_CONNECTED input and output: symmetric,
     zero point 0, ``min = -127 s``, ``max = 127 s`` in float64, which ai-edge-quantizer
     turns back into ``scale = max(|min|, |max|) / 127 == s`` exactly (float32);
   * linears whose SRQ scales are both 0 (lm_head in the published map) stay with float
     activations (weight-only integers, dequantized in the graph);
   * the main embedding table: per-row scales = channel-wise EMBEDDING_LOOKUP, exact;
   * the per-layer embedding table: one scale per (row, decoder layer) in the checkpoint,
     one per row in a channel-wise EMBEDDING_LOOKUP: cannot be expressed; re-quantized
     per row at ``ple_bits`` (default 8) and named in the record's ``approximations``.
3. ``KV-cache scales``: the standard CPU export keeps the KV cache float32 (litert-torch
   0.10 has int8 KV only inside its NPU pipeline), so they are not carried; the record
   names them.

``requantize=True`` is the naive path for comparison: min-max re-quantization of the
dequantized weights and calibrated activations (the classic pipeline, unchanged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.errors import BuildError, CheckpointError

PD = "tf_lite_prefill_decode"
EMB = "tf_lite_embedder"
PLE = "tf_lite_per_layer_embedder"
QAT_RECORD_VERSION = 1


# ------------------------------------------------------------------ source


def prepare_source(checkpoint, preset, cache_dir: Path, width_div: int | None = None, log=None):
    """Validate a QAT checkpoint and return ``(dequantized float dir, QatCheckpoint)``.

    Validation reads only headers and scale tensors; dequantizing is cached under
    ``cache_dir/checkpoints/qat-<sha>``.
    """
    from edgekit.models import qat
    from edgekit.models.presets import get_preset

    preset = get_preset(preset)
    ckpt_dir = Path(checkpoint)
    ck = _validate(ckpt_dir, preset, width_div)
    digest = _weights_digest(ckpt_dir)
    out = Path(cache_dir) / "checkpoints" / f"qat-{digest[:20]}-dequantized"
    if not (out / "model.safetensors").is_file():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        qat.write_dequantized_checkpoint(ck, tmp)
        _ensure_tokenizer(tmp, preset)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return out, ck


def _ensure_tokenizer(folder: Path, preset) -> None:
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file():
        return
    try:
        from edgekit.models.checkpoint import _write_tokenizer  # the checkpoint module's tokenizer writer
    except ImportError:  # pragma: no cover
        raise CheckpointError(f"{folder}: the QAT checkpoint has no tokenizer", hint="copy tokenizer.json next to config.json") from None
    if not _write_tokenizer(preset, folder):
        raise CheckpointError("the QAT checkpoint has no tokenizer", hint="copy tokenizer.json next to config.json")


def _weights_digest(ckpt_dir: Path) -> str:
    """sha256 over the safetensors files (streamed)."""
    h = hashlib.sha256()
    for f in sorted(Path(ckpt_dir).glob("*.safetensors")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ qsv from SRQ


def srq_bounds(scale: float) -> dict[str, np.ndarray]:
    """The min/max statistics from which ai-edge-quantizer derives exactly ``scale``.

    Symmetric int8: ``scale = max(|min|, |max|) / 127``. ``127 * s`` is exact in float64
    (a 24-bit mantissa times 7 bits), so the division gives ``s`` back bit for bit.
    """
    b = np.float64(np.float32(scale)) * 127.0
    return {"min": np.array([-b], dtype=np.float64), "max": np.array([b], dtype=np.float64)}


def _check_srq_roundtrip(scale: float) -> bool:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    q = srq_bounds(scale)
    zp, s = uqt.tensor_zp_scale_from_min_max(q["min"], q["max"], 8, True, qtyping.QuantGranularity.TENSORWISE)
    return np.float32(np.asarray(s).reshape(-1)[0]) == np.float32(scale) and int(np.asarray(zp).reshape(-1)[0]) == 0

def _put_srq(qsv: dict, conflicts: dict, name: str, scale: float) -> None:
    """qsv[name] = the bounds that give ``scale``; a tensor read by consumers with different SRQ
    scales keeps the widest bounds and is noted in ``conflicts``."""
    b = srq_bounds(scale)
    prev = qsv.get(name)
    if prev is not None and float(prev["max"][0]) != float(b["max"][0]):
        conflicts.setdefault(name, set()).update({float(prev["max"][0]) / 127, scale})
        b = {"min": np.minimum(prev["min"], b["min"]), "max": np.maximum(prev["max"], b["max"])}
    qsv[name] = b


def _conflict_notes(conflicts: dict) -> list[dict]:
    return [{"what": f"activation {name}", "why": f"consumers' SRQ scales differ ({sorted(vals)}); one tensor "
             "holds one scale: the widest kept", "carried": False} for name, vals in conflicts.items()]



def srq_qsv(ckpt, fcs) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """qsv of every FULLY_CONNECTED input and output from the checkpoint's SRQ scales.

    ``fcs``: (module, input tensor name, output tensor name) of each FC op (any layout of
    the graph: the classic float export or the streamed route's stand-in). Each nonzero
    scale becomes :func:`srq_bounds` (checked with :func:`_check_srq_roundtrip`); a tensor
    read by FCs with different scales keeps the widest (named in ``approximations``).
    Returns (qsv, record).
    """
    qsv: dict[str, dict[str, np.ndarray]] = {}
    conflicts: dict[str, set] = {}
    approximations: list[dict[str, Any]] = []
    roundtrip_bad: set[float] = set()
    checked: dict[float, bool] = {}
    for module, iname, oname in fcs:
        m = ckpt.modules.get(module)
        if m is None or m.kind != "linear":
            continue  # kept float in the checkpoint (per_layer_model_projection ...)
        s_in, s_out = ckpt.srq_scales(module)
        if (s_in > 0) != (s_out > 0):
            approximations.append({"what": f"{module} SRQ", "why": "one side quantized, the other not: a static "
                                   "int8 FULLY_CONNECTED quantizes both; kept float activations", "carried": False})
        if not (s_in > 0 and s_out > 0):
            continue
        for name, sc in ((iname, s_in), (oname, s_out)):
            if sc not in checked:
                checked[sc] = _check_srq_roundtrip(sc)
                if not checked[sc]:
                    roundtrip_bad.add(sc)
            _put_srq(qsv, conflicts, name, sc)
    approximations.extend(_conflict_notes(conflicts))
    rec = {"activation_tensors_set": len(qsv), "scales_checked_roundtrip": len(checked),
           "roundtrip_failed": sorted(roundtrip_bad), "approximations": approximations}
    return qsv, rec


def standin_recipe(plans, ckpt) -> list[dict]:
    """ai-edge-quantizer recipe for the streamed route's prefill/decode stand-in of a QAT
    checkpoint: each FC the checkpoint quantizes at its bit width, static int8 activations
    where both SRQ scales are set, weight-only (float activations) where both are 0."""
    from ai_edge_quantizer import qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    seen: set[str] = set()
    for p in plans:
        if p.kind != "fc" or p.scope in seen:
            continue
        m = ckpt.modules.get(p.module)
        if m is None:
            continue
        seen.add(p.scope)
        s_in, s_out = ckpt.srq_scales(p.module)
        rm.add_quantization_config(_exact_scope(p.scope), qtyping.TFLOperationName.FULLY_CONNECTED,
                                   _op_config(m.bits, static=s_in > 0 and s_out > 0, skip_checks=m.bits == 2))
    return rm.get_quantization_recipe()


# ------------------------------------------------------------------ plans


@dataclasses.dataclass
class OpSRQ:
    module: str
    input_name: str
    output_name: str
    s_in: float
    s_out: float


def _tensor_name(t) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else str(n)


def fc_io(tflite_path, plans) -> dict[tuple[int, int], tuple[str, str, str]]:
    """(subgraph, op) -> (weight, input, output) tensor names of each planned FC."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(tflite_path))
    out = {}
    for p in plans:
        if p.kind != "fc":
            continue
        sg = model.subgraphs[p.subgraph]
        op = sg.operators[p.op_index]
        out[(p.subgraph, p.op_index)] = (
            _tensor_name(sg.tensors[op.inputs[1]]),
            _tensor_name(sg.tensors[op.inputs[0]]),
            _tensor_name(sg.tensors[op.outputs[0]]),
        )
    return out


# ------------------------------------------------------------------ exact weights


class ExactWeights:
    """Checkpoint integers and scales served to ai-edge-quantizer's materializers.

    ``params(module, content, config, op_info)`` runs the upstream
    ``dequantized_weight_recovery`` parameter function on the float content, compares
    its integers and scales with the checkpoint's and keeps the checkpoint's where they
    differ only by the recovery's float rounding (content must equal ``int x scale``
    exactly, else BuildError: the export changed the weights).
    """

    def __init__(self, ckpt):
        self.ckpt = ckpt
        self.stats: dict[str, dict[str, Any]] = {}

    def params(self, module: str, op_info, tensor_quant_config, tensor_content):
        from ai_edge_quantizer import qtyping
        from ai_edge_quantizer.algorithms.uniform_quantize import dequantized_weight_recovery as dwr

        m = self.ckpt.modules.get(module)
        if m is None:
            raise BuildError(f"{module} is not quantized in the checkpoint but the recipe quantizes it")
        ints = self.ckpt.integers(module).astype(np.int8)
        scales = self.ckpt.scales(module).astype(np.float32)
        if m.kind == "embedding" and scales.shape[1] != 1:
            raise BuildError(f"{module}: block scales cannot be carried exactly (internal: plan should approximate)")
        deq = ints.astype(np.float32) * scales
        content = np.asarray(tensor_content, np.float32)
        transposed = False
        if content.shape != deq.shape and content.T.shape == deq.shape:
            transposed = True
        target = content.T if transposed else content
        if target.shape != deq.shape or not np.array_equal(target, deq):
            raise BuildError(
                f"{module}: the exported weight is not the checkpoint's dequantized lattice "
                f"(shape {list(content.shape)} vs {list(deq.shape)}); the exporter transformed it"
            )
        st = self.stats.setdefault(module, {})
        st["bits"] = m.bits
        if m.bits == 8 and int(ints.min()) < -127:
            # LiteRT int8 weights are narrow-range ([-127, 127]; ai-edge-quantizer clamps there for its
            # legacy kernels): a checkpoint's -128 cannot be carried. Clipped, counted, named.
            st["int8_clipped"] = int((ints < -127).sum())
            ints = np.maximum(ints, -127).astype(np.int8)
        cfg = dataclasses.replace(tensor_quant_config, num_bits=m.bits)
        try:
            rec = dwr.get_tensor_quant_params(op_info, cfg, content, None)
        except RuntimeError as exc:  # the recovery's own validation failed
            st["recovery_error"] = str(exc).split(". ")[0][:200]
            rec = None
        if rec is not None:
            r_scale = np.asarray(rec.scale, np.float32).reshape(-1)
            r_ints = np.asarray(rec.quantized_data)
            r_ints = (r_ints.T if transposed else r_ints).astype(np.int64)
            ints_ok = np.array_equal(r_ints, ints.astype(np.int64))
            scale_ok = np.array_equal(r_scale.view(np.uint32), scales.reshape(-1).view(np.uint32))
            st.update(recovered_integers_exact=bool(ints_ok), recovered_scales_exact=bool(scale_ok))
            if ints_ok and scale_ok:
                return rec
            qd = rec.quantized_dimension
        else:
            st.update(recovered_integers_exact=False, recovered_scales_exact=False)
            from ai_edge_quantizer.algorithms.utils import common_utils

            qd = common_utils.get_weight_quantized_dim(op_info, content, tensor_quant_config.granularity)
        st["corrected_from_checkpoint"] = True
        shape = [1] * content.ndim
        shape[qd] = content.shape[qd]
        q = ints.T if transposed else ints
        return qtyping.UniformQuantParams(
            num_bits=m.bits,
            quantized_dimension=qd,
            scale=scales.reshape(shape),
            zero_point=np.zeros(shape, np.int32),
            symmetric=True,
            quantized_data=q.astype(np.int8),
        )


@contextlib.contextmanager
def exact_weight_materializers(exact: ExactWeights, module_of_weight: Callable[[str], str | None]):
    """Temporarily route ``dequantized_weight_recovery``'s FULLY_CONNECTED and
    EMBEDDING_LOOKUP materializers through :class:`ExactWeights` (ai-edge-quantizer's own
    materializers, with the parameter function bound to the op's checkpoint module)."""
    from ai_edge_quantizer import algorithm_manager, qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import common_quantize
    from ai_edge_quantizer.algorithms.uniform_quantize import dequantized_weight_recovery as dwr
    from ai_edge_quantizer.algorithms.uniform_quantize import naive_min_max_quantize

    alg = algorithm_manager.AlgorithmName.DEQUANTIZED_WEIGHT_RECOVERY
    api = algorithm_manager._alg_manager_instance  # noqa: SLF001 - the registry has no getter
    info = api._algorithm_registry[alg].quantized_ops  # noqa: SLF001
    ops = {
        qtyping.TFLOperationName.FULLY_CONNECTED: common_quantize.materialize_fc_conv,
        qtyping.TFLOperationName.EMBEDDING_LOOKUP: common_quantize.materialize_embedding_lookup,
    }
    saved = {k: info[k] for k in ops}

    def make(base):
        def materialize(op_info, graph_info, tensor_name_to_qsv, tensor_quant_params_cache):
            wt = graph_info.subgraph_tensors[op_info.op.inputs[1]]
            module = module_of_weight(_tensor_name(wt))

            def get_params(op_info_, cfg, content=None, tensor_qsv=None):
                if content is None or module is None:
                    return naive_min_max_quantize.get_tensor_quant_params(op_info_, cfg, content, tensor_qsv)
                return exact.params(module, op_info_, cfg, content)

            return base(get_params, op_info, graph_info, tensor_name_to_qsv, tensor_quant_params_cache)

        return materialize

    try:
        for opn, base in ops.items():
            algorithm_manager.register_quantized_op(
                alg, opn, dwr.init_qsvs, calibration_func=dwr.calibrate, materialize_func=make(base)
            )
        yield
    finally:
        for k, v in saved.items():
            info[k] = v


# ------------------------------------------------------------------ recipes


def _op_config(bits: int, *, static: bool, skip_checks: bool):
    from ai_edge_quantizer import qtyping

    return qtyping.OpQuantizationConfig(
        activation_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=True) if static else None,
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=bits, symmetric=True, granularity=qtyping.QuantGranularity.CHANNELWISE
        ),
        compute_precision=qtyping.ComputePrecision.INTEGER if static else qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=not static,
        skip_checks=skip_checks,
    )


def _exact_scope(scope: str) -> str:
    import re

    return "^" + re.escape(scope) + "$"


# ------------------------------------------------------------------ quantize


def kv_cache_qsv(ckpt, kv_names: dict[str, set[str]], qsv: dict, conflicts: dict) -> tuple[int, str | None]:
    """The checkpoint's ``k_cache_scale`` / ``v_cache_scale`` as the qsv of the graph's KV-cache tensors
    (``kv_cache_k_<i>`` is the i-th attention layer that owns a cache, in the checkpoint's layer order),
    symmetric int8 at exactly that scale (as :func:`srq_bounds`). Returns (scales set, why not)."""
    scales = ckpt.kv_cache_scales()
    layers = list(scales)
    n_k = sum(1 for n in kv_names if n.startswith("kv_cache_k_"))
    if n_k != len(layers):
        return 0, f"the graph has {n_k} K caches, the checkpoint {len(layers)} KV layers"
    if any(k is None or v is None or k <= 0 or v <= 0 for k, v in scales.values()):
        return 0, "a KV layer of the checkpoint has no positive k/v cache scale"
    done = 0
    for i, attn in enumerate(layers):
        for kind, s in zip("kv", scales[attn]):
            for name in kv_names.get(f"kv_cache_{kind}_{i}", ()):
                _put_srq(qsv, conflicts, name, s)
            done += 1
    return done, None


def kv_int8_setup(ckpt, tflite_path, qsv: dict, conflicts: dict, rm) -> tuple[int, frozenset[str]]:
    """The KV cache int8 at the checkpoint's k/v cache scales: their qsv set (:func:`kv_cache_qsv`) and the
    graph-IO recipe entries added to ``rm``. Returns (scales carried, the tensors
    ``float_graph_io(quantized=...)`` must quantize); ValueError when they cannot be carried."""
    from edgekit.builder import quantize as qz

    kv_names = qz.kv_tensor_names(tflite_path)
    carried, why = kv_cache_qsv(ckpt, kv_names, qsv, conflicts)
    if why:
        raise ValueError(f"cannot carry the checkpoint's KV-cache scales: {why}")
    qz.add_graph_io(rm)
    return carried, frozenset().union(*kv_names.values())


def quantize_sections(secs: dict[str, Path], plans: dict[str, list], ckpt, work: Path, *,
                      ple_bits: int = 8, run: Callable | None = None,
                      kv_int8: bool = False) -> tuple[dict[str, Path], dict[str, Any]]:
    """Quantize the float sections exactly; returns (replaced section files, qat record).

    ``plans`` are :func:`edgekit.builder.quantize.plan_section` results (their ``module``
    names map tensors to checkpoint modules; their ``bits`` are ignored: the checkpoint's
    widths are used).
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe_manager

    from edgekit.builder import quantize as qz
    from edgekit.builder.quantizer_memory import lean_quantizer

    run = run or (lambda stage, msg, fn, *a, **k: fn(*a, **k))
    alg = algorithm_manager.AlgorithmName.DEQUANTIZED_WEIGHT_RECOVERY
    exact = ExactWeights(ckpt)
    approximations: list[dict[str, Any]] = []
    replaced: dict[str, Path] = {}

    # ---- prefill/decode: FC weights exact, SRQ activations as qsv
    pd_plans = plans.get(PD, [])
    io = fc_io(secs[PD], pd_plans)
    rm = recipe_manager.RecipeManager()
    qsv: dict[str, dict[str, np.ndarray]] = {}
    weight_module: dict[str, str] = {}
    seen_scopes: set[str] = set()
    conflicts: dict[str, set] = {}
    for p in pd_plans:
        if p.kind != "fc":
            continue
        m = ckpt.modules.get(p.module)
        if m is None:
            continue  # kept float in the checkpoint (per_layer_model_projection ...)
        wname, iname, oname = io[(p.subgraph, p.op_index)]
        weight_module[wname] = p.module
        s_in, s_out = ckpt.srq_scales(p.module)
        static = s_in > 0 and s_out > 0
        if (s_in > 0) != (s_out > 0):
            approximations.append({"what": f"{p.module} SRQ", "why": "one side quantized, the other not: a static "
                                   "int8 FULLY_CONNECTED quantizes both; kept float activations",
                                   "carried": False})
        if p.scope not in seen_scopes:
            seen_scopes.add(p.scope)
            rm.add_quantization_config(
                _exact_scope(p.scope), qtyping.TFLOperationName.FULLY_CONNECTED,
                _op_config(m.bits, static=static, skip_checks=m.bits == 2), algorithm_key=alg,
            )
        if static:
            for name, s in ((iname, s_in), (oname, s_out)):
                _put_srq(qsv, conflicts, name, s)
    kv_carried, kv_tensors = kv_int8_setup(ckpt, secs[PD], qsv, conflicts, rm) if kv_int8 else (0, frozenset())
    approximations.extend(_conflict_notes(conflicts))
    recipe = rm.get_quantization_recipe()
    dst = work / f"{PD}.tflite"
    with qz.float_graph_io(quantized=kv_tensors), \
            exact_weight_materializers(exact, weight_module.get), lean_quantizer():
        q = quantizer.Quantizer(str(secs[PD]))
        q.load_quantization_recipe(recipe)
        res = run("quantize", "prefill/decode: checkpoint integers + SRQ activation scales", q.quantize, qsv)
    qz._export(res, dst)  # noqa: SLF001 - the classic route's exporter helper
    replaced[PD] = dst

    # ---- embedders
    for sec in (EMB, PLE):
        if sec not in secs:
            continue
        sec_plans = [p for p in plans.get(sec, []) if p.kind == "embedding"]
        rm = recipe_manager.RecipeManager()
        weight_module = {}
        src = secs[sec]
        io_names = _embedding_weights(src, sec_plans)
        use_alg = alg
        for p in sec_plans:
            m = ckpt.modules.get(p.module)
            if m is None:
                continue
            if m.kind == "embedding" and m.blocks > 1:
                approximations.append({
                    "what": p.module,
                    "why": f"{m.blocks} scales per row (one per decoder layer) in the checkpoint; a channel-wise "
                           f"EMBEDDING_LOOKUP holds one per row: re-quantized min-max per row at {ple_bits} bits",
                    "carried": False, "bits": ple_bits,
                })
                rm.add_quantization_config(
                    _exact_scope(p.scope), qtyping.TFLOperationName.EMBEDDING_LOOKUP, _embedding_config(ple_bits)
                )
                use_alg = None
                continue
            weight_module[io_names[(p.subgraph, p.op_index)]] = p.module
            rm.add_quantization_config(
                _exact_scope(p.scope), qtyping.TFLOperationName.EMBEDDING_LOOKUP, _embedding_config(m.bits),
                algorithm_key=alg,
            )
        recipe = rm.get_quantization_recipe()
        if not recipe:
            continue
        dst = work / f"{sec}.tflite"
        with exact_weight_materializers(exact, weight_module.get), lean_quantizer():
            q = quantizer.Quantizer(str(src))
            q.load_quantization_recipe(recipe)
            res = run("quantize", f"{sec}: checkpoint integers" if use_alg else f"{sec}: per-row re-quantization",
                      q.quantize)
        qz._export(res, dst)  # noqa: SLF001
        replaced[sec] = dst

    for mod, st in sorted(exact.stats.items()):
        approximations.extend(_clipped_notes(mod, st))
    seen_what: set[str] = set()
    approximations = [a for a in approximations if not (a["what"] in seen_what or seen_what.add(a["what"]))]
    n_kv = _kv_cache_notes(ckpt, approximations) if not kv_carried else _kv_scale_count(ckpt)
    srq_total = _srq_scale_count(ckpt)
    record = {
        "version": QAT_RECORD_VERSION,
        "mode": "exact",
        "checkpoint": str(ckpt.path),
        "weight_algorithm": "ai-edge-quantizer dequantized_weight_recovery (checked against the checkpoint)",
        "recovery": _recovery_summary(exact.stats),
        "srq": {"scales_in_checkpoint": srq_total, "activation_tensors_set": len(qsv)},
        "kv_cache_scales": {"in_checkpoint": n_kv, "carried": kv_carried},
        "approximations": approximations,
    }
    return replaced, record


def _clipped_notes(mod: str, st: dict[str, Any]) -> list[dict[str, Any]]:
    """The approximation note of a module whose int8 weights held -128 (written as -127), if any."""
    if not st.get("int8_clipped"):
        return []
    return [{"what": mod, "why": f"{st['int8_clipped']} int8 weight(s) at -128 clipped to -127 "
             "(LiteRT int8 weights are narrow-range)", "carried": False}]


def _kv_scale_count(ckpt) -> int:
    kv = ckpt.kv_cache_scales()
    return sum(1 for k, v in kv.values() if k is not None) + sum(1 for k, v in kv.values() if v is not None)


def _kv_cache_notes(ckpt, approximations: list[dict[str, Any]]) -> int:
    """Appends the note that the checkpoint's KV-cache scales are not carried (when it has any);
    returns how many k/v scales it has."""
    kv = ckpt.kv_cache_scales()
    n_kv = _kv_scale_count(ckpt)
    if n_kv:
        approximations.append({
            "what": f"KV-cache scales ({n_kv} of {2 * len(kv)} layers' k/v)",
            "why": "the KV cache is float32 in this build: build with --kv-cache int8 (classic route) to carry "
                   "them as the int8 cache's scales",
            "carried": False,
        })
    return n_kv


def _srq_scale_count(ckpt):
    """How many SRQ (input/output activation) scales the checkpoint's linears set (non-zero)."""
    srq_total = 0
    for name, m in ckpt.modules.items():
        if m.kind == "linear":
            s_in, s_out = ckpt.srq_scales(name)
            srq_total += (s_in > 0) + (s_out > 0)
    return srq_total


def _embedding_config(bits: int):
    from ai_edge_quantizer import qtyping

    return qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=bits, symmetric=True, granularity=qtyping.QuantGranularity.CHANNELWISE
        ),
        compute_precision=qtyping.ComputePrecision.INTEGER,
        explicit_dequantize=False,
    )


def _embedding_weights(tflite_path, plans) -> dict[tuple[int, int], str]:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(tflite_path))
    out = {}
    for p in plans:
        op = model.subgraphs[p.subgraph].operators[p.op_index]
        out[(p.subgraph, p.op_index)] = _tensor_name(model.subgraphs[p.subgraph].tensors[op.inputs[1]])
    return out


def _recovery_summary(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    n = len(stats)
    return {
        "tensors": n,
        "integers_exact_by_recovery": sum(1 for s in stats.values() if s.get("recovered_integers_exact")),
        "scales_exact_by_recovery": sum(1 for s in stats.values() if s.get("recovered_scales_exact")),
        "corrected_from_checkpoint": sorted(k for k, s in stats.items() if s.get("corrected_from_checkpoint")),
        "recovery_failed": sorted(k for k, s in stats.items() if s.get("recovery_error")),
        "int8_clipped": {k: s["int8_clipped"] for k, s in stats.items() if s.get("int8_clipped")},
        "by_bits": {
            str(b): {
                "tensors": sum(1 for s in stats.values() if s["bits"] == b),
                "recovery_exact": sum(1 for s in stats.values() if s["bits"] == b and s.get("recovered_integers_exact")
                                      and s.get("recovered_scales_exact")),
            }
            for b in sorted({s["bits"] for s in stats.values()})
        },
    }


# ------------------------------------------------------------------ pipeline hook


@dataclasses.dataclass
class QatBuild:
    """What ``edgekit build --checkpoint <QAT dir>`` needs beyond a float build.

    Created by :meth:`prepare` in the pipeline's source stage; the pipeline then asks it
    for the scheme (:meth:`scheme`), lets it quantize (:meth:`quantize`, exact path only)
    and adds :meth:`report` to the manifest under ``"qat"``.
    """

    checkpoint_dir: Path
    float_dir: Path | None  # None until :meth:`dequantize` (the streamed route never needs it)
    ckpt: Any
    requantize: bool = False
    ple_bits: int = 8
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    float_baseline: bool = False  # fp16/float scheme: the dequantized float itself
    preset: Any = None  # the preset validated against (for a later :meth:`dequantize`)
    kv_int8: bool = False  # the KV cache int8 at the checkpoint's k/v cache scales (--kv-cache int8)

    @property
    def exact(self) -> bool:
        return not self.requantize

    @classmethod
    def prepare(cls, checkpoint, preset, cache_dir: Path, *, requantize: bool = False, ple_bits: int = 8,
                dequantize: bool = True) -> "QatBuild":
        """Validate the checkpoint; ``dequantize``: also write its exact float (the classic route's
        export source; the streamed route reads the checkpoint itself, see :meth:`dequantize`)."""
        if dequantize:
            float_dir, ck = prepare_source(checkpoint, preset, cache_dir)
        else:
            float_dir, ck = None, _validate(checkpoint, preset)
        return cls(Path(checkpoint), float_dir, ck, requantize, ple_bits, preset=preset)

    def dequantize(self, cache_dir: Path) -> Path:
        """The exactly dequantized float32 checkpoint (written once, cached): the classic
        route's export source."""
        if self.float_dir is None:
            self.float_dir, self.ckpt = prepare_source(self.checkpoint_dir, self.preset, cache_dir)
        return self.float_dir

    def streamed_record(self, weight_stats: dict[str, dict], srq: dict[str, Any]) -> dict[str, Any]:
        """The qat record of a streamed build (:func:`edgekit.builder.streamed.build_sections`):
        what the fill wrote per module (``weight_stats``, from
        :class:`edgekit.builder.fill.QatCheckpointWeights`) and the SRQ qsv (:func:`srq_qsv`)."""
        approximations = list(srq.get("approximations") or [])
        for mod, st in sorted(weight_stats.items()):
            if st.get("written", "").startswith("re-quantized"):
                m = self.ckpt.modules[mod]
                why = (f"{m.blocks} scales per row (one per decoder layer) in the checkpoint; a channel-wise "
                       f"EMBEDDING_LOOKUP holds one per row: {st['written']}" if m.kind == "embedding" and m.blocks > 1
                       else f"{m.bits}-bit in the checkpoint: {st['written']}")
                approximations.append({"what": mod, "why": why, "carried": False})
            approximations.extend(_clipped_notes(mod, st))
        kv_carried = int(srq.get("kv_carried") or 0)
        n_kv = _kv_cache_notes(self.ckpt, approximations) if not kv_carried else _kv_scale_count(self.ckpt)
        srq_total = _srq_scale_count(self.ckpt)
        written = [k for k, st in weight_stats.items() if st.get("written") == "checkpoint integers and scales"]
        return {
            "version": QAT_RECORD_VERSION,
            "mode": "exact",
            "route": "streamed",
            "checkpoint": str(self.checkpoint_dir),
            "weight_algorithm": "checkpoint integers and per-row scales written as stored, row block by row block "
                                "(edgekit.builder.fill; no dequantized copy, no re-quantization)",
            "weights": {"tensors": len(weight_stats), "written_as_stored": len(written),
                        "int8_clipped": {k: st["int8_clipped"] for k, st in weight_stats.items()
                                         if st.get("int8_clipped")}},
            "srq": {"scales_in_checkpoint": srq_total, "activation_tensors_set": srq.get("activation_tensors_set", 0),
                    "roundtrip_failed": srq.get("roundtrip_failed", [])},
            "kv_cache_scales": {"in_checkpoint": n_kv, "carried": kv_carried},
            "approximations": approximations,
        }

    def scheme(self, requested, preset):
        """The scheme the bundle follows: the checkpoint's own bit map (fp16 stays fp16).

        Exact path: the per-layer table at ``ple_bits`` (its per-layer block scales cannot
        be kept, see the module doc); KV cache float (its scales are not carried).
        """
        from edgekit.schemes.scheme import Rule, scheme_from_quantization_config

        if requested.is_float:
            self.float_baseline = True
            return requested
        base = scheme_from_quantization_config(self.ckpt.config["quantization_config"], preset=preset,
                                               source=f"{self.checkpoint_dir}/config.json")
        if self.requantize:
            return dataclasses.replace(base, name="wNa8o8-qat-requant", kv_cache="float",
                                       description="QAT bit map, naive min-max re-quantization + calibration")
        rules = (Rule(r"embed_tokens_per_layer$", self.ple_bits,
                      note="per-(row, layer) scales cannot be carried: re-quantized per row"),) + base.weight_rules
        return dataclasses.replace(base, name="wNa8o8-qat", weight_rules=rules, kv_cache="float",
                                   description="QAT checkpoint integers and SRQ scales carried exactly")

    def expected_violations(self, violations: list[str]) -> list[str]:
        """The scheme check's findings minus those the checkpoint itself asks for (see
        :func:`edgekit.bundle.exactness.filter_expected`)."""
        from edgekit.bundle.exactness import filter_expected

        if self.requantize or self.float_baseline:
            return violations
        return filter_expected(violations, _float_activation_modules(self.ckpt))

    def quantize(self, secs, plans, work: Path, run=None) -> dict[str, Path]:
        replaced, self.record = quantize_sections(secs, plans, self.ckpt, work, ple_bits=self.ple_bits, run=run,
                                                  kv_int8=self.kv_int8)
        return replaced

    def reference_skip(self, bundle: Path) -> str | None:
        """Why transformers' reference forward cannot run here (None when it fits): it holds the
        text model in float32 beside the bundle's sections in the interpreter."""
        from edgekit.builder.pipeline import _gb, mem_available

        params = sum(m.rows * m.width for m in self.ckpt.modules.values())
        params += sum(int(np.prod(e.shape)) for k, e in self.ckpt.entries.items()
                      if e.dtype in ("F32", "F16", "BF16") and not k.endswith("_scale"))
        need = 4 * params + Path(bundle).stat().st_size
        avail = mem_available()
        if avail is not None and need > 0.8 * avail:
            return (f"transformers' float32 forward and the bundle would hold ~{_gb(need)}, "
                    f"{_gb(avail)} available")
        return None

    def report(self, bundle: Path, *, reference: bool = True, max_tokens: int = 256, progress=None) -> dict[str, Any]:
        from edgekit.bundle.exactness import exactness_report

        skip = self.reference_skip(bundle) if reference else None
        if skip:
            reference = False

        if self.float_baseline:  # the fp16 baseline: the exactly dequantized float, cast
            rec = {"version": QAT_RECORD_VERSION, "mode": "dequantized float baseline",
                   "checkpoint": str(self.checkpoint_dir)}
            if reference:
                from edgekit.builder.reference import agreement

                rec["agreement"] = agreement(bundle, self.checkpoint_dir, max_tokens=max_tokens, progress=progress)
            return rec
        rec = dict(self.record) if self.record else {"version": QAT_RECORD_VERSION, "mode": "requantize",
                                                     "weight_algorithm": "min-max re-quantization (naive)",
                                                     "checkpoint": str(self.checkpoint_dir)}
        if self.exact:
            rec["float_activation_modules"] = sorted(_float_activation_modules(self.ckpt))
        ex = exactness_report(bundle, self.ckpt)
        rec["exactness"] = {k: v for k, v in ex.items() if k != "tensors"}
        rec["exactness"]["per_tensor"] = [
            {k: t.get(k) for k in ("module", "checkpoint_bits", "bundle_bits", "exact", "integers_equal",
                                   "scales_equal", "reason") if t.get(k) is not None}
            for t in ex["tensors"]
        ]
        if reference:
            from edgekit.builder.reference import agreement

            rec["agreement"] = agreement(bundle, self.checkpoint_dir, max_tokens=max_tokens, progress=progress)
        elif skip:
            rec["agreement"] = {"skipped": skip}
        return rec


def _validate(checkpoint, preset, width_div: int | None = None):
    """Validate a QAT checkpoint against the preset (headers and scale tensors only), at
    ``width_div`` or else the width its config.json has."""
    from edgekit.models import qat
    from edgekit.models.presets import get_preset, width_div_for_config

    preset = get_preset(preset)
    p = Path(checkpoint)
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: cannot read config.json ({exc})") from None
    wd = width_div or width_div_for_config(preset, cfg) or 1
    try:
        hf = preset.config(wd)
    except Exception:  # the preset cannot be divided that way: the size is wrong
        hf = preset.config(1)
    return qat.validate_qat_checkpoint(p, hf, preset_name=preset.name)


def precheck(checkpoint, preset) -> None:
    """Validate a ``quant_method: gemma`` checkpoint before anything reads its weights
    (no-op for other checkpoints)."""
    from edgekit.models import qat

    p = Path(checkpoint)
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return  # the checkpoint loader reports it
    if not qat.is_qat_config(cfg):
        return
    _validate(p, preset)


def is_qat_checkpoint(checkpoint) -> bool:
    from edgekit.models import qat

    try:
        cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return qat.is_qat_config(cfg)


def _float_activation_modules(ckpt) -> set[str]:
    """Linears the checkpoint leaves with float activations (both SRQ scales 0: lm_head)."""
    out = set()
    for name, m in ckpt.modules.items():
        if m.kind == "linear" and ckpt.srq_scales(name) == (0.0, 0.0):
            out.add(name)
    return out


