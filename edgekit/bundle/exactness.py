"""Integer exactness of a bundle against the QAT checkpoint it was built from.

``exactness_report(bundle, checkpoint) -> dict`` reads every quantized weight tensor
back from the ``.litertlm`` (its integers unpacked from INT2/INT4/INT8 storage, its
per-channel scales) and compares them with the checkpoint's integers and scales, bit for
bit; it also reads each FULLY_CONNECTED op's input/output activation scale and zero point
and compares them with the checkpoint's SRQ scales. Nothing is taken from the build's
intent: what is not equal in the file is reported as approximated.

A weight element is *exact* when its integer and its scale (float32 bits) equal the
checkpoint's; a tensor is exact when all its elements are. The report is JSON-able:

``{"tensors_exact", "tensors_total", "weights_exact", "weights_total", "weights_exact_pct",
"srq_carried", "srq_total", "not_in_bundle", "approximated": [...], "tensors": [...]}``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import tflite as tfl
from edgekit.bundle.tflite import DEQUANTIZE, EMBEDDING_LOOKUP, FULLY_CONNECTED, GELU, QUANTIZE
from edgekit.bundle.tflite import INT_TYPE_BITS as _INT_TYPES
from edgekit.bundle.tflite import unpack_ints as unpack_tflite_ints
from edgekit.bundle.tensor_names import module_name_for
from edgekit.runtime.litertlm_file import read_header, read_section

_NP = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16}


def read_bundle_weights(bundle) -> list[dict[str, Any]]:
    """Every FULLY_CONNECTED / EMBEDDING_LOOKUP of every TFLite section, with the raw
    integer weights, weight scales, and (FC) input/output activation quantization."""
    header = read_header(bundle)
    out = []
    for sec in header.sections:
        if sec.data_type != "TFLiteModel":
            continue
        data = read_section(bundle, sec)
        mv = memoryview(data)
        model = tfl.load_model(data)
        sigs = tfl.signatures(model)
        for si in range(model.SubgraphsLength()):
            if si not in sigs:
                continue
            sg = model.Subgraphs(si)
            consumers: dict[int, list[int]] = defaultdict(list)  # tensor -> consuming op indices
            producer: dict[int, int] = {}
            for oi in range(sg.OperatorsLength()):
                op = sg.Operators(oi)
                for i in op.InputsAsNumpy():
                    consumers[int(i)].append(oi)
                for o in op.OutputsAsNumpy():
                    producer[int(o)] = oi

            def feeds_gelu(t: int, depth: int = 0) -> bool:
                # through the DEQUANTIZE/QUANTIZE ops a static int8 output goes through
                for ci in consumers.get(t, []):
                    c = sg.Operators(ci)
                    code_c = tfl.opcode(model, c)
                    if code_c == GELU:
                        return True
                    if code_c in (DEQUANTIZE, QUANTIZE) and depth < 3 and feeds_gelu(int(c.OutputsAsNumpy()[0]), depth + 1):
                        return True
                return False
            for oi in range(sg.OperatorsLength()):
                op = sg.Operators(oi)
                code = tfl.opcode(model, op)
                if code not in (FULLY_CONNECTED, EMBEDDING_LOOKUP):
                    continue
                ins = [int(i) for i in op.InputsAsNumpy()]
                outs = [int(i) for i in op.OutputsAsNumpy()]
                wi = ins[1]
                pi = producer.get(wi)
                if pi is not None and tfl.opcode(model, sg.Operators(pi)) == DEQUANTIZE:
                    wi = int(sg.Operators(pi).InputsAsNumpy()[0])  # weight-only: the integer tensor
                w = sg.Tensors(wi)
                wname = tfl.tensor_name(w)
                is_gate = None
                if code == FULLY_CONNECTED and "gate_proj" in wname:
                    is_gate = feeds_gelu(outs[0])
                scope = tfl.tensor_name(sg.Tensors(outs[0]))
                module = module_name_for(wname, scope, is_gate, sec.name)
                entry: dict[str, Any] = {
                    "section": sec.name, "signature": sigs[si], "module": module, "weight": wname,
                    "op": "FULLY_CONNECTED" if code == FULLY_CONNECTED else "EMBEDDING_LOOKUP",
                    "shape": [int(x) for x in w.ShapeAsNumpy()], "type": int(w.Type()), "buffer": int(w.Buffer()),
                }
                s, zp, qd = tfl.scales(w)
                entry["scales"], entry["quantized_dimension"] = s, qd
                entry["raw"] = tfl.buffer_bytes(model, mv, w.Buffer())
                if code == FULLY_CONNECTED:
                    for side, ti in (("input", ins[0]), ("output", outs[0])):
                        t = sg.Tensors(ti)
                        s2, z2, _ = tfl.scales(t)
                        entry[f"{side}_type"] = int(t.Type())
                        entry[f"{side}_scale"] = None if s2 is None or len(s2) != 1 else np.float32(s2[0])
                        entry[f"{side}_zero_point"] = None if z2 is None or len(z2) != 1 else int(z2[0])
                out.append(entry)
    return out


def exactness_report(bundle: str | os.PathLike, checkpoint, *, max_listed: int = 50) -> dict[str, Any]:
    """Compare a bundle's integer weights, weight scales and activation scales with a
    QAT checkpoint (a folder, or a validated :class:`edgekit.models.qat.QatCheckpoint`)."""
    from edgekit.models import qat

    ck = checkpoint if isinstance(checkpoint, qat.QatCheckpoint) else _load(checkpoint)
    entries = read_bundle_weights(Path(bundle))
    by_module: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        if e["module"]:
            by_module[e["module"]].append(e)
    tensors = []
    approximated = []
    w_exact = w_total = t_exact = 0
    for name, m in ck.modules.items():
        es = by_module.get(name)
        if not es:
            continue
        scales = ck.scales(name)
        e = es[0]
        rec: dict[str, Any] = {"module": name, "kind": m.kind, "checkpoint_bits": m.bits, "section": e["section"]}
        n = m.rows * m.width
        w_total += n
        bits = _INT_TYPES.get(e["type"])
        rec["bundle_bits"] = bits
        blockwise = (bits == m.bits and e["raw"] is not None and e["scales"] is not None
                     and list(e["shape"]) == [m.rows, m.width] and not e["quantized_dimension"]
                     and (m.width * bits) % 8 == 0 and e["scales"].size == m.rows
                     and (scales.ndim < 2 or scales.shape[1] == 1))
        if bits is None or e["raw"] is None or e["scales"] is None:
            rec.update(exact=False, integers_equal=0.0, scales_equal=False, reason="weight not integer in the bundle")
        elif bits != m.bits:  # another lattice: no element can be the checkpoint's (skip the big compare)
            rec.update(exact=False, integers_equal=None, scales_equal=False, elements_exact=0, elements=n,
                       reason=f"{bits}-bit in the bundle, {m.bits}-bit in the checkpoint")
        elif blockwise:  # row block by row block: a full-vocabulary table is never whole in memory
            k, int_eq, scale_ok = _compare_rows(ck, name, e["raw"], bits, e["scales"], scales.reshape(-1))
            w_exact += k
            rec.update(exact=bool(k == n), integers_equal=round(int_eq / n, 6) if n else 1.0,
                       scales_equal=bool(scale_ok), elements_exact=k, elements=n)
            if not rec["exact"]:
                rec["reason"] = "integers or scales differ"
        else:
            ints = ck.integers(name)
            shape = e["shape"]
            count = int(np.prod(shape))
            q = unpack_tflite_ints(e["raw"], bits, count).reshape(shape)
            bs = e["scales"]
            qd = e["quantized_dimension"] or 0
            if qd != 0:
                q = np.moveaxis(q, qd, 0)
            if q.shape != ints.shape and q.T.shape == ints.shape:
                q = q.T
            if q.shape != ints.shape:
                rec.update(exact=False, integers_equal=0.0, scales_equal=False,
                           reason=f"shape {list(q.shape)} vs checkpoint {list(ints.shape)}")
            else:
                blocks = scales.shape[1] if scales.ndim == 2 else 1
                if blocks == 1 and bs.size == scales.shape[0]:
                    row_ok = bs.view(np.uint32) == scales.reshape(-1).view(np.uint32)
                    el_scale_ok = np.repeat(row_ok[:, None], ints.shape[1], axis=1)
                else:  # the bundle cannot hold per-block scales: compare element scales
                    ck_el = np.repeat(scales, ints.shape[1] // blocks, axis=1)
                    b_el = np.repeat(bs.reshape(-1, 1), ints.shape[1], axis=1) if bs.size == ints.shape[0] else None
                    el_scale_ok = (b_el.view(np.uint32) == ck_el.view(np.uint32)) if b_el is not None else np.zeros(ints.shape, bool)
                int_ok = q.astype(np.int16) == ints.astype(np.int16)
                el_ok = int_ok & el_scale_ok
                k = int(el_ok.sum())
                w_exact += k
                rec.update(exact=bool(k == n and bits == m.bits), integers_equal=round(float(int_ok.mean()), 6),
                           scales_equal=bool(el_scale_ok.all()), elements_exact=k, elements=n)
                if bits != m.bits:
                    rec["reason"] = f"{bits}-bit in the bundle, {m.bits}-bit in the checkpoint"
                elif not rec["exact"]:
                    rec["reason"] = "integers or scales differ"
        t_exact += bool(rec["exact"])
        tensors.append(rec)
        if not rec["exact"]:
            approximated.append({"what": name, "why": rec.get("reason", "not exact")})
    not_in_bundle = sorted(n for n in ck.modules if n not in by_module)

    # SRQ activation scales
    srq_total = srq_carried = 0
    srq_missing = []
    for name, m in ck.modules.items():
        if m.kind != "linear" or name not in by_module:
            continue
        s_in, s_out = ck.srq_scales(name)
        for side, s in (("input", s_in), ("output", s_out)):
            if s <= 0:
                continue
            srq_total += 1
            ok = all(
                e.get(f"{side}_type") == 9 and e.get(f"{side}_scale") is not None
                and np.float32(e[f"{side}_scale"]).view(np.uint32) == np.float32(s).view(np.uint32)
                and e.get(f"{side}_zero_point") == 0
                for e in by_module[name] if e["op"] == "FULLY_CONNECTED"
            )
            srq_carried += ok
            if not ok:
                got = by_module[name][0].get(f"{side}_scale")
                srq_missing.append({"what": f"{name} {side} activation scale",
                                    "why": f"bundle {float(got) if got is not None else 'float'} vs checkpoint {s}"})
    approximated += srq_missing
    kv_carried, kv_total, kv_missing = _kv_scales(Path(bundle), ck)
    approximated += kv_missing
    return {
        "tensors_exact": t_exact,
        "tensors_total": len(tensors),
        "weights_exact": w_exact,
        "weights_total": w_total,
        "weights_exact_pct": round(100.0 * w_exact / w_total, 4) if w_total else None,
        "srq_carried": srq_carried,
        "srq_total": srq_total,
        "kv_scales_carried": kv_carried,
        "kv_scales_total": kv_total,
        "not_in_bundle": not_in_bundle,
        "approximated": approximated[:max_listed],
        "approximated_count": len(approximated),
        "tensors": tensors,
    }


def _kv_scales(bundle: Path, ck) -> tuple[int, int, list[dict[str, Any]]]:
    """The checkpoint's k/v cache scales read back from the bundle: ``kv_cache_{k,v}_<i>`` of the
    prefill/decode section (the i-th attention layer that owns a cache) int8 with exactly that scale
    and zero point 0 in every signature. (carried, total, the ones not carried)."""
    from edgekit.bundle import tflite as tfl
    from edgekit.runtime.litertlm_file import read_header, read_section

    scales = ck.kv_cache_scales()
    want = {f"kv_cache_{kind}_{i}": s for i, pair in enumerate(scales.values())
            for kind, s in zip("kv", pair) if s is not None}
    if not want:
        return 0, 0, []
    pd = [x for x in read_header(bundle).sections if x.name == "tf_lite_prefill_decode"]
    got: dict[str, set] = defaultdict(set)
    if pd:
        model = tfl.load_model(read_section(bundle, pd[0]))
        for rec in tfl.signature_io(model).values():
            sg = model.Subgraphs(rec["subgraph"])
            for name, ti in {**rec["inputs"], **rec["outputs"]}.items():
                if name in want:
                    t = sg.Tensors(ti)
                    sc, zp, _ = tfl.scales(t)
                    got[name].add((tfl.dtype(t)[0], None if sc is None else np.float32(sc[0]).view(np.uint32).item(),
                                   None if zp is None else int(zp[0])))
    carried, missing = 0, []
    for name, s in want.items():
        ok = got.get(name) == {("INT8", np.float32(s).view(np.uint32).item(), 0)}
        carried += ok
        if not ok:
            seen = sorted({g[0] for g in got.get(name, ())}) or ["absent"]
            missing.append({"what": f"KV cache {name} scale", "why": f"bundle {'/'.join(seen)} vs checkpoint int8 at {s}"})
    return carried, len(want), missing


COMPARE_BLOCK_ELEMENTS = 1 << 24  # weights compared at once (a few bytes each in temporaries)


def _compare_rows(ck, name: str, raw: np.ndarray, bits: int, bundle_scales: np.ndarray,
                  ck_scales: np.ndarray) -> tuple[int, int, bool]:
    """(exact elements, equal integers, all row scales equal) of a (rows, width) weight stored
    row-major with one scale per row, compared a block of rows at a time."""
    m = ck.modules[name]
    row_ok = np.asarray(bundle_scales, np.float32).reshape(-1).view(np.uint32) == \
        np.asarray(ck_scales, np.float32).reshape(-1).view(np.uint32)
    row_bytes = m.width * bits // 8
    step = max(1, COMPARE_BLOCK_ELEMENTS // max(1, m.width))
    exact = equal = 0
    for s in range(0, m.rows, step):
        e = min(m.rows, s + step)
        q = unpack_tflite_ints(raw[s * row_bytes:e * row_bytes], bits, (e - s) * m.width).reshape(e - s, m.width)
        eq_rows = (q == ck.integer_rows(name, s, e)).sum(axis=1)
        equal += int(eq_rows.sum())
        exact += int(eq_rows[row_ok[s:e]].sum())
    return exact, equal, bool(row_ok.all())


def _load(path):
    import json

    from edgekit.models import qat
    from edgekit.models.presets import get_preset, preset_for_config, width_div_for_config

    cfg = json.loads((Path(path) / "config.json").read_text())
    p = preset_for_config(cfg)
    if p is None:
        from edgekit.errors import CheckpointError

        raise CheckpointError(f"{path}: no preset matches this checkpoint's architecture")
    wd = width_div_for_config(p, cfg) or 1
    return qat.validate_qat_checkpoint(path, get_preset(p).config(wd), preset_name=p.name)


def filter_expected(violations: list[str], float_activation_modules) -> list[str]:
    """Drop scheme-check findings a QAT checkpoint itself asks for.

    A linear whose two SRQ scales are 0 (the published lm_head) keeps float activations:
    its integer weights are dequantized in the graph (weight-only), so the generic check
    sees a float weight and non-static activations. Its integers are checked by
    :func:`exactness_report` instead.
    """
    names = list(float_activation_modules or ())
    if not names:
        return list(violations)
    out = []
    for v in violations:
        padded = f" {v} "
        if any(v.startswith(n + " ") or f" {n} " in padded for n in names):
            continue
        out.append(v)
    return out


def format_qat(rec: dict[str, Any]) -> str:
    """Text lines for ``edgekit inspect``: what a QAT build kept exactly and what it did not."""
    lines = [f"QAT checkpoint: {rec.get('checkpoint')} ({rec.get('mode', '?')} path)"]
    ex = rec.get("exactness") or {}
    if ex:
        lines.append(
            f"  integer-exact weight tensors: {ex.get('tensors_exact')}/{ex.get('tensors_total')}"
            f" ({ex.get('weights_exact_pct')}% of weights); SRQ activation scales carried: "
            f"{ex.get('srq_carried')}/{ex.get('srq_total')}"
            + (f"; KV-cache scales carried: {ex.get('kv_scales_carried')}/{ex.get('kv_scales_total')}"
               if ex.get("kv_scales_total") else "")
        )
    ag = rec.get("agreement")
    if ag and ag.get("skipped"):
        lines.append(f"  vs transformers reference: skipped ({ag['skipped']})")
    elif ag:
        lines.append(
            f"  vs transformers reference: top-1 {ag['top1_agreement']:.4f}, mean KL {ag['kl_mean']:.3g},"
            f" max |logit diff| {ag['max_abs_logit_diff']:.3g} ({ag['tokens']} tokens)"
        )
    approx = list(rec.get("approximations") or [])
    approx += [a for a in (ex.get("approximated") or []) if a.get("what") not in {b.get("what") for b in approx}]
    for a in approx[:12]:
        lines.append(f"  approximated: {a['what']}: {a['why']}")
    if len(approx) > 12:
        lines.append(f"  ... {len(approx) - 12} more approximations (see manifest.json)")
    return "\n".join(lines)
