"""Reading a TFLite flatbuffer (one section of a ``.litertlm``) with ai_edge_litert's generated
schema: op codes, tensor names, types, shapes, constant buffers, quantization parameters and
the packed sub-byte integers. One set of helpers for the bundle readers (inspect, exactness)."""

from __future__ import annotations

from typing import Any

import numpy as np

# BuiltinOperator codes of the TFLite schema that the readers look for
DEQUANTIZE = 6
EMBEDDING_LOOKUP = 7
FULLY_CONNECTED = 9
QUANTIZE = 114
GELU = 150

# TensorType of the TFLite schema, by its code 0, 1, 2, ... -> (name, bits)
TENSOR_TYPES = dict(enumerate([
    ("FLOAT32", 32), ("FLOAT16", 16), ("INT32", 32), ("UINT8", 8), ("INT64", 64), ("STRING", None),
    ("BOOL", 8), ("INT16", 16), ("COMPLEX64", 64), ("INT8", 8), ("FLOAT64", 64), ("COMPLEX128", 128),
    ("UINT64", 64), ("RESOURCE", None), ("VARIANT", None), ("UINT32", 32), ("UINT16", 16), ("INT4", 4),
    ("BFLOAT16", 16), ("INT2", 2),
]))
INT_TYPE_BITS = {9: 8, 17: 4, 19: 2}  # TensorType INT8, INT4, INT2 -> bits


def load_model(buf) -> Any:
    """The root ``Model`` table of a TFLite flatbuffer (bytes-like; nothing is copied)."""
    from ai_edge_litert import schema_py_generated as schema

    return schema.Model.GetRootAs(buf, 0)


def op_names() -> dict[int, str]:
    """BuiltinOperator code -> name."""
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if isinstance(v, int)}


def signatures(model) -> dict[int, str]:
    """Subgraph index -> signature key (subgraphs without one are decompositions of composites)."""
    out: dict[int, str] = {}
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        out[sd.SubgraphIndex()] = sd.SignatureKey().decode()
    return out


KV_PREFIX = "kv_cache_"  # the KV-cache inputs and outputs of every prefill/decode signature


def signature_io(model) -> dict[str, dict[str, dict[str, int]]]:
    """Signature key -> {"inputs"|"outputs": {signature name: tensor index}}, with the subgraph
    index under "subgraph"."""
    out: dict[str, dict] = {}
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        rec = {"subgraph": sd.SubgraphIndex(), "inputs": {}, "outputs": {}}
        for kind, n, get in (("inputs", sd.InputsLength(), sd.Inputs), ("outputs", sd.OutputsLength(), sd.Outputs)):
            for j in range(n):
                tm = get(j)
                rec[kind][tm.Name().decode()] = tm.TensorIndex()
        out[sd.SignatureKey().decode()] = rec
    return out


def opcode(model, op) -> int:
    oc = model.OperatorCodes(op.OpcodeIndex())
    return max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))


def tensor_name(t) -> str:
    n = t.Name()
    return n.decode("utf-8", "replace") if n else ""


def dtype(t) -> tuple[str, int | None]:
    return TENSOR_TYPES.get(t.Type(), (f"TYPE{t.Type()}", None))


def shape(t) -> list[int]:
    return [int(t.Shape(j)) for j in range(t.ShapeLength())]


def numel(t) -> int:
    n = 1
    for j in range(t.ShapeLength()):
        n *= max(int(t.Shape(j)), 0)
    return n


def is_constant(model, t) -> bool:
    b = t.Buffer()
    if b <= 0 or b >= model.BuffersLength():
        return False
    buf = model.Buffers(b)
    return buf.DataLength() > 0 or buf.Size() > 0


def buffer_bytes(model, buf: memoryview, idx: int) -> np.ndarray | None:
    """The bytes of buffer ``idx``: inline, or at an offset in the file (large models)."""
    b = model.Buffers(idx)
    if b is None:
        return None
    if b.Offset() > 1:
        return np.frombuffer(buf, np.uint8, count=int(b.Size()), offset=int(b.Offset()))
    if b.DataLength() == 0:
        return None
    return b.DataAsNumpy()


def scales(t) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
    """(scales, zero points, quantized dimension) of a tensor; Nones when it has no scales."""
    q = t.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None, None, None
    zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength(), np.int64)
    return q.ScaleAsNumpy().astype(np.float32), np.asarray(zp), int(q.QuantizedDimension())


def unpack_ints(raw: np.ndarray, bits: int, count: int) -> np.ndarray:
    """TFLite packed sub-byte integers (low bits first, two's complement) -> int8."""
    raw = np.asarray(raw, np.uint8)
    if bits == 8:
        return raw.view(np.int8)[:count].copy()
    per = 8 // bits
    mask = (1 << bits) - 1
    vals = np.stack([(raw >> (bits * k)) & mask for k in range(per)], axis=-1).reshape(-1)[:count].astype(np.int16)
    vals = np.where(vals >= (1 << (bits - 1)), vals - (1 << bits), vals)
    return vals.astype(np.int8)
