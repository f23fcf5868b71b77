"""edgekit.builder.quantizer_memory: the quantizer without its interpreter check, and with one float16
copy per shared weight, gives the same bytes; ``lean_quantizer`` applies all four adjustments and
restores them.

The upstream ``Quantizer._ensure_model_qsv_sufficient`` builds an interpreter on the whole
float model (9.65 GiB on the full E2B stand-in) and can only fail on an empty qsv entry;
``lean_qsv_check`` skips it exactly when no entry is empty.
"""

from __future__ import annotations

import hashlib

import pytest

from edgekit.builder import quantizer_memory as qm
from test_streamed import SEC_PD, _scheme, _standin


def _inputs(tmp_path):
    from edgekit.builder import streamed as sm

    _res, _toml, secs = _standin("wNa8o8")
    src = secs[SEC_PD]
    plans = sm.op_plans(src, SEC_PD, _scheme("wNa8o8").bits_for)
    mods = {p.module for p in plans}
    ranges = {m: {"in_min": -3.0, "in_max": 3.0, "out_min": -6.0, "out_max": 5.0} for m in mods}
    qsv = sm.ranges_to_qsv(src, SEC_PD, ranges, {p.module for p in plans if p.bits is not None})
    return src, plans, qsv


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_lean_check_gives_the_same_bytes_and_skips_the_interpreter(tmp_path):
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    from edgekit.builder import streamed as sm
    from edgekit.builder.quantizer_memory import lean_qsv_check

    src, plans, qsv = _inputs(tmp_path)
    plain, lean = tmp_path / "plain.tflite", tmp_path / "lean.tflite"
    with qm.fast_array_compare():
        sm.quantize_standin_static(src, plain, plans, qsv)
    made = []
    orig = tfl_interpreter_utils.create_tfl_interpreter

    def counting(*a, **k):
        made.append(1)
        return orig(*a, **k)

    tfl_interpreter_utils.create_tfl_interpreter = counting
    try:
        with qm.fast_array_compare(), lean_qsv_check() as st:
            sm.quantize_standin_static(src, lean, plans, qsv)
    finally:
        tfl_interpreter_utils.create_tfl_interpreter = orig
    assert st == {"checks": 1, "skipped": 1}
    assert made == []  # no interpreter was built for the check
    assert _sha(lean) == _sha(plain)


@pytest.mark.slow
def test_an_empty_qsv_entry_still_gets_the_upstream_check(tmp_path):
    from edgekit.builder import streamed as sm
    from edgekit.builder.quantizer_memory import lean_qsv_check

    src, plans, qsv = _inputs(tmp_path)
    name = sorted(qsv)[0]
    qsv[name] = {}
    with qm.fast_array_compare(), lean_qsv_check() as st, pytest.raises(ValueError, match="Missing QSVs"):
        sm.quantize_standin_static(src, tmp_path / "x.tflite", plans, qsv)
    assert st == {"checks": 1, "skipped": 0}


@pytest.mark.slow
def test_compiled_recipe_patterns_match_the_same_scopes(tmp_path):
    """Patterns compiled once (E4B's 552-entry recipe thrashed re's 512-entry cache): same bytes."""
    from ai_edge_quantizer import recipe_manager

    from edgekit.builder import quantize as qz
    from edgekit.builder import streamed as sm
    from edgekit.builder.quantizer_memory import compiled_recipe_patterns, lean_quantizer

    src, plans, qsv = _inputs(tmp_path)
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    with qm.fast_array_compare(), lean_quantizer():
        shim = recipe_manager.re
        sm.quantize_standin_static(src, a, plans, qsv)
    with qm.fast_array_compare():
        sm.quantize_standin_static(src, b, plans, qsv)
    assert recipe_manager.re is not shim  # restored
    assert _sha(a) == _sha(b)
    patterns = {e["regex"] for e in qz.static_recipe(plans, True)}
    assert set(p for p, _ in shim._compiled) <= patterns | {".*"} and len(shim._compiled) >= 1
    with compiled_recipe_patterns():
        assert recipe_manager.re.search("a.c", "xabcx") and not recipe_manager.re.search("^b", "abc")


def test_lean_quantizer_applies_all_four_and_restores_them():
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe_manager

    fc = algorithm_manager._alg_manager_instance._algorithm_registry[  # noqa: SLF001
        algorithm_manager.AlgorithmName.FLOAT_CASTING].quantized_ops[qtyping.TFLOperationName.FULLY_CONNECTED]

    def current():
        return (qtyping._compare_array_or_none, quantizer.Quantizer._ensure_model_qsv_sufficient,  # noqa: SLF001
                recipe_manager.re, fc.materialize_func)

    before = current()
    with qm.lean_quantizer() as stats:
        inside = current()
    assert stats == {"checks": 0, "skipped": 0}
    assert all(a is not b for a, b in zip(inside, before)), "each of the four is replaced within"
    assert isinstance(inside[2], qm._CompiledPatterns)
    assert current() == before  # restored on exit


def test_fast_array_compare_gives_the_upstream_answers():
    import numpy as np
    from ai_edge_quantizer import qtyping

    a16 = np.arange(12, dtype=np.float16).reshape(3, 4)
    cases = [(None, None), (a16, None), (None, a16), (a16, a16), (a16, a16.copy()), (a16, a16 + 1),
             (a16, a16.reshape(4, 3)), (np.array([1, 2], np.int8), np.array([1, 2], np.int8)),
             (np.array([1, 2], np.int8), np.array([1, 3], np.int8)), (np.float32(0.5), np.float32(0.5))]
    upstream = [qtyping._compare_array_or_none(x, y) for x, y in cases]  # noqa: SLF001
    with qm.fast_array_compare():
        ours = [qtyping._compare_array_or_none(x, y) for x, y in cases]  # noqa: SLF001
    assert ours == upstream
    assert upstream.count(True) >= 4 and upstream.count(False) >= 4


@pytest.mark.slow
def test_shared_fp16_casts_keep_one_copy_per_buffer_and_the_same_bytes(tmp_path):
    """ai-edge-quantizer's float16 casting keeps a copy per op that reads a shared weight; within
    ``shared_fp16_casts`` those ops hold the buffer's cached copy, and the section is byte-identical."""
    from ai_edge_quantizer import algorithm_manager

    from edgekit.builder import quantize as qz
    from edgekit.builder import fill

    _res, _toml, secs = _standin("fp16")
    src = secs[SEC_PD]
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(src))
    readers: dict[int, int] = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            if fill._code(model, op) in (fill.FULLY_CONNECTED, fill.EMBEDDING_LOOKUP) and len(op.inputs) > 1:
                b = int(sg.tensors[int(op.inputs[1])].buffer)
                readers[b] = readers.get(b, 0) + 1
    shared = sum(n - 1 for n in readers.values() if n > 1)
    assert shared > 0, "the stand-in shares weights among ops"

    plain, lean = tmp_path / "plain.tflite", tmp_path / "lean.tflite"
    registry = algorithm_manager._alg_manager_instance._algorithm_registry  # noqa: SLF001
    ops = registry[algorithm_manager.AlgorithmName.FLOAT_CASTING].quantized_ops
    before = {k: v.materialize_func for k, v in ops.items()}
    from ai_edge_quantizer import quantizer

    with qm.fast_array_compare():  # upstream as is, without the pairwise memoryview comparison
        q = quantizer.Quantizer(str(src))
        q.load_quantization_recipe(qz.fp16_recipe())
        qz._export(q.quantize(), plain)  # noqa: SLF001
    with qm.shared_fp16_casts() as dropped:
        qz.quantize_weights(src, lean, qz.fp16_recipe())
    assert {k: v.materialize_func for k, v in ops.items()} == before  # restored on exit
    assert dropped["copies"] >= shared  # every op past the first on a shared buffer (some are materialized twice)
    assert _sha(lean) == _sha(plain)
