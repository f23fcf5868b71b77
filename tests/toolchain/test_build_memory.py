"""Build memory: litert-torch lightweight conversion in the export child, and the stage profiler.

``ExportOptions(lightweight_conversion=True)`` (opt-in) runs the float export with
``experimental_lightweight_conversion`` (and the same for the per-layer embedder
convert that export_hf does not pass it to). These tests check that it changes
nothing in the exported graphs: same operators, and bit-identical outputs of every
signature of every section against the default export, on the tiny model.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.builder import export as ex
from fixtures_bundles import bundle_cache_root

REPO = Path(__file__).resolve().parents[2]


def _load_profiler():
    spec = importlib.util.spec_from_file_location("profile_export_memory", REPO / "scripts" / "profile_export_memory.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["profile_export_memory"] = mod
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ fast
def test_lightweight_is_opt_in_and_part_of_the_cache_key():
    on, off = ex.ExportOptions(lightweight_conversion=True), ex.ExportOptions()
    assert off.lightweight_conversion is False
    assert "lightweight_conversion" not in off.to_dict()  # exports cached before the option keep their keys
    assert on.to_dict()["lightweight_conversion"] is True
    ident = {"kind": "random_weights", "seed": 0}
    assert ex.export_key(ident, on) != ex.export_key(ident, off)  # never reused in place of the other


def test_lightweight_everywhere_sets_the_default_inside_only_and_an_explicit_argument_wins(monkeypatch):
    from litert_torch._convert import interface

    seen: list[dict] = []

    def fake_convert(self, *args, **kwargs):
        seen.append(dict(kwargs))
        return "converted"

    monkeypatch.setattr(interface.Converter, "convert", fake_convert)  # restored after the test
    c = interface.Converter()
    with ex.lightweight_everywhere():
        assert c.convert(strict_export=False) == "converted"
        assert c.convert(lightweight_conversion=False) == "converted"
    assert interface.Converter.convert is fake_convert  # undone on exit
    c.convert(strict_export=True)
    assert seen == [{"strict_export": False, "lightweight_conversion": True}, {"lightweight_conversion": False},
                    {"strict_export": True}]


def test_profiler_catches_a_peak_inside_one_native_call():
    """A 256 MiB allocation freed inside one C call: a sampler thread cannot see it, VmHWM does."""
    prof = _load_profiler()
    p = prof.Profile(period=10.0)  # the sampler thread effectively never samples inside the stage

    class Holder:
        @staticmethod
        def spike():
            return len(b"\x01" * (256 * 2**20))  # allocated, written (touched) and freed before returning

    p.wrap(Holder, "spike", "spike")
    assert Holder.spike() == 256 * 2**20
    p.stop()
    (call,) = p.calls
    assert call["peak"] - call["rss_enter"] >= 200 * 2**20, call
    assert call["rss_exit"] - call["rss_enter"] < 100 * 2**20, call  # it was freed


# ------------------------------------------------------------------ slow: tiny exports with and without
def _signature_outputs(bundle: Path, tmp: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.builder.quantize import section_files, unpack

    out: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for sec, path in sorted(section_files(unpack(bundle, tmp)).items()):
        it = Interpreter(model_path=str(path))
        for sig in sorted(it.get_signature_list()):
            run = it.get_signature_runner(sig)
            rng = np.random.default_rng(0)
            feeds = {}
            for k, det in sorted(run.get_input_details().items()):
                shape, dt = det["shape"], det["dtype"]
                if np.issubdtype(dt, np.integer):
                    feeds[k] = rng.integers(0, 64, shape).astype(dt)
                else:
                    feeds[k] = rng.standard_normal(shape).astype(dt)
            out[(sec, sig)] = {k: np.array(v) for k, v in run(**feeds).items()}
        out[(sec, "#ops")] = {"ops": np.array(_op_names(path))}
    return out


def _op_names(tflite: Path) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(tflite.read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for sg in m.subgraphs:
        for op in sg.operators:
            code = m.operatorCodes[op.opcodeIndex]
            ops.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode)))
    return sorted(ops)


@pytest.mark.slow
def test_lightweight_export_is_bit_identical_to_the_plain_one(tiny_source, tiny_float_bundle, tmp_path):
    ckpt_dir, _ = tiny_source
    rec = json.loads((tiny_float_bundle.parent / "export.json").read_text())
    assert "lightweight_conversion" not in rec["options"]  # the session's export is the default (plain) one
    opts = ex.ExportOptions(**{**rec["options"], "lightweight_conversion": True})
    light = ex.export_checkpoint(ckpt_dir, rec["source"], opts, cache_dir=bundle_cache_root())
    assert light.bundle != tiny_float_bundle and light.record["options"]["lightweight_conversion"] is True
    a = _signature_outputs(light.bundle, tmp_path / "light")
    b = _signature_outputs(tiny_float_bundle, tmp_path / "plain")
    assert sorted(a) == sorted(b)
    assert {s for s, _ in a} == {"tf_lite_embedder", "tf_lite_per_layer_embedder", "tf_lite_prefill_decode"}
    assert len(a) >= 9  # 2 signatures per section + the op lists
    for k in a:
        assert sorted(a[k]) == sorted(b[k]), k
        for name in a[k]:
            assert a[k][name].dtype == b[k][name].dtype and np.array_equal(a[k][name], b[k][name]), (k, name)
    # the one weight lightweight conversion leaves unnamed on the tiny model (the tied
    # lm_head) is still mapped, through the op that writes the logits
    from edgekit.builder.quantize import plan_section, section_files, unpack
    from edgekit.schemes import load_scheme

    secs = section_files(unpack(light.bundle, tmp_path / "plan"))
    plans = plan_section(secs["tf_lite_prefill_decode"], "tf_lite_prefill_decode", load_scheme("wNa8o8", "tiny").bits_for)
    lm = [p for p in plans if p.module == "lm_head"]
    assert len(lm) == 1 and lm[0].weight_name.startswith("arith.constant"), [(p.weight_name, p.module) for p in lm]
