"""Read a ``.litertlm`` back: sections, per-tensor dtypes, weight bits, activation types.

Everything reported is read from the file: the section table from the LiteRT-LM
header, and for each TFLite section the flatbuffer's tensors (type, shape,
quantization parameters) and operators. Nothing is taken from the build's intent.

``inspect_bundle(path) -> dict`` (JSON-able report) and
``check(report, scheme, preset=None, manifest=None) -> list[str]`` (violations).

What counts as what:
- a weight's bits come from its tensor type (INT2/INT4/INT8, FLOAT16, FLOAT32);
  "per-channel" means one scale per output channel (``quantized_dimension`` 0);
- a FULLY_CONNECTED op has *static* int8 activations when its input tensor is
  INT8 with exactly one scale and one zero point stored in the file; a float
  input with integer weights is dynamic-range quantization.
"""

from __future__ import annotations

import mmap
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from edgekit.bundle import tflite as tfl
from edgekit.bundle.tflite import DEQUANTIZE, EMBEDDING_LOOKUP, FULLY_CONNECTED, GELU, QUANTIZE
from edgekit.bundle.tensor_names import ENCODER_SECTIONS, layer_of, module_name_for, shared_linear_paths, short_name
from edgekit.results.manifest import Manifest
from edgekit.runtime.litertlm_file import NotALiteRTLMFile, read_header

REPORT_SCHEMA = 1

INTEGER_WEIGHT_TYPES = {"INT2": 2, "INT4": 4, "INT8": 8}
ENCODER_MARKERS = {"vision": ("vision",), "audio": ("audio",)}


def _quant(t) -> dict[str, Any]:
    q = t.Quantization()
    if q is None:
        return {"scales": 0, "zero_points": 0}
    n = q.ScaleLength()
    out: dict[str, Any] = {"scales": n, "zero_points": q.ZeroPointLength(), "quantized_dimension": q.QuantizedDimension()}
    if n == 1:
        out["scale"] = float(q.Scale(0))
        out["zero_point"] = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
    return out


def _scope(sg, op) -> str:
    names = [tfl.tensor_name(sg.Tensors(int(i))) for i in op.OutputsAsNumpy() if i >= 0]
    return ";".join(names) + ";" if names else ""


def _feeds(consumers, tensor: int, target: int, depth: int = 3) -> bool:
    """Does ``tensor`` reach an op of code ``target``, looking through (de)quantize ops?"""
    for code, outs in consumers.get(tensor, []):
        if code == target:
            return True
        if code in (DEQUANTIZE, QUANTIZE) and depth > 0 and any(_feeds(consumers, o, target, depth - 1) for o in outs):
            return True
    return False


def inspect_tflite(buf, section: str) -> dict[str, Any]:
    """Report on one TFLite flatbuffer (bytes-like)."""
    model = tfl.load_model(buf)
    sig_of = tfl.signatures(model)
    dtype_summary: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "elements": 0, "bytes": 0})
    ops_count: Counter = Counter()
    weights: list[dict[str, Any]] = []
    seen_const: set[int] = set()
    for si in range(model.SubgraphsLength()):
        sg = model.Subgraphs(si)
        sig = sig_of.get(si)
        # constant tensors (weights) by dtype; buffers are shared across subgraphs
        for ti in range(sg.TensorsLength()):
            t = sg.Tensors(ti)
            if not tfl.is_constant(model, t) or t.Buffer() in seen_const:
                continue
            seen_const.add(t.Buffer())
            name, bits = tfl.dtype(t)
            n = tfl.numel(t)
            d = dtype_summary[name]
            d["tensors"] += 1
            d["elements"] += n
            d["bytes"] += (n * bits + 7) // 8 if bits else 0
        if sig is None:
            continue  # decomposition subgraphs of composites
        consumers: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
        dequantized_from: dict[int, int] = {}  # output of a DEQUANTIZE op -> its (constant) input
        for oi in range(sg.OperatorsLength()):
            op = sg.Operators(oi)
            code = tfl.opcode(model, op)
            outs_ = [int(o) for o in op.OutputsAsNumpy()] if op.OutputsLength() else []
            for i in op.InputsAsNumpy():
                consumers[int(i)].append((code, outs_))
            if code == DEQUANTIZE and op.InputsLength() and op.OutputsLength():
                dequantized_from[int(op.Outputs(0))] = int(op.Inputs(0))
        shared: frozenset[str] = frozenset()
        if section in ENCODER_SECTIONS:  # vision/audio: which module paths several weights name
            shared = shared_linear_paths(
                tfl.tensor_name(sg.Tensors(dequantized_from.get(int(op.Inputs(1)), int(op.Inputs(1)))))
                for op in (sg.Operators(i) for i in range(sg.OperatorsLength()))
                if tfl.opcode(model, op) == FULLY_CONNECTED
            )
        for oi in range(sg.OperatorsLength()):
            op = sg.Operators(oi)
            code = tfl.opcode(model, op)
            ops_count[code] += 1
            if code not in (FULLY_CONNECTED, EMBEDDING_LOOKUP):
                continue
            ins = [int(i) for i in op.InputsAsNumpy()]
            outs = [int(i) for i in op.OutputsAsNumpy()]
            if code == FULLY_CONNECTED:
                data_t, w_idx = sg.Tensors(ins[0]), ins[1]
                kind = "fc"
            else:
                data_t, w_idx = sg.Tensors(ins[0]), ins[1]
                kind = "embedding"
            # weight-only (e.g. float16) storage: constant -> DEQUANTIZE -> op
            via_dequantize = w_idx in dequantized_from
            w_t = sg.Tensors(dequantized_from.get(w_idx, w_idx))
            out_t = sg.Tensors(outs[0])
            wname = tfl.tensor_name(w_t)
            is_gate = None
            if kind == "fc" and "gate_proj" in wname:
                is_gate = _feeds(consumers, outs[0], GELU)
            module = module_name_for(wname, _scope(sg, op), is_gate, section, shared) or wname
            wdt, wbits = tfl.dtype(w_t)
            wq = _quant(w_t)
            entry: dict[str, Any] = {
                "section": section,
                "signature": sig,
                "op": "FULLY_CONNECTED" if kind == "fc" else "EMBEDDING_LOOKUP",
                "module": module,
                "layer": None if section in ENCODER_SECTIONS else layer_of(module),
                "weight_dtype": wdt,
                "bits": wbits,
                "shape": tfl.shape(w_t),
                "weight_scales": wq["scales"],
                "weight_dequantized_in_graph": via_dequantize,
                "quantized_dimension": wq.get("quantized_dimension"),
                "output_dtype": tfl.dtype(out_t)[0],
            }
            if kind == "fc":
                idt, _ = tfl.dtype(data_t)
                iq = _quant(data_t)
                entry["input_dtype"] = idt
                entry["input_scales"] = iq["scales"]
                if iq["scales"] == 1:
                    entry["input_scale"] = iq["scale"]
                    entry["input_zero_point"] = iq["zero_point"]
                oq = _quant(out_t)
                entry["output_scales"] = oq["scales"]
                if idt == "INT8" and iq["scales"] == 1 and iq["zero_points"] <= 1:
                    entry["activations"] = "static_int8"
                elif idt in ("FLOAT32", "FLOAT16") and wdt in INTEGER_WEIGHT_TYPES:
                    entry["activations"] = "dynamic"
                elif idt in ("FLOAT32", "FLOAT16"):
                    entry["activations"] = "float"
                else:
                    entry["activations"] = f"{idt.lower()}({iq['scales']} scales)"
            weights.append(entry)
    op_names = tfl.op_names()
    return {
        "signatures": [sig_of[k] for k in sorted(sig_of)],
        "kv_cache": kv_cache_summary(model),
        "dtype_summary": {k: dict(v) for k, v in sorted(dtype_summary.items())},
        "ops": {op_names.get(k, str(k)): v for k, v in sorted(ops_count.items())},
        "weights": weights,
    }


def kv_cache_summary(model) -> dict[str, Any]:
    """The KV-cache inputs of a prefill/decode graph: their dtype(s), how many caches, the
    elements and bytes of one set of caches (what the engine allocates), and for int8 caches
    each one's scale (one per cache, the same in every signature when aligned). Empty for
    graphs without KV-cache inputs."""
    io = tfl.signature_io(model)
    caches: dict[str, dict[str, Any]] = {}
    scales_differ = []
    for sig, rec in sorted(io.items()):
        sg = model.Subgraphs(rec["subgraph"])
        for name, ti in rec["inputs"].items():
            if not name.startswith(tfl.KV_PREFIX):
                continue
            t = sg.Tensors(ti)
            dt, bits = tfl.dtype(t)
            sc, _, _ = tfl.scales(t)
            scale = float(sc[0]) if sc is not None and len(sc) else None
            prev = caches.setdefault(name, {"dtype": dt, "elements": tfl.numel(t), "bits": bits, "scale": scale})
            if prev["scale"] != scale or prev["dtype"] != dt:
                scales_differ.append(f"{name} in {sig}")
    if not caches:
        return {}
    dtypes = sorted({c["dtype"] for c in caches.values()})
    return {
        "dtypes": dtypes,
        "caches": len(caches),
        "elements": sum(c["elements"] for c in caches.values()),
        "bytes": sum((c["elements"] * (c["bits"] or 32) + 7) // 8 for c in caches.values()),
        "scales": {k: c["scale"] for k, c in sorted(caches.items()) if c["scale"] is not None},
        "inconsistent": scales_differ,
    }


def inspect_bundle(path: str | os.PathLike, *, with_sha256: bool = True) -> dict[str, Any]:
    """Read a ``.litertlm`` and return a JSON-able report (see module doc)."""
    from edgekit.errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"bundle {path} does not exist", hint="pass the path of a .litertlm file")
    try:
        header = read_header(path)
    except NotALiteRTLMFile as exc:
        from edgekit.errors import InspectionFailed

        raise InspectionFailed(str(exc), hint="pass a .litertlm bundle built by edgekit or LiteRT-LM") from exc
    sections = [
        {"index": s.index, "type": s.data_type, "name": s.name, "bytes": s.size}
        for s in header.sections
    ]
    tflite: dict[str, Any] = {}
    weights: list[dict[str, Any]] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for s in header.sections:
            if s.data_type != "TFLiteModel":
                continue
            view = memoryview(mm)[s.begin : s.end]
            try:
                rep = inspect_tflite(view, s.name)
            finally:
                view.release()
            weights.extend(rep.pop("weights"))
            tflite[s.name] = rep
    names = [s["name"].lower() for s in sections]
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "path": str(path),
        "bytes": path.stat().st_size,
        "litertlm_version": ".".join(map(str, header.version)),
        "system_metadata": {k: v for k, v in header.system_metadata.items() if k.startswith("edgekit.")},
        "sections": sections,
        "has_vision": any("vision" in n for n in names),
        "has_audio": any("audio" in n for n in names),
        "has_per_layer_embedder": "tf_lite_per_layer_embedder" in names,
        "tflite": tflite,
        "weights": weights,
        "dtype_summary": dtype_summary(tflite),
        "layers": layer_summary(weights),
    }
    report["encoder_weights"] = encoder_summary(report)  # vision/audio FC bits by module group
    if with_sha256:
        from edgekit.fsutil import sha256_file

        report["sha256"] = sha256_file(path)
    return report


def dtype_summary(tflite: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    return {name: rep["dtype_summary"] for name, rep in tflite.items()}


def layer_summary(weights: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per decoder layer: bits of attention / MLP / other weights and activation kinds (decode signature)."""
    out: dict[str, dict[str, Any]] = {}
    for w in weights:
        if w["layer"] is None or w.get("signature") != "decode":
            continue
        short = short_name(w["module"])
        group = "attention" if short.startswith("self_attn.") else "mlp" if short.startswith("mlp.") else "other"
        d = out.setdefault(str(w["layer"]), {"attention": [], "mlp": [], "other": [], "activations": []})
        if w["bits"] not in d[group]:
            d[group].append(w["bits"])
        act = w.get("activations")
        if act and act not in d["activations"]:
            d["activations"].append(act)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


# --------------------------------------------------------------------- check
def _expected(scheme, module: str):
    """(kind, bits): kind in {"int", "fp16", "float"}."""
    b = scheme.bits_for(module)
    if b is None:
        if getattr(scheme, "float_dtype", "float32") == "float16":
            return "fp16", 16
        return "float", None
    if isinstance(b, str):
        b = b.lower()
        if b in ("fp16", "float16", "f16"):
            return "fp16", 16
        if b in ("float", "fp32", "keep", "none"):
            return "float", None
        try:
            b = int(b)
        except ValueError:
            return "float", None
    if b == 16:
        return "fp16", 16
    if b >= 32:
        return "float", None
    return "int", int(b)


def _describe(w: dict[str, Any]) -> str:
    if w["layer"] is not None:
        return f"layer {w['layer']} {short_name(w['module'])}"
    return w["module"]


def _bits_str(w: dict[str, Any]) -> str:
    dt = w["weight_dtype"]
    if dt in INTEGER_WEIGHT_TYPES:
        return f"{INTEGER_WEIGHT_TYPES[dt]}-bit"
    return dt.lower()


def check(report: dict[str, Any], scheme, preset=None, manifest: Manifest | dict[str, Any] | None = None) -> list[str]:
    """Violations of ``scheme`` / ``preset`` / ``manifest`` found in ``report`` (empty = clean)."""
    manifest = Manifest.of(manifest)
    v: list[str] = []
    static = bool(getattr(scheme, "static_activations", None))
    if getattr(scheme, "static_activations", None) is None:
        # a scheme with integer FC weights is wNa8o8-like: static int8 activations expected
        static = any(
            _expected(scheme, w["module"])[0] == "int" for w in report["weights"] if w["op"] == "FULLY_CONNECTED"
        )
    int8_out = getattr(scheme, "outputs", None) == "int8"
    seen: set[tuple[str, str]] = set()
    for w in report["weights"]:
        kind, bits = _expected(scheme, w["module"])
        key = (w["module"], w["signature"] or "")
        dt = w["weight_dtype"]
        msg = None
        if kind == "int":
            if dt not in INTEGER_WEIGHT_TYPES or INTEGER_WEIGHT_TYPES[dt] != bits:
                msg = f"{_describe(w)} is {_bits_str(w)}, scheme says {bits}-bit"
            elif w["weight_scales"] < 2 and (w["shape"] or [0])[0] > 1:
                msg = f"{_describe(w)} has {w['weight_scales']} weight scale(s), expected one per output channel"
        elif kind == "fp16":
            if dt != "FLOAT16":
                msg = f"{_describe(w)} is {_bits_str(w)}, scheme says float16"
        else:
            if dt not in ("FLOAT32", "FLOAT16"):
                msg = f"{_describe(w)} is {_bits_str(w)}, scheme keeps it float"
        if msg and (msg, "") not in seen:
            seen.add((msg, ""))
            v.append(msg)
        # vision/audio sections are weight-only (edgekit/builder/encoders.py: no image/audio calibration set)
        if static and w["op"] == "FULLY_CONNECTED" and kind == "int" and w["section"] not in ENCODER_SECTIONS:
            if w.get("activations") != "static_int8":
                m2 = f"activations of {_describe(w)} ({w['signature']}) are {w.get('activations')}, not static int8"
                if (m2, "") not in seen:
                    seen.add((m2, ""))
                    v.append(m2)
            elif int8_out and w.get("output_dtype") != "INT8":
                m3 = f"output of {_describe(w)} ({w['signature']}) is {w.get('output_dtype')}, scheme says int8"
                if (m3, "") not in seen:
                    seen.add((m3, ""))
                    v.append(m3)
        del key
    kv = (report["tflite"].get("tf_lite_prefill_decode") or {}).get("kv_cache") or {}
    want_kv = getattr(scheme, "kv_cache", None)
    if kv and want_kv is not None:
        if want_kv == "int8" and kv["dtypes"] != ["INT8"]:
            v.append(f"KV cache is {'/'.join(kv['dtypes'])}, scheme says int8")
        elif want_kv == "float" and not set(kv["dtypes"]) <= {"FLOAT32", "FLOAT16"}:
            v.append(f"KV cache is {'/'.join(kv['dtypes'])}, scheme keeps it float")
        if kv.get("inconsistent"):
            v.append(f"KV cache dtype or scale differs between signatures: {kv['inconsistent'][0]}"
                     + (f" (+{len(kv['inconsistent']) - 1} more)" if len(kv["inconsistent"]) > 1 else ""))
    if not report.get("has_per_layer_embedder"):
        v.append("no separate per-layer embedding section (tf_lite_per_layer_embedder)")
    if "tf_lite_prefill_decode" not in report["tflite"]:
        v.append("no tf_lite_prefill_decode section")
    text_only = manifest.text_only if manifest is not None else None
    if text_only:
        if report["has_vision"]:
            v.append("vision section present in a text-only bundle")
        if report["has_audio"]:
            v.append("audio section present in a text-only bundle")
    elif text_only is False:
        if not report["has_vision"]:
            v.append("vision section missing from a bundle built with encoders")
        if not report["has_audio"]:
            v.append("audio section missing from a bundle built with encoders")
    if preset is not None:
        v.extend(_check_preset(report, preset, manifest))
    if manifest is not None:
        v.extend(_check_manifest(report, manifest))
        if manifest.qat is not None:  # QAT build: float-activation linears the checkpoint asks for
            from edgekit.bundle.exactness import filter_expected

            v = filter_expected(v, manifest.qat.get("float_activation_modules"))
    return v


def _check_preset(report: dict[str, Any], preset, manifest) -> list[str]:
    v = []
    layers = {int(k) for k in report["layers"]}
    n = int(getattr(preset, "num_layers"))
    if layers and layers != set(range(n)):
        v.append(f"decode signature has layers {sorted(layers)[:3]}..{max(layers)}, preset {preset.name} has {n}")
    want_vocab = int(getattr(preset, "vocab_size"))
    for w in report["weights"]:
        if w["module"] == "lm_head" and w["shape"] and w["shape"][0] != want_vocab:
            v.append(f"lm_head has {w['shape'][0]} rows, preset {preset.name} has vocab {want_vocab}")
    return v


def _check_manifest(report: dict[str, Any], manifest: Manifest) -> list[str]:
    v = []
    if manifest.bundle_sha256 and report.get("sha256") and manifest.bundle_sha256 != report["sha256"]:
        v.append("bundle sha256 differs from the manifest (file changed after the build)")
    if manifest.bundle_bytes is not None and manifest.bundle_bytes != report["bytes"]:
        v.append(f"bundle is {report['bytes']} bytes, manifest says {manifest.bundle_bytes}")
    msecs = dict(manifest.sections)
    rsecs = {s["name"]: s["bytes"] for s in report["sections"]}
    if msecs and msecs != rsecs:
        v.append(f"sections differ from the manifest: manifest {sorted(msecs)} vs file {sorted(rsecs)}")
    mdt = manifest.dtype_summary
    if mdt is not None and mdt != report["dtype_summary"]:
        v.append("per-tensor dtype summary differs from the manifest")
    return v


_NUM = re.compile(r"(\d+)")


def format_text(report: dict[str, Any], violations: list[str] | None = None) -> str:
    """Human-readable view of a report (sections, dtypes, per-layer bits, check)."""
    lines = [f"bundle: {report['path']} ({report['bytes']:,} bytes)"]
    if report.get("sha256"):
        lines.append(f"sha256: {report['sha256']}")
    lines.append("sections:")
    for s in report["sections"]:
        lines.append(f"  [{s['index']}] {s['name']:<32} {s['bytes']:>14,} bytes")
    lines.append(
        f"vision: {'yes' if report['has_vision'] else 'no'}  audio: {'yes' if report['has_audio'] else 'no'}  "
        f"per-layer embedder section: {'yes' if report['has_per_layer_embedder'] else 'no'}"
    )
    lines.append("weights by dtype (constant tensors):")
    for sec, d in report["dtype_summary"].items():
        parts = ", ".join(f"{k} {x['tensors']} tensors/{x['bytes']:,} B" for k, x in d.items())
        lines.append(f"  {sec}: {parts}")
    emb = [w for w in report["weights"] if w["op"] == "EMBEDDING_LOOKUP"]
    seen = set()
    for w in emb:
        if w["module"] in seen:
            continue
        seen.add(w["module"])
        lines.append(f"  {w['module']}: {_bits_str(w)}, {w['weight_scales']} scales")
    kv = (report["tflite"].get("tf_lite_prefill_decode") or {}).get("kv_cache") or {}
    if kv:
        sc = list(kv.get("scales", {}).values())
        lines.append(f"KV cache: {'/'.join(kv['dtypes'])}, {kv['caches']} caches, {kv['bytes']:,} B"
                     + (f", one scale per cache ({min(sc):.3g}..{max(sc):.3g})" if sc else ""))
    lines.append("decoder layers (decode signature): attention bits | mlp bits | other | FC activations")
    for k, d in report["layers"].items():
        fmt = lambda xs: ",".join(str(x) for x in xs) or "-"  # noqa: E731
        lines.append(f"  layer {int(k):>3}: {fmt(d['attention']):>5} | {fmt(d['mlp']):>5} | {fmt(d['other']):>5} | {','.join(d['activations'])}")
    other = {}
    for w in report["weights"]:
        if w["layer"] is None and w["op"] == "FULLY_CONNECTED" and w["section"] not in ENCODER_SECTIONS:
            other.setdefault(w["module"], w)
    for m, w in other.items():
        lines.append(f"  {m}: {_bits_str(w)}, activations {w.get('activations')}")
    enc = encoder_summary(report)
    if enc:
        lines.append("encoders (FULLY_CONNECTED weights by module group: bits x count, activations):")
        for sec, groups in enc.items():
            lines.append(f"  {sec}:")
            for g, d in groups.items():
                bits = ", ".join(f"{b} x{n}" for b, n in d["bits"].items())
                lines.append(f"    {g:<36} {bits}  activations {','.join(d['activations'])}")
    if violations is not None:
        if violations:
            lines.append(f"check: {len(violations)} violation(s)")
            lines.extend(f"  - {x}" for x in violations)
        else:
            lines.append("check: ok (matches scheme, preset and manifest)")
    return "\n".join(lines)


_ENC_LAYER = re.compile(r"\.layers\.\d+\.")


def encoder_summary(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Vision/audio sections: {section: {module group: {"bits": {"8-bit": n}, "activations": [...]}}}.

    The group is the module name with its layer index folded
    (``model.audio_tower.layers.*.lconv1d.linear_start.linear``), read back from the file.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for w in report["weights"]:
        if w["section"] not in ENCODER_SECTIONS or w["op"] != "FULLY_CONNECTED":
            continue
        g = _ENC_LAYER.sub(".layers.*.", w["module"] + ".").rstrip(".")
        d = out.setdefault(w["section"], {}).setdefault(g, {"bits": {}, "activations": []})
        b = _bits_str(w)
        d["bits"][b] = d["bits"].get(b, 0) + 1
        if w.get("activations") not in d["activations"]:
            d["activations"].append(w.get("activations"))
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def check_bundle(bundle: str | os.PathLike, *, scheme: Any = None, manifest_path: str | os.PathLike | None = None):
    """Inspect a bundle (file or folder) and check it against its manifest and scheme.

    Scheme: ``scheme`` (name/path/Scheme) if given, else the manifest's recorded
    scheme. Preset: the manifest's. Returns (report, violations, checked) where
    ``checked`` says what was checked against.
    """
    from edgekit.errors import UsageError
    from edgekit.results import manifest as mf

    p = Path(bundle)
    if p.is_dir():
        files = sorted(p.glob("*.litertlm"))
        if len(files) != 1:
            raise UsageError(f"{p} holds {len(files)} .litertlm files; pass the bundle file itself")
        p = files[0]
    report = inspect_bundle(p)
    mpath = Path(manifest_path) if manifest_path else mf.manifest_for_bundle(p)
    manifest = mf.read_manifest(mpath) if mpath is not None else None
    checked: dict[str, Any] = {"manifest": str(mpath) if mpath else None, "scheme": None, "preset": None}
    preset = None
    sch = None
    from edgekit.schemes import Scheme, load_scheme

    if manifest is not None:
        try:
            from edgekit.models.presets import get_preset

            preset = get_preset(manifest.preset)
            checked["preset"] = preset.name
        except Exception:  # unknown preset in a foreign manifest: skip the preset check
            preset = None
    if scheme is not None:
        sch = load_scheme(scheme, preset)
        checked["scheme"] = f"{sch.name} (--scheme)"
    elif manifest is not None:
        sch = Scheme.from_dict(dict(manifest.scheme or {}), source=f"{mpath}: scheme")
        if preset is not None and sch.has_placeholders:
            sch = sch.resolve(preset)
        checked["scheme"] = f"{sch.name} (manifest)"
    violations: list[str] = []
    if sch is not None:
        violations = check(report, sch, preset, manifest)
    elif manifest is not None:
        violations = _check_manifest(report, manifest)
    return report, violations, checked
