"""Write a checkpoint's real weights into a converted stand-in section (see :mod:`edgekit.builder.standin`).

A stand-in section has the real graph with shared weights (one buffer read by
every FULLY_CONNECTED op of the same role, shape and bit width) and vocabulary
tables of ``STANDIN_VOCAB`` rows. Filling it gives every FULLY_CONNECTED and
EMBEDDING_LOOKUP op its own weight tensor holding the checkpoint's weight in the
dtype the (quantized) stand-in chose for it:

- FLOAT32 / FLOAT16: the weight cast;
- INT8 / INT4 / INT2 channel-wise: quantized with ai-edge-quantizer's own
  numerics (``naive_min_max_quantize.get_tensor_quant_params``, the function its
  weight quantization calls), row block by row block, packed with its
  ``pack_data``; the scales are the checkpoint's own, never the stand-in's.

A QAT (``quant_method: gemma``) checkpoint is read through :class:`QatCheckpointWeights`:
an integer op of the checkpoint's width gets the stored integers and per-row scales as
they are (int8 -128 clipped to -127 and counted), never re-quantized; a table whose
per-(row, layer) scales one scale per row cannot hold is re-quantized from ``int x scale``.

The fill also gives every vocabulary-sized dimension its real size. The weights are read
from the safetensors files with plain reads, a block of rows at a time, so
no float table is ever whole in memory. A section with ``STREAM_LIMIT`` bytes of buffers or
more is written in ai-edge-quantizer's external-buffer layout one row block at a time, straight
into the file (:func:`_write_streamed`), so no filled weight is ever whole in memory either; a
smaller one is serialized from memory with ai-edge-quantizer's writer (:func:`write_model`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgekit.bundle.tensor_names import module_name_for

FULLY_CONNECTED = 9
EMBEDDING_LOOKUP = 7
GELU = 150
QUANTIZE = 114
DEQUANTIZE = 6
# TFLite TensorType codes
FLOAT32, FLOAT16, INT32, INT8, INT4, INT2 = 0, 1, 2, 9, 17, 19  # ai_edge_litert schema_py_generated.TensorType
_QBITS = {INT8: 8, INT4: 4, INT2: 2}
ROW_BLOCK_BYTES = 64 << 20  # float32 bytes of checkpoint rows converted at once
# sections with more weight bytes are written with external buffers (ai-edge-quantizer's
# writer, straight into the file): the inline flatbuffer builder holds the data two or three
# times while it grows (the full E2B per-layer table, 1.2 GB, took the builder to ~10 GiB)
INLINE_LIMIT = 64 << 20
# sections with this many buffer bytes or more are written weight by weight straight into
# the file (_write_streamed), never holding their filled weights (tests lower it)
STREAM_LIMIT = INLINE_LIMIT
_PACK_MIN = 1024  # ai-edge-quantizer's _PackedBufferData min_size_bytes: smaller buffers stay inline


# ------------------------------------------------------------------- weights
class CheckpointWeights:
    """Rows of a checkpoint's float tensors, read through memory maps (F32, BF16, F16)."""

    def __init__(self, ckpt_dir: str | os.PathLike):
        from edgekit.models.qat import read_safetensors_headers

        self.entries = read_safetensors_headers(Path(ckpt_dir))

    def key(self, module: str) -> str:
        if module == "lm_head" and "lm_head.weight" not in self.entries:
            return "model.language_model.embed_tokens.weight"  # tied
        return f"{module}.weight"

    def shape(self, module: str) -> tuple[int, ...]:
        return tuple(self.entries[self.key(module)].shape)

    def rows(self, module: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32, read with plain reads at their byte offsets.

        Not a memory map: the pages of a mapped file count in the process's RSS until
        the kernel reclaims them (9.4 GB for full E2B's per-layer table).
        """
        e = self.entries[self.key(module)]
        dt = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}.get(e.dtype)
        if dt is None:
            raise ValueError(f"{self.key(module)}: dtype {e.dtype} is not a float weight")
        row = int(np.prod(e.shape[1:])) if len(e.shape) > 1 else 1
        item = np.dtype(dt).itemsize
        n = max(0, stop - start)
        a = np.empty(n * row, dtype=dt)
        with open(e.file, "rb", buffering=0) as f:
            f.seek(e.start + start * row * item)
            got = f.readinto(memoryview(a).cast("B"))
        if got != a.nbytes:
            raise ValueError(f"{self.key(module)}: short read ({got} of {a.nbytes} bytes)")
        a = a.reshape((n,) + tuple(e.shape[1:]))
        if dt is np.uint16:  # bfloat16: the high half of a float32
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32, copy=False)

    def blocks(self, module: str) -> Iterator[tuple[int, np.ndarray]]:
        shape = self.shape(module)
        per_row = int(np.prod(shape[1:])) * 4 or 4
        step = max(1, ROW_BLOCK_BYTES // per_row)
        for s in range(0, shape[0], step):
            yield s, self.rows(module, s, min(shape[0], s + step))


class QatCheckpointWeights(CheckpointWeights):
    """Rows of a ``quant_method: gemma`` (QAT) checkpoint, read straight from its packed storage.

    A module the checkpoint stores quantized gives its integers and per-row scales as stored
    (:meth:`exact_bits`, :meth:`int_blocks`) and, where the graph needs floats (a float16
    scheme, or a table whose per-(row, layer) scales one scale per row cannot hold), its
    exactly dequantized rows (``int x scale``), a block of rows at a time; every other
    tensor is read as a float like :class:`CheckpointWeights`. No dequantized copy of the
    checkpoint is ever written or held. What was written how is counted in :attr:`stats`.
    """

    def __init__(self, ckpt):
        self.ckpt = ckpt
        self.entries = ckpt.entries
        self._scales: dict[str, np.ndarray] = {}
        # module -> {"bits", "written": "checkpoint integers" | "re-quantized from int x scale" | ..., "int8_clipped"}
        self.stats: dict[str, dict] = {}

    def _module(self, module: str):
        return self.ckpt.modules.get(module)

    def key(self, module: str) -> str:
        return module if self._module(module) is not None else super().key(module)

    def shape(self, module: str) -> tuple[int, ...]:
        m = self._module(module)
        return (m.rows, m.width) if m is not None else super().shape(module)

    def scales(self, module: str) -> np.ndarray:
        if module not in self._scales:
            self._scales[module] = self.ckpt.scales(module)
        return self._scales[module]

    def rows(self, module: str, start: int, stop: int) -> np.ndarray:
        if self._module(module) is None:
            return super().rows(module, start, stop)
        return self.ckpt.dequantized_rows(module, start, stop, self.scales(module))

    def exact_bits(self, module: str) -> int | None:
        """The checkpoint's bit width when its integers and scales can be written as stored
        (one scale per row), else None."""
        m = self._module(module)
        if m is None or (m.kind == "embedding" and m.blocks > 1):
            return None
        return m.bits

    def int_blocks(self, module: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row, int8 values, float32 per-row scales) of the stored integers, block by block."""
        m = self._module(module)
        sc = self.scales(module).reshape(m.rows, -1)[:, 0]
        step = max(1, ROW_BLOCK_BYTES // max(1, m.width * 4))
        for s in range(0, m.rows, step):
            e = min(m.rows, s + step)
            yield s, self.ckpt.integer_rows(module, s, e), sc[s:e]

    def note(self, module: str, **kw) -> None:
        st = self.stats.setdefault(module, {})
        for k, v in kw.items():
            if k == "int8_clipped":
                st[k] = st.get(k, 0) + int(v)
            else:
                st[k] = v


# ------------------------------------------------------------------- mapping
@dataclasses.dataclass(frozen=True)
class FillOp:
    subgraph: int
    op_index: int
    kind: str  # "fc" | "embedding"
    module: str
    weight: int  # tensor index of the op's weight (the constant behind a DEQUANTIZE)
    reader: int = -1  # the op that reads ``weight`` (the FC/lookup itself, or its DEQUANTIZE)
    slot: int = 1  # which input of ``reader`` it is


def _name(t) -> str:
    n = t.name
    return n.decode("utf-8") if isinstance(n, bytes) else str(n or "")


def _code(model, op) -> int:
    oc = model.operatorCodes[op.opcodeIndex]
    return max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))


def map_ops(model, section: str) -> list[FillOp]:
    """Every FC / EMBEDDING_LOOKUP op of a stand-in section with its Hugging Face module.

    A stand-in's shared weight is named after the first module of its group, so
    the module comes from the op's scope (its output tensor's name, which carries
    the full module path), never from the weight's name.
    """
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    out: list[FillOp] = []
    for si, sg in enumerate(model.subgraphs):
        consumers: dict[int, list] = {}
        producer = {int(o): i for i, op in enumerate(sg.operators) for o in op.outputs}
        for op in sg.operators:
            for i in op.inputs if op.inputs is not None else []:
                consumers.setdefault(int(i), []).append(op)

        def feeds_gelu(t: int, depth: int = 0) -> bool:
            # through the QUANTIZE / DEQUANTIZE pairs static quantization puts after an FC
            for c in consumers.get(t, []):
                code = _code(model, c)
                if code == GELU or (code in (QUANTIZE, DEQUANTIZE) and depth < 4
                                    and feeds_gelu(int(c.outputs[0]), depth + 1)):
                    return True
            return False

        for oi, op in enumerate(sg.operators):
            code = _code(model, op)
            if code not in (FULLY_CONNECTED, EMBEDDING_LOOKUP):
                continue
            w = int(op.inputs[1])
            reader, slot = oi, 1
            if w in producer and _code(model, sg.operators[producer[w]]) == DEQUANTIZE:
                reader, slot = producer[w], 0
                w = int(sg.operators[reader].inputs[0])  # float16 weights: the constant behind it
            scope = fu.get_op_scope(op, sg.tensors)
            if code == FULLY_CONNECTED:
                out_names = ";".join(_name(sg.tensors[int(o)]) for o in op.outputs) + ";"
                is_gate = feeds_gelu(int(op.outputs[0])) if "gate_proj" in out_names else None
                module = module_name_for(out_names, scope, is_gate, section)
                if module is None:
                    module = module_name_for(_name(sg.tensors[w]), scope, is_gate, section)
                kind = "fc"
            else:
                module = module_name_for(_name(sg.tensors[w]), scope, None, section)
                kind = "embedding"
            if module is None:
                raise ValueError(f"cannot map op {oi} of {section} (scope {scope[:120]!r}) to a model module")
            out.append(FillOp(si, oi, kind, module, w, reader, slot))
    return out


def split_dequantize(model) -> int:
    """Give every FC / lookup op its own DEQUANTIZE of its own constant (float16 weights).

    ai-edge-quantizer's float16 casting puts one DEQUANTIZE after each constant; in a
    stand-in that constant (and so that DEQUANTIZE) is shared by every op of a tie
    group. Each op gets a copy placed right before it, so each can be filled with
    its own weight. Returns the number of copies made.
    """
    made = 0
    for sg in model.subgraphs:
        producer = {int(o): i for i, op in enumerate(sg.operators) for o in op.outputs}
        readers: dict[int, int] = {}
        for op in sg.operators:
            for i in op.inputs if op.inputs is not None else []:
                readers[int(i)] = readers.get(int(i), 0) + 1
        ops_out = []
        dropped: set[int] = set()
        for op in sg.operators:
            code = _code(model, op)
            if code in (FULLY_CONNECTED, EMBEDDING_LOOKUP) and len(op.inputs) > 1:
                w = int(op.inputs[1])
                pi = producer.get(w)
                if pi is not None and _code(model, sg.operators[pi]) == DEQUANTIZE and readers.get(w, 0) > 1:
                    d = sg.operators[pi]
                    c = copy.deepcopy(sg.tensors[int(d.inputs[0])])
                    c.name = (_name(c) + f";split{len(sg.tensors)}").encode()
                    sg.tensors.append(c)
                    o = copy.deepcopy(sg.tensors[w])
                    o.name = (_name(o) + f";split{len(sg.tensors)}").encode()
                    sg.tensors.append(o)
                    d2 = copy.deepcopy(d)
                    d2.inputs = np.array([len(sg.tensors) - 2], dtype=np.int32)
                    d2.outputs = np.array([len(sg.tensors) - 1], dtype=np.int32)
                    ins = list(op.inputs)
                    ins[1] = len(sg.tensors) - 1
                    op.inputs = np.array(ins, dtype=np.int32)
                    ops_out.append(d2)
                    dropped.add(pi)
                    made += 1
            ops_out.append(op)
        # the shared DEQUANTIZE ops no longer feed anything
        still = {int(i) for op in ops_out for i in (op.inputs if op.inputs is not None else [])}
        keep = [op for op in ops_out if not (any(op is sg.operators[pi] for pi in dropped)
                                             and int(op.outputs[0]) not in still)]
        sg.operators = keep
    return made


# ------------------------------------------------------------------- quantize
def _quantize_rows(block: np.ndarray, bits: int, kind: str):
    """(int values, per-row scales) of a block of rows, with ai-edge-quantizer's numerics."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import naive_min_max_quantize as nmm

    cfg = qtyping.TensorQuantizationConfig(num_bits=bits, symmetric=True,
                                           granularity=qtyping.QuantGranularity.CHANNELWISE)
    op_name = (qtyping.TFLOperationName.FULLY_CONNECTED if kind == "fc"
               else qtyping.TFLOperationName.EMBEDDING_LOOKUP)
    info = qtyping.OpInfo(op=None, op_name=op_name, subgraph_op_index=0,
                          op_quant_config=qtyping.OpQuantizationConfig(weight_tensor_config=cfg))
    p = nmm.get_tensor_quant_params(info, cfg, tensor_content=block)
    return np.asarray(p.quantized_data), np.asarray(p.scale, dtype=np.float32).reshape(-1), p


def _weight_size(weights: CheckpointWeights, module: str, dtype: int) -> int:
    """Exact byte size of one op's filled weight, from its checkpoint shape and tensor type."""
    n = int(np.prod(weights.shape(module)))
    if dtype in _QBITS:
        if (n * _QBITS[dtype]) % 8:
            raise ValueError(f"{module}: {n} {_QBITS[dtype]}-bit values do not fill whole bytes")
        return n * _QBITS[dtype] // 8
    if dtype in (FLOAT32, FLOAT16):
        return n * (4 if dtype == FLOAT32 else 2)
    raise ValueError(f"{module}: cannot fill a weight of tensor type {dtype}")


def _weight_chunks(weights: CheckpointWeights, module: str, dtype: int, kind: str,
                   scales: np.ndarray | None) -> Iterator[np.ndarray]:
    """The filled bytes of one op's weight, a row block at a time, in file order.

    Integer types write their per-row scales into ``scales`` (float32, one per row) as
    the blocks go by; the blocks together are exactly :func:`_weight_size` bytes.
    """
    from ai_edge_quantizer.transformations import transformation_utils as tu

    total = _weight_size(weights, module, dtype)
    pos = 0

    def emit(b: np.ndarray) -> np.ndarray:
        nonlocal pos
        if pos + b.size > total:
            raise ValueError(f"{module}: more than its {total} bytes")
        pos += b.size
        return b

    exact = getattr(weights, "exact_bits", lambda _m: None)(module)
    if exact is not None and dtype in _QBITS and exact == _QBITS[dtype]:
        # a QAT checkpoint's integers and per-row scales, as stored (never re-quantized)
        clipped = 0
        for start, q, sc in weights.int_blocks(module):
            scales[start:start + len(sc)] = sc
            if dtype == INT8 and int(q.min(initial=0)) < -127:
                # LiteRT int8 weights are narrow-range ([-127, 127], ai-edge-quantizer clamps there
                # for its kernels): a -128 is clipped to -127, counted and named (as the classic path)
                clipped += int((q < -127).sum())
                q = np.maximum(q, -127).astype(np.int8)
            yield emit((tu.pack_data(_QBITS[dtype], q) if dtype != INT8 else q).view(np.uint8).reshape(-1))
            del q
        if pos != total:
            raise ValueError(f"{module}: wrote {pos} of {total} bytes")
        weights.note(module, bits=exact, written="checkpoint integers and scales", int8_clipped=clipped)
        return
    if isinstance(weights, QatCheckpointWeights) and module in weights.ckpt.modules:
        weights.note(module, bits=weights.ckpt.modules[module].bits,
                     written=("float (int x scale)" if dtype in (FLOAT32, FLOAT16)
                              else f"re-quantized per row at {_QBITS[dtype]} bits from int x scale"))
    for start, block in weights.blocks(module):
        if dtype == FLOAT32:
            b = np.ascontiguousarray(block, dtype=np.float32).view(np.uint8).reshape(-1)
        elif dtype == FLOAT16:
            b = block.astype(np.float16).view(np.uint8).reshape(-1)
        else:
            q, sc, _ = _quantize_rows(block, _QBITS[dtype], kind)
            scales[start:start + len(sc)] = sc
            q = q.astype(np.int8)
            if (q.size * _QBITS[dtype]) % 8:
                raise ValueError(f"{module}: a row block of {q.size} {_QBITS[dtype]}-bit values does not fill whole bytes")
            b = (tu.pack_data(_QBITS[dtype], q) if dtype != INT8 else q).view(np.uint8).reshape(-1)
        del block
        yield emit(b)
        del b
    if pos != total:
        raise ValueError(f"{module}: wrote {pos} of {total} bytes")


def _weight_bytes(weights: CheckpointWeights, module: str, dtype: int, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The filled buffer of one op's weight, and its per-row scales for integer types."""
    total = _weight_size(weights, module, dtype)
    # one output array written block by block: never the blocks and their concatenation at once
    data = np.empty(total, dtype=np.uint8)
    scales = np.empty(weights.shape(module)[0], dtype=np.float32) if dtype in _QBITS else None
    pos = 0
    for b in _weight_chunks(weights, module, dtype, kind, scales):
        data[pos:pos + b.size] = b
        pos += b.size
    return data, scales


# ------------------------------------------------------------------- fill
@dataclasses.dataclass
class FillReport:
    ops: int = 0
    tensors: int = 0
    weight_bytes: int = 0
    vocab_tensors: int = 0
    modules: dict[str, str] = dataclasses.field(default_factory=dict)  # module -> dtype name


_DTYPE_NAMES = {FLOAT32: "float32", FLOAT16: "float16", INT8: "int8", INT4: "int4", INT2: "int2"}


@dataclasses.dataclass
class _Pending:
    """A filled buffer whose bytes are produced only when written (:func:`_weight_chunks`)."""

    module: str
    dtype: int
    kind: str
    size: int  # exact, from shape and type (:func:`_weight_size`)
    scales: np.ndarray | None  # per-row float32, shared by every tensor of the buffer; set while producing


def fill_section(src: str | os.PathLike, dst: str | os.PathLike, section: str, weights: CheckpointWeights,
                 standin_vocab: int, vocab: int, progress: Callable[[str], None] | None = None,
                 stream_limit: int | None = None) -> FillReport:
    """Fill one stand-in ``.tflite`` section with the checkpoint's weights; write ``dst``.

    The graph is rewired first with every filled buffer empty (its size is known from shape
    and type). A section whose buffers reach ``stream_limit`` bytes (default
    :data:`STREAM_LIMIT`) is written by :func:`_write_streamed`: one row block of one
    weight in memory at a time. A smaller one gets its bytes in memory and
    :func:`write_model`.
    """
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(src))
    split_dequantize(model)
    ops = map_ops(model, section)
    rep = FillReport()
    old_buffers: set[int] = set()
    filled: set[tuple[int, int]] = set()
    shared: dict[tuple[str, int], int] = {}  # (module, type) -> buffer: one buffer per module and type
    pending: dict[int, _Pending] = {}
    for n, fo in enumerate(ops):
        sg = model.subgraphs[fo.subgraph]
        wt = sg.tensors[fo.weight]
        shape = weights.shape(fo.module)
        if list(wt.shape)[1:] != list(shape)[1:] or (wt.shape[0] != shape[0] and wt.shape[0] != standin_vocab):
            raise ValueError(f"{section}: {fo.module} is {list(wt.shape)} in the graph, {list(shape)} in the checkpoint")
        key = (fo.module, int(wt.type))
        bi = shared.get(key)  # the same weight in another signature's subgraph: one buffer
        if bi is None:
            size = _weight_size(weights, fo.module, int(wt.type))
            model.buffers.append(type(model.buffers[wt.buffer])())
            bi = len(model.buffers) - 1
            shared[key] = bi
            pending[bi] = _Pending(fo.module, int(wt.type), fo.kind, size,
                                   np.zeros(shape[0], dtype=np.float32) if int(wt.type) in _QBITS else None)
            rep.weight_bytes += size
        scales = pending[bi].scales
        new = copy.deepcopy(wt)
        if fo.kind == "fc":
            # a shared stand-in weight is named after its group's first module: name each
            # op's own weight after the op's output, which carries the op's module path
            # ("w;" keeps the name unique and is no module path of its own)
            op = sg.operators[fo.op_index]
            new.name = ("w;" + _name(sg.tensors[int(op.outputs[0])])).encode()
        new.shape = np.array(shape, dtype=np.int32)
        if new.shapeSignature is not None:
            new.shapeSignature = np.array(shape, dtype=np.int32)
        if scales is not None:
            # the one array the weight's producer fills (zeros until then: the same length,
            # so the serialized flatbuffer's layout does not depend on the values)
            qp = new.quantization
            qp.scale = scales
            qp.zeroPoint = np.zeros(len(scales), dtype=np.int64)
            qp.quantizedDimension = 0
            qp.min = qp.max = None
        old_buffers.add(int(wt.buffer))
        new.buffer = bi
        sg.tensors.append(new)
        ti = len(sg.tensors) - 1
        filled.add((fo.subgraph, ti))
        reader = sg.operators[fo.reader]
        inputs = list(reader.inputs)
        inputs[fo.slot] = ti
        reader.inputs = np.array(inputs, dtype=np.int32)
        rep.ops += 1
        rep.tensors += 1
        rep.modules[fo.module] = _DTYPE_NAMES.get(int(wt.type), str(wt.type))
    # the stand-in's shared weights are no longer read by any op: point them at the
    # empty buffer 0, drop their quantization and their bytes
    dead: set[tuple[int, int]] = set()
    for si, sg in enumerate(model.subgraphs):
        used = {int(i) for op in sg.operators for i in (list(op.inputs) + list(op.outputs)) if i >= 0}
        used |= {int(i) for i in list(sg.inputs) + list(sg.outputs)}
        for ti, t in enumerate(sg.tensors):
            if ti not in used and int(t.buffer) in old_buffers:
                t.buffer = 0
                t.quantization = None
                t.name = (_name(t) + f";unused{ti}").encode()
                dead.add((si, ti))
    _drop_tensors(model, dead)
    still = {int(t.buffer) for sg in model.subgraphs for t in sg.tensors}
    for b in old_buffers - still:
        model.buffers[b].data = None
    # every remaining vocabulary-sized dimension (logits) gets the real vocabulary
    if vocab != standin_vocab:
        for si, sg in enumerate(model.subgraphs):
            for ti, t in enumerate(sg.tensors):
                if (si, ti) in dead or t.shape is None or standin_vocab not in list(t.shape):
                    continue
                if t.buffer and model.buffers[t.buffer].data is not None and (si, ti) not in filled:
                    raise ValueError(f"{section}: constant {_name(t)} still has the stand-in vocabulary")
                t.shape = np.array([vocab if d == standin_vocab else d for d in t.shape], dtype=np.int32)
                if t.shapeSignature is not None:
                    t.shapeSignature = np.array([vocab if d == standin_vocab else d for d in t.shapeSignature],
                                                dtype=np.int32)
                rep.vocab_tensors += 1
    limit = STREAM_LIMIT if stream_limit is None else stream_limit
    held = sum(len(b.data) for b in model.buffers if b.data is not None)
    if held + sum(p.size for p in pending.values()) >= limit:
        _write_streamed(model, pending, dst, weights, section, progress)
        return rep
    for k, (bi, p) in enumerate(pending.items()):
        model.buffers[bi].data = _produce(weights, p)
        if progress and (k % 16 == 0 or k == len(pending) - 1):
            progress(f"{section}: {k + 1}/{len(pending)} weights")
    write_model(model, dst)
    return rep


def _produce(weights: CheckpointWeights, p: _Pending) -> np.ndarray:
    """All of one pending buffer's bytes (its scales land in ``p.scales``)."""
    data = np.empty(p.size, dtype=np.uint8)
    pos = 0
    for b in _weight_chunks(weights, p.module, p.dtype, p.kind, p.scales):
        data[pos:pos + b.size] = b
        pos += b.size
    return data


def _drop_tensors(model, dead: set[tuple[int, int]]) -> None:
    """Remove tensors no op reads any more, renumbering ops, subgraph and signature indices."""
    for si, sg in enumerate(model.subgraphs):
        gone = {ti for s_, ti in dead if s_ == si}
        if not gone:
            continue
        remap, kept = {}, []
        for ti, t in enumerate(sg.tensors):
            if ti not in gone:
                remap[ti] = len(kept)
                kept.append(t)

        def re(idx):
            return np.array([remap[int(i)] if int(i) >= 0 else int(i) for i in idx], dtype=np.int32)

        for op in sg.operators:
            op.inputs = re(op.inputs)
            op.outputs = re(op.outputs)
            if getattr(op, "intermediates", None) is not None:
                op.intermediates = re(op.intermediates)
        sg.inputs = re(sg.inputs)
        sg.outputs = re(sg.outputs)
        sg.tensors = kept
        for sd in model.signatureDefs or []:
            if sd.subgraphIndex != si:
                continue
            for tm in list(sd.inputs or []) + list(sd.outputs or []):
                tm.tensorIndex = remap[int(tm.tensorIndex)]
    dead.clear()


def write_model(model, dst: str | os.PathLike) -> None:
    """Serialize a ModelT with ai-edge-quantizer's writer; external buffers when past INLINE_LIMIT.

    Written under a temporary name and renamed into place (edgekit/fsutil.py).
    """
    from ai_edge_quantizer import model_modifier
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu  # noqa: F401 - schema
    from tensorflow.lite.tools import flatbuffer_utils

    from edgekit.fsutil import atomic_path

    total = sum(len(b.data) for b in model.buffers if b.data is not None)
    with atomic_path(dst) as tmp:
        if total < INLINE_LIMIT:
            data = flatbuffer_utils.convert_object_to_bytearray(model)
            with open(tmp, "wb") as f:
                f.write(data)
            return
        mm = model_modifier.ModelModifier(model)
        mm._serialize_model(model, model_modifier._PackedBufferData(model), str(tmp))  # noqa: SLF001


def _byte_view(d) -> memoryview:
    """A buffer's data (numpy array, list of ints, bytes or a memory map's slice) as bytes."""
    if isinstance(d, np.ndarray):
        return memoryview(np.ascontiguousarray(d).reshape(-1).view(np.uint8))
    if isinstance(d, list):
        return memoryview(np.asarray(d, dtype=np.uint8))
    return memoryview(d).cast("B")


def _pwrite_all(fd: int, data, at: int) -> None:
    mv = data if isinstance(data, memoryview) else memoryview(data)
    mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
    while len(mv):
        n = os.pwrite(fd, mv, at)
        mv, at = mv[n:], at + n


def _write_streamed(model, pending: dict[int, _Pending], dst: str | os.PathLike, weights: CheckpointWeights,
                    section: str, progress: Callable[[str], None] | None = None) -> None:
    """Write ``model`` with its pending buffers produced one row block at a time, straight into the file.

    The layout is ai-edge-quantizer's external-buffer layout (``ModelModifier._serialize_model``
    with ``_PackedBufferData``): the flatbuffer first, then every buffer of at least
    ``_PACK_MIN`` bytes in buffer order, each at a 16-byte aligned absolute offset that
    ``Buffer.offset`` / ``Buffer.size`` record (smaller buffers stay inline), so the
    same model gives the same bytes as :func:`write_model` on its external path.

    The flatbuffer's length does not depend on the values it holds (the scale vectors
    have their final lengths, offset and size fields are present and non-zero), so it is
    serialized once with placeholders to place the data, the data are written at their
    offsets, and the flatbuffer is serialized again with the real scales and offsets and
    written at the front. The checkpoint is read once; memory holds one row block
    (``ROW_BLOCK_BYTES`` of float32 plus its converted bytes), the scales and the graph.
    """
    from ai_edge_quantizer.model_modifier import _round_up_16  # the writer's own alignment
    from tensorflow.lite.tools import flatbuffer_utils

    from edgekit.fsutil import atomic_path

    external: dict[int, int] = {}  # buffer -> byte size, in buffer order
    held: dict[int, object] = {}  # the graph's own constants written from memory
    for bi, buf in enumerate(model.buffers):
        if bi in pending:
            p = pending[bi]
            if p.size < _PACK_MIN:  # inline, as _PackedBufferData leaves it
                buf.data = _produce(weights, p)
                continue
            external[bi] = p.size
        elif buf.data is not None and len(buf.data) >= _PACK_MIN:
            held[bi] = buf.data
            external[bi] = len(buf.data)
        else:
            continue
        # present and non-zero, so the serialized table has room for the real values
        buf.data, buf.offset, buf.size = None, 1, 1
    head = len(flatbuffer_utils.convert_object_to_bytearray(model))
    offsets: dict[int, int] = {}
    at = _round_up_16(head)
    for bi, n in external.items():
        offsets[bi] = at
        at = _round_up_16(at + n)
    end = at
    streamed = [bi for bi in external if bi in pending]
    with atomic_path(dst) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)  # the alignment gaps read as zeros, as in _serialize_model
            for bi, d in held.items():
                _pwrite_all(fd, _byte_view(d), offsets[bi])
            held.clear()
            for k, bi in enumerate(streamed):
                p, at = pending[bi], offsets[bi]
                for b in _weight_chunks(weights, p.module, p.dtype, p.kind, p.scales):
                    _pwrite_all(fd, memoryview(b), at)
                    at += b.size
                    del b
                if progress and (k % 16 == 0 or k == len(streamed) - 1):
                    progress(f"{section}: {k + 1}/{len(streamed)} weights (written to the file)")
            for bi, n in external.items():
                model.buffers[bi].offset, model.buffers[bi].size = offsets[bi], n
            fb = flatbuffer_utils.convert_object_to_bytearray(model)
            if len(fb) != head:  # the layout above would be wrong: never write such a file
                raise ValueError(f"{section}: the flatbuffer is {len(fb)} bytes with its data placed, "
                                 f"{head} when placing it")
            _pwrite_all(fd, fb, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
