"""The streamed build route on tiny: stand-in plan and export, weight filling, vocabulary restore, CLI.

Each section produced by the route (edgekit/build/standin.py, fill.py, streamed.py) is
compared with what the classic route makes of the same weights:

- the stand-in filled at float32 gives the classic float export's logits;
- fp16: streamed (quantize the stand-in, then fill) == the fp16 recipe applied to the
  filled float graph, op for op and byte for byte;
- wNa8o8: streamed with module ranges == ai-edge-quantizer on the filled float graph with
  the same ranges as its qsv: every FC's weight bytes, weight and activation scales.

The stand-in exports go through the pipeline's own call (``streamed.export_standin``) into
the shared export cache (``$EDGEKIT_CACHE``, tests/fixtures_bundles.py), so the end-to-end
``edgekit build --route streamed`` runs below reuse them, as a rerun of the file does.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fixtures_bundles import bundle_cache_root

SEC_PD = "tf_lite_prefill_decode"
PREFILL, CACHE_LEN = 32, 256  # the pipeline's defaults: the exports are the ones `edgekit build tiny` uses
FULLY_CONNECTED, EMBEDDING_LOOKUP = 9, 7


# ------------------------------------------------------------------ shared material (once per session)
@functools.lru_cache(maxsize=None)
def _workdir() -> Path:
    import atexit
    import os

    d = Path(tempfile.mkdtemp(prefix="edgekit-streamed-tests-"))
    if not os.environ.get("EDGEKIT_KEEP_TEST_FILES"):
        atexit.register(shutil.rmtree, d, True)
    return d


@functools.lru_cache(maxsize=None)
def _source():
    """(checkpoint folder, source identity, vocabulary) exactly as the pipeline computes them for tiny."""
    from edgekit.build.pipeline import make_random_source, plan_source
    from edgekit.models.presets import get_preset

    preset = get_preset("tiny")
    d, info = plan_source(preset, None, False, 0, 1, bundle_cache_root())
    if info is None:
        info = make_random_source(preset, d, 0, 1)
    ident = {"preset": preset.name, "width_div": 1, "weights_sha256": info.weights_sha256}
    return Path(d), ident, int(preset.vocab_size)


def _scheme(name: str):
    from edgekit.models.presets import get_preset
    from edgekit.schemes import load_scheme

    return load_scheme(name, get_preset("tiny"))


def _opts():
    from edgekit.build import export as ex

    return ex.ExportOptions(text_only=True, prefill_length=PREFILL, cache_length=CACHE_LEN)


@functools.lru_cache(maxsize=None)
def _standin(scheme: str):
    """(stand-in bundle, its unpacked model.toml, section -> .tflite) for a scheme's tie plan."""
    from edgekit.build import quantize as qz
    from edgekit.build import streamed as sm

    ckpt, ident, _ = _source()
    res = sm.export_standin(ckpt, ident, _opts(), _scheme(scheme), bundle_cache_root())
    toml = qz.unpack(res.bundle, _workdir() / f"standin-{scheme}")
    return res, toml, qz.section_files(toml)


@functools.lru_cache(maxsize=None)
def _filled_float(scheme: str):
    """The ``scheme`` plan's stand-in filled at float32 (no quantization): (bundle, section -> .tflite)."""
    from edgekit.build import fill as fl
    from edgekit.build import quantize as qz
    from edgekit.build.standin import STANDIN_VOCAB

    ckpt, _, vocab = _source()
    _, toml, secs = _standin(scheme)
    out = _workdir() / f"filled-float-{scheme}"
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
    from edgekit.build import streamed as sm

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
    from edgekit.build import streamed as sm

    return sm.text_linears(_source()[0])


def test_plan_groups_decoder_linears_by_role_shape_and_bits():
    from edgekit.build import standin

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
    from edgekit.build import standin

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
    from edgekit.build import standin

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


def test_use_streamed_picks_full_width_e2b_e4b_only():
    from edgekit.build import streamed as sm
    from edgekit.errors import UsageError

    assert sm.use_streamed("auto", "e2b", 1) and sm.use_streamed("auto", "e4b", 1)
    assert not sm.use_streamed("auto", "e2b", 4) and not sm.use_streamed("auto", "tiny", 1)
    assert sm.use_streamed("streamed", "tiny", 1) and not sm.use_streamed("classic", "e2b", 1)
    with pytest.raises(UsageError):
        sm.use_streamed("nonsense", "tiny", 1)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_streamed_route_without_text_only_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(bundle_cache_root()))
    code = _cli("build", "tiny", "--route", "streamed", "--output", str(tmp_path / "dist"), "--no-quality")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "text-only" in _one_error_line(err)
    assert not (tmp_path / "dist" / "tiny-wNa8o8").exists()


@pytest.mark.slow
def test_streamed_route_with_a_qat_checkpoint_exits_2(tmp_path, capsys, monkeypatch):
    import qat_helpers as H

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    code = _cli("build", "tiny", "--checkpoint", str(H.random_checkpoint("tiny")), "--text-only",
                "--route", "streamed", "--output", str(tmp_path / "dist"), "--no-quality")
    err = capsys.readouterr().err
    assert code == 2, err
    line = _one_error_line(err)
    assert "QAT" in line and "streamed" in line
    assert not (tmp_path / "cache" / "exports").exists() or not any((tmp_path / "cache" / "exports").iterdir())
