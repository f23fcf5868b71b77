"""The fill's streamed writer (edgekit/builder/fill.py ``_write_streamed``) on tiny.

A section whose buffers reach ``stream_limit`` is written one row block of one weight at a
time straight into the file. With the limit at 0 every tiny section takes that path, and:

- its file is byte for byte what ai-edge-quantizer's external-buffer writer
  (``write_model`` past INLINE_LIMIT) makes of the same filled section;
- its tensors (type, shape, scales, zero points, buffer bytes) read back equal to the
  in-memory writer's, at float16 and at 2/4/8-bit channel-wise weights;
- a weight read by several signature subgraphs is still one buffer; every external
  buffer sits at a 16-byte aligned offset past the flatbuffer;
- the interpreter gives the same logits from a bundle of streamed sections as from the
  in-memory writer's;
- a producer that fails midway leaves neither the file nor a temporary one.

It reuses the stand-in export that tests/toolchain/test_streamed.py and the pipeline make
for tiny (shared export cache, ``$EDGEKIT_CACHE``); warm, well under a minute.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest

from fixtures_bundles import bundle_cache_root, session_tempdir, tiny_source_identity

SEC_PD = "tf_lite_prefill_decode"
PREFILL, CACHE_LEN = 32, 256  # the pipeline's tiny defaults: the stand-in export the other tests cache


def _workdir() -> Path:
    return session_tempdir("edgekit-fill-stream-")


@functools.lru_cache(maxsize=None)
def _standin():
    """(checkpoint folder, vocabulary, stand-in model.toml, section -> .tflite) as the pipeline makes them."""
    from edgekit.builder import export as ex
    from edgekit.builder import quantize as qz
    from edgekit.builder import streamed as sm
    from edgekit.models.presets import get_preset
    from edgekit.schemes import load_scheme

    preset = get_preset("tiny")
    d, ident, vocab = tiny_source_identity()
    bits = load_scheme(preset.default_scheme, preset).bits_for  # the plan fp16 builds reuse too
    opts = ex.ExportOptions(text_only=True, prefill_length=PREFILL, cache_length=CACHE_LEN)
    res = sm.export_standin(Path(d), ident, opts, bits, bundle_cache_root())
    toml = qz.unpack(res.bundle, _workdir() / "standin")
    return d, vocab, toml, qz.section_files(toml)


def _scheme(name: str):
    from edgekit.models.presets import get_preset
    from edgekit.schemes import load_scheme

    if name == "fp16":
        return load_scheme("fp16", get_preset("tiny"))
    # the default N-bit weight map (2-, 4- and 8-bit channel-wise) with float activations:
    # integer weights and scales without a calibration
    return dataclasses.replace(load_scheme("wNa8o8", get_preset("tiny")), activations="float", outputs="float")


@functools.lru_cache(maxsize=None)
def _quantized(scheme: str) -> dict[str, Path]:
    from edgekit.builder import streamed as sm

    _, _, _, secs = _standin()
    out = _workdir() / f"q-{scheme}"
    out.mkdir(parents=True, exist_ok=True)
    qsecs, _ = sm.quantize_sections(secs, _scheme(scheme), out, None)
    return qsecs


@functools.lru_cache(maxsize=None)
def _filled(scheme: str, how: str) -> dict[str, Path]:
    """Every section filled: ``streamed`` (limit 0), ``memory`` (the in-memory writer) or
    ``external`` (the in-memory writer forced onto ai-edge-quantizer's external-buffer path)."""
    from unittest import mock

    from edgekit.builder import fill as fl
    from edgekit.builder.standin import STANDIN_VOCAB

    ckpt, vocab, _, _ = _standin()
    w = fl.CheckpointWeights(ckpt)
    out = _workdir() / f"filled-{scheme}-{how}"
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for sec, p in _quantized(scheme).items():
        res[sec] = out / f"{sec}.tflite"
        if how == "streamed":
            fl.fill_section(p, res[sec], sec, w, STANDIN_VOCAB, vocab, stream_limit=0)
        elif how == "external":
            with mock.patch.object(fl, "INLINE_LIMIT", 0):
                fl.fill_section(p, res[sec], sec, w, STANDIN_VOCAB, vocab, stream_limit=1 << 62)
        else:
            fl.fill_section(p, res[sec], sec, w, STANDIN_VOCAB, vocab, stream_limit=1 << 62)
    return res


def _read(path):
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    return fu.read_model(str(path))


def _tensors(path) -> list[tuple]:
    """(subgraph, name, type, shape, scales, zero points, buffer bytes) of every tensor."""
    m = _read(path)
    out = []
    for si, sg in enumerate(m.subgraphs):
        for t in sg.tensors:
            q = t.quantization
            d = m.buffers[t.buffer].data
            out.append((si, t.name, int(t.type), [int(x) for x in t.shape],
                        None if q is None or q.scale is None else np.asarray(q.scale, np.float32).tobytes(),
                        None if q is None or q.zeroPoint is None else np.asarray(q.zeroPoint, np.int64).tobytes(),
                        None if d is None else bytes(np.asarray(d, dtype=np.uint8))))
    return out


def _external_buffers(path) -> list[tuple[int, int]]:
    """(offset, size) of every buffer stored past the flatbuffer, read from the packed file."""
    from ai_edge_litert import schema_py_generated as schema

    raw = Path(path).read_bytes()
    m = schema.Model.GetRootAs(raw, 0)
    return [(int(m.Buffers(i).Offset()), int(m.Buffers(i).Size())) for i in range(m.BuffersLength())
            if m.Buffers(i).Offset() > 1]


@pytest.mark.parametrize("scheme", ["fp16", "wN-dynamic"])
def test_streamed_sections_equal_the_in_memory_writers(scheme):
    from edgekit.builder import fill as fl

    streamed, memory, external = (_filled(scheme, h) for h in ("streamed", "memory", "external"))
    types = set()
    for sec in streamed:
        a, b = _tensors(streamed[sec]), _tensors(memory[sec])
        assert len(a) == len(b), sec
        diffs = [f"{sec} subgraph {x[0]} {x[1][-60:]!r}" for x, y in zip(a, b) if x != y]
        assert diffs == []
        # the same bytes as ai-edge-quantizer's external-buffer writer on the same section
        assert streamed[sec].read_bytes() == external[sec].read_bytes(), sec
        ext = _external_buffers(streamed[sec])
        assert ext and all(off % 16 == 0 for off, _ in ext), sec
        assert min(off for off, _ in ext) >= 8  # past the flatbuffer's root
        assert max(n for _, n in ext) == max(len(x[6]) for x in a if x[6] is not None), sec  # the largest is external
        m = _read(streamed[sec])
        for fo in fl.map_ops(m, sec):
            types.add(int(m.subgraphs[fo.subgraph].tensors[fo.weight].type))
    # the filled weights really are of the scheme's kinds (else both writers could agree trivially)
    # (the N-bit map keeps a few modules float32)
    if scheme == "fp16":
        assert types == {fl.FLOAT16}, types
    else:
        assert {fl.INT2, fl.INT4, fl.INT8} <= types, types


def test_a_weight_shared_by_signatures_stays_one_buffer():
    from edgekit.builder import fill as fl

    path = _filled("wN-dynamic", "streamed")[SEC_PD]
    m = _read(path)
    bufs: dict[tuple[str, int], set[int]] = {}
    subgraphs: dict[tuple[str, int], set[int]] = {}
    for fo in fl.map_ops(m, SEC_PD):
        t = m.subgraphs[fo.subgraph].tensors[fo.weight]
        bufs.setdefault((fo.module, int(t.type)), set()).add(int(t.buffer))
        subgraphs.setdefault((fo.module, int(t.type)), set()).add(fo.subgraph)
    assert max(len(s) for s in subgraphs.values()) > 1  # prefill and decode read the same modules
    assert {k: v for k, v in bufs.items() if len(v) != 1} == {}
    # one external region per module and type, not one per reading op
    assert len({b for v in bufs.values() for b in v}) == len(bufs)


def test_streamed_bundle_gives_the_in_memory_writers_logits():
    from edgekit.builder import quantize as qz
    from edgekit.runtime.signatures import BundleModel

    _, _, toml, _ = _standin()
    bundles = {}
    for how in ("streamed", "memory"):
        bundles[how] = _workdir() / f"{how}.litertlm"
        qz.repack(toml, bundles[how], _filled("wN-dynamic", how))
    ids = list(range(5, 45))  # longer than one prefill window: prefill then decode signatures
    a, b = BundleModel(bundles["streamed"]), BundleModel(bundles["memory"])
    la, lb = a.prefill(ids), b.prefill(ids)
    assert np.isfinite(la).all() and float(np.abs(la).max()) > 0
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(a.decode(int(np.argmax(la))), b.decode(int(np.argmax(lb))))


def test_a_failing_weight_leaves_no_file(tmp_path):
    from edgekit.builder import fill as fl
    from edgekit.builder.standin import STANDIN_VOCAB

    ckpt, vocab, _, _ = _standin()

    class Failing(fl.CheckpointWeights):
        calls = 0

        def blocks(self, module):
            Failing.calls += 1
            if Failing.calls > 3:
                raise OSError("read failed")
            yield from super().blocks(module)

    dst = tmp_path / f"{SEC_PD}.tflite"
    with pytest.raises(OSError, match="read failed"):
        fl.fill_section(_quantized("fp16")[SEC_PD], dst, SEC_PD, Failing(ckpt), STANDIN_VOCAB, vocab,
                        stream_limit=0)
    assert list(tmp_path.iterdir()) == []
