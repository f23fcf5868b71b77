"""ai-edge-quantizer with less memory on large graphs, the same bytes out.

``Quantizer.quantize(calibration_result)`` first runs ``_ensure_model_qsv_sufficient``:
it builds a TFLite interpreter on the whole float model (XNNPack packs every weight of
every op) only to list tensor names, and it can only fail when the calibration result
holds an *empty* entry. The streamed route gives fixed ranges for every FC input and
output (:func:`edgekit.builder.streamed.ranges_to_qsv`), never an empty one; the classic
route's calibration writes min/max for every tensor it saw. On the full E2B stand-in's
prefill/decode section (592 MB) that interpreter took the quantization to 9.65 GiB peak
RSS, while every later phase (parameters, transformations, serialization) stayed under
1 GiB (measured phase by phase, docs/build-memory.md).

:func:`lean_qsv_check` skips the interpreter when no entry is empty, which is exactly
when the upstream check cannot raise; with an empty entry it runs the upstream check.
:func:`compiled_recipe_patterns` compiles each recipe scope pattern once, and
:func:`fast_array_compare` compares quantized arrays with numpy. :func:`lean_quantizer`
applies all of them and :func:`shared_fp16_casts`; every ``Quantizer`` of the build runs inside it.

(Checked and not needed for the integer recipes: ai-edge-quantizer computes a shared
weight's quantized data once per buffer, not once per consuming op: 17
``uniform_quantize`` calls for the 17 weight buffers of that section.)

Its float16 casting does not: ``float_casting.materialize_fc_conv`` (0.10.0) looks the
buffer up in its cache and then replaces what it found with a fresh
``astype(np.float16)``, so every op that reads a shared weight holds its own copy until
serialization. :func:`shared_fp16_casts` hands every such op the cached copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import numpy as np


@contextlib.contextmanager
def lean_qsv_check():
    """Within: ``Quantizer.quantize`` checks a calibration result without an interpreter
    when none of its entries is empty. The method is restored on exit."""
    from ai_edge_quantizer import quantizer

    cls = quantizer.Quantizer
    orig = cls._ensure_model_qsv_sufficient  # noqa: SLF001
    skipped = {"checks": 0, "skipped": 0}

    def check(self, calibration_result):
        skipped["checks"] += 1
        if any(not v for v in calibration_result.values()):
            return orig(self, calibration_result)
        skipped["skipped"] += 1
        return None

    cls._ensure_model_qsv_sufficient = check  # noqa: SLF001
    try:
        yield skipped
    finally:
        cls._ensure_model_qsv_sufficient = orig  # noqa: SLF001


class _CompiledPatterns:
    """``re`` for ai-edge-quantizer's recipe manager with every scope pattern compiled once.

    ``RecipeManager.get_quantization_configs`` calls ``re.search(scope_regex, scope)`` for
    every op against every recipe entry. A per-module recipe of full E4B holds more
    patterns than ``re``'s own cache keeps (512), so each call recompiled its pattern:
    the static recipe on E4B's stand-in spent minutes in ``re._compiler.compile``.
    """

    def __init__(self):
        self._compiled: dict[tuple[str, int], re.Pattern] = {}

    def search(self, pattern, string, flags=0):
        key = (pattern, flags)
        p = self._compiled.get(key)
        if p is None:
            p = self._compiled[key] = re.compile(pattern, flags)
        return p.search(string)

    def __getattr__(self, name):
        return getattr(re, name)


@contextlib.contextmanager
def compiled_recipe_patterns():
    """Within: the recipe manager matches scopes with patterns compiled once (same matches)."""
    from ai_edge_quantizer import recipe_manager

    orig = recipe_manager.re
    recipe_manager.re = _CompiledPatterns()
    try:
        yield
    finally:
        recipe_manager.re = orig


@contextlib.contextmanager
def fast_array_compare():
    """Within: ai-edge-quantizer compares quantized arrays with numpy, not through memoryviews.

    Its ``qtyping._compare_array_or_none`` first compares ``a.data == b.data``: for a
    float16 array Python compares memoryviews element by element, seconds per call. A
    stand-in's shared weight is read by up to 40 ops, each with its own float16 copy, and
    the buffer-sharing check compares them pairwise: the fp16 recipe on full E2B's
    stand-in ran over 12 minutes in that comparison. ``np.array_equal`` gives the same
    answer for these (finite) arrays. The module attribute is restored on exit.
    """
    from ai_edge_quantizer import qtyping

    orig = qtyping._compare_array_or_none  # noqa: SLF001

    def compare(a, b):
        if a is None or b is None:
            return a is None and b is None
        return a is b or np.array_equal(np.asarray(a), np.asarray(b))

    qtyping._compare_array_or_none = compare  # noqa: SLF001
    try:
        yield
    finally:
        qtyping._compare_array_or_none = orig  # noqa: SLF001


@contextlib.contextmanager
def shared_fp16_casts():
    """Within: ai-edge-quantizer's float16 casting gives every op that reads one weight buffer
    the same float16 array, the one its own cache holds for that buffer.

    Upstream computes each op's copy and keeps it: on a stand-in whose tie groups share one
    weight among up to 40 ops, that is the whole decoder in float16 held at once (full E4B
    fp16: the builder peaked at 13.3 GiB in this stage). The arrays are equal, so the buffer
    sharing check and the serialized bytes are the same. Yields how many copies were dropped;
    the registry entries are restored on exit.
    """
    from ai_edge_quantizer import algorithm_manager, qtyping
    from ai_edge_quantizer.algorithms.nonlinear_quantize import float_casting
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    ops = algorithm_manager._alg_manager_instance._algorithm_registry[  # noqa: SLF001
        algorithm_manager.AlgorithmName.FLOAT_CASTING].quantized_ops
    names = [n for n in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.EMBEDDING_LOOKUP)
             if n in ops]
    saved = {n: ops[n].materialize_func for n in names}
    config = float_casting._FP16_QUANT_CONFIG  # noqa: SLF001
    dropped = {"copies": 0}

    def wrap(orig):
        def materialize(op_info, graph_info, tensor_name_to_qsv, tensor_quant_params_cache):
            out = orig(op_info, graph_info, tensor_name_to_qsv, tensor_quant_params_cache)
            weight = tfl_flatbuffer_utils.parse_fc_bmm_conv_tensors(op_info.op, graph_info.subgraph_tensors)[1]
            cached = tensor_quant_params_cache.lookup(weight.buffer, config) if weight is not None else None
            if cached is None:
                return out
            for i, ttp in enumerate(out):
                consumers = ttp.consumers or []
                for j, c in enumerate(consumers):
                    p = c.parameters
                    if (isinstance(p, qtyping.NonLinearQuantParams) and p is not cached
                            and p.quantized_data is not None
                            and np.array_equal(p.quantized_data, cached.quantized_data)):
                        consumers[j] = dataclasses.replace(c, parameters=cached)
                        dropped["copies"] += 1
            return out
        return materialize

    for n in names:
        ops[n].materialize_func = wrap(saved[n])
    try:
        yield dropped
    finally:
        for n in names:
            ops[n].materialize_func = saved[n]


@contextlib.contextmanager
def lean_quantizer():
    """All four: no interpreter for the qsv check, scope patterns compiled once, arrays
    compared with numpy, one float16 copy per shared weight. Yields the qsv check's counts
    (:func:`lean_qsv_check`)."""
    with fast_array_compare(), lean_qsv_check() as stats, compiled_recipe_patterns(), shared_fp16_casts():
        yield stats
