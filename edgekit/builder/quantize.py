"""Apply a scheme to a float ``.litertlm``: static int8 activations + N-bit weights.

Route B of the toolchain notes, the one whose bundles run on the standard CPU
layout (no split cache):

1. ``litert_lm_builder`` unpacks the float bundle into one ``.tflite`` per section.
2. Calibration: the float ``prefill_<N>`` / ``decode`` signatures are run with
   ai-edge-litert's interpreter over the calibration prompts (through
   :class:`edgekit.runtime.signatures.BundleModel`, which feeds the embedder
   sections' output and carries the KV cache), recording every signature's feeds.
3. ai-edge-quantizer quantizes every FULLY_CONNECTED op of
   ``tf_lite_prefill_decode`` with static per-tensor int8 activations (input and
   output of the op: the output is int8 with a fixed scale inside the graph, "o8")
   and per-channel N-bit weights, N from the scheme's rule for the op's
   Hugging Face module name. 2-bit static has no policy entry in
   ai-edge-quantizer 0.10: the op config is marked ``skip_checks`` (the CPU
   kernels run INT8 x INT2 fully-connected ops).
   The graph's own inputs and outputs (embeddings, mask, KV cache, logits) stay
   float through custom INPUT/OUTPUT materializers, so the engine's sampler and
   KV-cache handling see the dtypes they expect.
4. The embedder sections get dynamic-range channel-wise N-bit tables on
   EMBEDDING_LOOKUP (main table and per-layer table from their own rules).
5. ``litert_lm_builder`` repacks the sections into a ``.litertlm``.

The ``fp16`` scheme casts FULLY_CONNECTED and EMBEDDING_LOOKUP weights to
float16 (ai-edge-quantizer FLOAT_CASTING, weight-only): an honest FP16 baseline,
not the float32 export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from edgekit.bundle.tensor_names import module_name_for

BitsFor = Callable[[str], "int | None"]

FULLY_CONNECTED = 9
EMBEDDING_LOOKUP = 7
GELU = 150

@dataclasses.dataclass(frozen=True)
class OpPlan:
    subgraph: int
    op_index: int
    kind: str  # "fc" | "embedding"
    scope: str  # ai-edge-quantizer scope (output tensor names)
    weight_name: str
    module: str  # Hugging Face module name
    bits: int | None  # None = keep float


def _opcode(model, op) -> int:
    oc = model.operatorCodes[op.opcodeIndex]
    return max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))


def _name(t) -> str:
    n = t.name
    return n.decode("utf-8") if isinstance(n, bytes) else str(n)


def plan_section(tflite_path: str | os.PathLike, section: str, bits_for: BitsFor) -> list[OpPlan]:
    """Every FULLY_CONNECTED / EMBEDDING_LOOKUP op of a section with its module and bits."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(tflite_path))
    plans: list[OpPlan] = []
    from edgekit.bundle.tensor_names import ENCODER_SECTIONS, shared_linear_paths

    for si, sg in enumerate(model.subgraphs):
        shared: frozenset[str] = frozenset()
        if section in ENCODER_SECTIONS:  # vision/audio (edgekit/builder/encoders.py): joined module paths
            shared = shared_linear_paths(_name(sg.tensors[op.inputs[1]]) for op in sg.operators
                                         if _opcode(model, op) == FULLY_CONNECTED)
        consumers: dict[int, list[int]] = {}
        for op in sg.operators:
            for i in op.inputs if op.inputs is not None else []:
                consumers.setdefault(int(i), []).append(_opcode(model, op))
        for oi, op in enumerate(sg.operators):
            code = _opcode(model, op)
            if code not in (FULLY_CONNECTED, EMBEDDING_LOOKUP):
                continue
            scope = fu.get_op_scope(op, sg.tensors)
            if code == FULLY_CONNECTED:
                wname = _name(sg.tensors[op.inputs[1]])
                out = int(op.outputs[0])
                is_gate = GELU in consumers.get(out, []) if "gate_proj" in wname else None
                module = module_name_for(wname, scope, is_gate, section, shared)
                kind = "fc"
            else:
                wname = _name(sg.tensors[op.inputs[1]])
                module = module_name_for(wname, scope, None, section)
                kind = "embedding"
            if module is None:
                raise ValueError(f"cannot map tensor {wname!r} of {section} to a model module")
            plans.append(OpPlan(si, oi, kind, scope, wname, module, bits_for(module)))
    return plans


# --------------------------------------------------------------------- recipes
def _static_config(bits: int, symmetric_act: bool):
    from ai_edge_quantizer import qtyping

    return qtyping.OpQuantizationConfig(
        activation_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=symmetric_act),
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=bits, symmetric=True, granularity=qtyping.QuantGranularity.CHANNELWISE
        ),
        compute_precision=qtyping.ComputePrecision.INTEGER,
        explicit_dequantize=False,
        # ai-edge-quantizer 0.10's policy has no static int2 entry; the kernels run it.
        skip_checks=bits == 2,
    )


def _exact(scope: str) -> str:
    return "^" + re.escape(scope) + "$"


def add_graph_io(rm) -> None:
    """Recipe entries that quantize the graph's inputs and outputs to symmetric per-tensor int8
    (``float_graph_io(quantized=...)`` then keeps all but the named tensors float)."""
    from ai_edge_quantizer import qtyping

    int8 = qtyping.TensorQuantizationConfig(num_bits=8, symmetric=True)
    io = qtyping.OpQuantizationConfig(  # the weight config is required by the recipe format, unused here
        activation_tensor_config=int8, weight_tensor_config=int8,
        compute_precision=qtyping.ComputePrecision.INTEGER, explicit_dequantize=False)
    for opn in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        rm.add_quantization_config(".*", opn, io)


def static_recipe(plans: Sequence[OpPlan], symmetric_act: bool = True, kv_int8: bool = False) -> list[dict]:
    """Static int8 activations and N-bit weights on every planned FC; ``kv_int8``: the graph's
    inputs and outputs quantized too (per tensor, symmetric int8): only the KV-cache tensors are
    (``float_graph_io(quantized=...)`` ignores the others)."""
    from ai_edge_quantizer import qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    if kv_int8:
        add_graph_io(rm)
    seen: set[str] = set()
    for p in plans:
        if p.kind != "fc" or p.bits is None or p.scope in seen:
            continue
        seen.add(p.scope)
        rm.add_quantization_config(
            _exact(p.scope), qtyping.TFLOperationName.FULLY_CONNECTED, _static_config(p.bits, symmetric_act)
        )
    return rm.get_quantization_recipe()


def _weight_only_recipe(plans: Sequence[OpPlan], kind: str, op_name: str) -> list[dict]:
    """Channel-wise N-bit weights of every ``kind`` op (one rule per scope), float activations."""
    from ai_edge_quantizer import qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    seen: set[str] = set()
    for p in plans:
        if p.kind != kind or p.bits is None or p.scope in seen:
            continue
        seen.add(p.scope)
        cfg = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(
                num_bits=p.bits, symmetric=True, granularity=qtyping.QuantGranularity.CHANNELWISE
            ),
            compute_precision=qtyping.ComputePrecision.INTEGER,
            explicit_dequantize=False,
        )
        rm.add_quantization_config(_exact(p.scope), getattr(qtyping.TFLOperationName, op_name), cfg)
    return rm.get_quantization_recipe()


def dynamic_recipe(plans: Sequence[OpPlan]) -> list[dict]:
    """Channel-wise N-bit FC weights with float (dynamic-range) activations."""
    return _weight_only_recipe(plans, "fc", "FULLY_CONNECTED")


def embedding_recipe(plans: Sequence[OpPlan]) -> list[dict]:
    """Channel-wise N-bit embedding tables (EMBEDDING_LOOKUP)."""
    return _weight_only_recipe(plans, "embedding", "EMBEDDING_LOOKUP")


def fp16_recipe() -> list[dict]:
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    for opn in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.EMBEDDING_LOOKUP):
        rm.add_weight_only_config(
            ".*", opn, num_bits=16, algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING
        )
    return rm.get_quantization_recipe()


# ------------------------------------------------------ float graph boundaries
def kv_tensor_names(tflite_path: str | os.PathLike) -> dict[str, set[str]]:
    """Signature name (``kv_cache_k_0``...) -> the graph tensors that carry it, over every signature
    (the input and the updated output of prefill_<N> and decode)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgekit.bundle.tflite import KV_PREFIX

    model = fu.read_model(str(tflite_path))
    out: dict[str, set[str]] = {}
    for sd in model.signatureDefs or []:
        sg = model.subgraphs[sd.subgraphIndex]
        for tm in list(sd.inputs or []) + list(sd.outputs or []):
            name = _name(tm)
            if name.startswith(KV_PREFIX):
                out.setdefault(name, set()).add(_name(sg.tensors[tm.tensorIndex]))
    return out


@contextlib.contextmanager
def float_graph_io(range_update: str = "minmax", quantized: frozenset[str] = frozenset()):
    """Keep graph inputs/outputs float (but ``quantized``), and choose how calibration merges ranges.

    INPUT/OUTPUT get materializers that ignore every tensor whose name is not in
    ``quantized``, so the graph's embeddings, mask, logits (and KV cache, unless its
    tensors are named) stay float32. ``range_update``:
    ``"minmax"`` keeps the true min/max over all calibration samples (no clipping
    of what calibration saw); ``"ema"`` is ai-edge-quantizer's default moving average.
    The registry is process-global: everything is restored on exit.
    """
    import functools

    from ai_edge_quantizer import algorithm_manager, qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import naive_min_max_quantize
    from ai_edge_quantizer.algorithms.utils import common_utils
    from ai_edge_quantizer.utils import qsv_utils

    alg = algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT
    api = algorithm_manager._alg_manager_instance  # noqa: SLF001 - no public getter for the records
    info = api._algorithm_registry[alg].quantized_ops  # noqa: SLF001
    saved = {k: dataclasses.replace(v) for k, v in info.items()}

    def _ignored(idx, graph_info) -> list[int]:
        return [k for k, t in enumerate(idx if idx is not None else [])
                if _name(graph_info.subgraph_tensors[t]) not in quantized]

    def _ignore_all(get_params, op_info, graph_info, tensor_name_to_qsv, tensor_quant_params_cache=None):
        return common_utils.materialize_standard_op(
            op_info,
            graph_info,
            tensor_name_to_qsv,
            get_params,
            tensor_quant_params_cache=tensor_quant_params_cache,
            inputs_to_ignore=_ignored(op_info.op.inputs, graph_info),
            outputs_to_ignore=_ignored(op_info.op.outputs, graph_info),
        )

    try:
        for opn in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            algorithm_manager.register_quantized_op(
                alg,
                opn,
                naive_min_max_quantize.init_qsvs,
                calibration_func=naive_min_max_quantize.min_max_calibrate,
                materialize_func=functools.partial(_ignore_all, naive_min_max_quantize.get_tensor_quant_params),
            )
        if range_update == "minmax":
            for v in info.values():
                v.update_qsv_func = qsv_utils.min_max_update
        yield
    finally:
        info.clear()
        info.update(saved)


# ------------------------------------------------------------------ calibration
def record_calibration(
    float_bundle: str | os.PathLike,
    prompts: Iterable[Sequence[int]],
    decode_steps: int = 8,
    num_threads: int | None = None,
    max_samples: int | None = 64,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run the float bundle over the prompts; return each signature's recorded feeds.

    Each prompt is prefilled (through ``prefill_<N>``, padded) and then decoded
    greedily for ``decode_steps`` tokens, so both signatures see realistic inputs
    with a filled KV cache.
    """
    from edgekit.runtime.signatures import BundleModel

    feeds: dict[str, list[dict[str, np.ndarray]]] = {}

    def rec(name: str, f: dict[str, np.ndarray]) -> None:
        feeds.setdefault(name, []).append(f)

    bm = BundleModel(float_bundle, num_threads=num_threads, recorder=rec)
    for ids in prompts:
        ids = list(ids)[: max(1, bm.cache_length - decode_steps - 1)]
        if not ids:
            continue
        bm.reset()
        logits = bm.prefill(ids)
        for _ in range(decode_steps):
            if bm.position >= bm.cache_length:
                break
            logits = bm.decode(int(np.argmax(logits)))
    if max_samples:
        # An even subsample keeps early and late positions of every prompt; the
        # quantizer's calibration pass costs ~0.1 s per sample on the tiny model.
        for k, v in feeds.items():
            if len(v) > max_samples:
                idx = np.linspace(0, len(v) - 1, max_samples).round().astype(int)
                feeds[k] = [v[i] for i in idx]
    return feeds


# ------------------------------------------------------------------ application
def quantize_static(
    tflite_in: str | os.PathLike,
    tflite_out: str | os.PathLike,
    plans: Sequence[OpPlan],
    calibration: dict[str, list[dict[str, np.ndarray]]],
    num_threads: int = 2,
    symmetric_act: bool = True,
    range_update: str = "minmax",
    kv_int8: bool = False,
) -> None:
    """Static int8 activations (per tensor, fixed scale) + N-bit channel-wise weights on every FC;
    ``kv_int8``: the KV-cache inputs and outputs int8 too, one calibrated range per cache over
    every signature (:func:`align_kv_ranges`).

    ``symmetric_act`` (zero point 0) is the default: with ai-edge-quantizer's asymmetric
    int8 activations, LiteRT-LM 0.18.1's CPU engine computes visibly different logits than
    ai-edge-litert's interpreter (which tracks float) on the same file; with symmetric ones
    both runtimes give the same greedy text, at the same quality (tiny model, 8-bit
    weights: KL vs fp16 0.0013 symmetric, 0.0012 asymmetric).
    """
    from ai_edge_quantizer import quantizer

    from edgekit.builder.quantizer_memory import lean_quantizer

    kv = kv_tensor_names(tflite_in) if kv_int8 else {}
    recipe = static_recipe(plans, symmetric_act, kv_int8=bool(kv))
    with float_graph_io(range_update, frozenset().union(*kv.values())), lean_quantizer():
        q = quantizer.Quantizer(str(tflite_in))
        q.load_quantization_recipe(recipe)
        qsv = q.calibrate(calibration, num_threads=num_threads)
        if kv:
            align_kv_ranges(tflite_in, qsv, kv)
        res = q.quantize(qsv)
    _export(res, tflite_out)


def align_kv_ranges(tflite_path: str | os.PathLike, qsv: dict, kv: dict[str, set[str]]) -> dict[str, float]:
    """One range per KV-cache tensor over every signature (the cache written by prefill is read by
    decode, and the engine binds one buffer to a signature's input and output): ai-edge-quantizer's
    ``CalibrationQsvAlignmentUtils.align_quant_stats``. Returns each cache's symmetric bound."""
    from ai_edge_quantizer.utils.calibration_utils import CalibrationQsvAlignmentUtils

    util = CalibrationQsvAlignmentUtils(str(tflite_path))
    sigs = list(util._signature_runners)  # noqa: SLF001 - the signatures it searches
    bounds = {}
    for name in sorted(kv):
        lo, hi = util.align_quant_stats(qsv, {s: [name] for s in sigs})
        bounds[name] = float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))
    return bounds


def quantize_weights(tflite_in: str | os.PathLike, tflite_out: str | os.PathLike, recipe: list[dict]) -> None:
    from ai_edge_quantizer import quantizer

    from edgekit.builder.quantizer_memory import lean_quantizer

    with lean_quantizer():
        q = quantizer.Quantizer(str(tflite_in))
        q.load_quantization_recipe(recipe)
        res = q.quantize()
    _export(res, tflite_out)


def _export(result, path) -> None:
    path = Path(path)
    if path.exists():
        path.unlink()
    result.export_model(str(path))


# ------------------------------------------------------------ unpack / repack
def unpack(bundle: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Unpack with litert-lm-builder; returns the model.toml path."""
    from litert_lm_builder import litertlm_builder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    litertlm_builder.LitertLmFileBuilder.unpack(str(bundle), str(out_dir))
    return out_dir / "model.toml"


def section_files(toml_path: str | os.PathLike) -> dict[str, Path]:
    """Map ``tf_lite_<model_type>`` -> unpacked .tflite path from a model.toml."""
    import tomllib

    toml_path = Path(toml_path)
    data = tomllib.loads(toml_path.read_text())
    out: dict[str, Path] = {}
    for s in data.get("section", []):
        if s.get("section_type") == "TFLiteModel":
            mt = s.get("model_type", "")
            name = mt if mt.startswith("tf_lite_") else f"tf_lite_{mt}"
            out[name] = toml_path.parent / s["data_path"]
    return out


def repack(
    toml_path: str | os.PathLike,
    out_path: str | os.PathLike,
    replace: dict[str, Path],
    system_metadata: dict[str, object] | None = None,
    drop_sections: Iterable[str] = (),
) -> None:
    """Rebuild a ``.litertlm`` from an unpacked TOML, with some section files replaced.

    ``system_metadata`` adds (string/float/int/bool) entries; ``drop_sections``
    removes TFLite sections by name (``tf_lite_vision_encoder``...).
    """
    import tomllib

    from litert_lm_builder import litertlm_builder as lb

    toml_path = Path(toml_path)
    data = tomllib.loads(toml_path.read_text())
    entries = [dict(e) for e in data.get("system_metadata", {}).get("entries", [])]
    for k, v in (system_metadata or {}).items():
        entries = [e for e in entries if e["key"] != k]
        if isinstance(v, bool):
            vt = "Bool"
        elif isinstance(v, int):
            vt = "Int64"
        elif isinstance(v, float):
            vt = "Float32"
        else:
            vt, v = "String", str(v)
        entries.append({"key": k, "value_type": vt, "value": v})
    drop = set(drop_sections)
    sections = []
    for s in data.get("section", []):
        s = dict(s)
        if s.get("section_type") == "TFLiteModel":
            mt = s.get("model_type", "")
            name = mt if mt.startswith("tf_lite_") else f"tf_lite_{mt}"
            if name in drop:
                continue
            if name in replace:
                s["data_path"] = str(Path(replace[name]).resolve())
        sections.append(s)
    text = "[system_metadata]\nentries = [\n"
    text += "".join(f"  {_toml_value(e)},\n" for e in entries)
    text += "]\n\n" + _sections_toml(sections)
    builder = lb.LitertLmFileBuilder.from_toml_str(text, parent_dir=str(toml_path.parent))
    with open(out_path, "wb") as f:
        builder.build(f)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _sections_toml(sections: list[dict]) -> str:
    out = []
    for s in sections:
        out.append("[[section]]")
        for k, v in s.items():
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)
