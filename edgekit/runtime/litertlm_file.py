"""Read the section table of a ``.litertlm`` file (standard library + flatbuffers).

A ``.litertlm`` file is a 32-byte preamble (magic ``LITERTLM``, version, the end
offset of the header) followed by a flatbuffer header that lists sections with
their byte ranges, type and key/value items (``model_type`` for TFLite sections),
then the section payloads. This module reads only that table, so the runtime can
load the TFLite sections without litert-lm-builder (which is a build-time tool).
The field layout follows the LiteRT-LM header schema (``litertlm_header_schema``).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from typing import Any

import flatbuffers  # a dependency of ai-edge-litert
from flatbuffers import number_types as N
from flatbuffers.table import Table

MAGIC = b"LITERTLM"
HEADER_END_LOCATION = 24
HEADER_BEGIN = 32

# AnySectionDataType in the header schema.
SECTION_DATA_TYPES = {
    0: "NONE",
    1: "GenericBinaryData",
    2: "Deprecated",
    3: "TFLiteModel",
    4: "SP_Tokenizer",
    5: "LlmMetadataProto",
    6: "HF_Tokenizer_Zlib",
    7: "TFLiteWeights",
    8: "EmbeddingMetadataProto",
    9: "ExecutorMetadataProto",
    10: "TtsMetadataProto",
    11: "AsrMetadataProto",
}

# VData union members: (table field reader) for scalar value tables.
_VDATA_SCALARS = {
    1: N.Uint8Flags,
    2: N.Int8Flags,
    3: N.Uint16Flags,
    4: N.Int16Flags,
    5: N.Uint32Flags,
    6: N.Int32Flags,
    7: N.Float32Flags,
    8: N.BoolFlags,
    10: N.Uint64Flags,
    11: N.Int64Flags,
    12: N.Float64Flags,
}
_VDATA_STRING = 9


class NotALiteRTLMFile(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Section:
    index: int
    data_type: str
    begin: int
    end: int
    items: dict[str, Any]

    @property
    def size(self) -> int:
        return self.end - self.begin

    @property
    def model_type(self) -> str | None:
        mt = self.items.get("model_type")
        return str(mt) if mt is not None else None

    @property
    def name(self) -> str:
        """``tf_lite_<model_type>`` for TFLite sections, else the data type."""
        mt = self.model_type
        if self.data_type in ("TFLiteModel", "TFLiteWeights") and mt:
            return mt if mt.startswith("tf_lite_") else f"tf_lite_{mt}"
        return self.data_type


@dataclasses.dataclass(frozen=True)
class LiteRTLMHeader:
    version: tuple[int, int, int]
    system_metadata: dict[str, Any]
    sections: list[Section]


def _field(tab: Table, slot_offset: int) -> int:
    return N.UOffsetTFlags.py_type(tab.Offset(slot_offset))


def _vector(tab: Table, slot_offset: int) -> list[Table]:
    o = _field(tab, slot_offset)
    if not o:
        return []
    n = tab.VectorLen(o)
    start = tab.Vector(o)
    out = []
    for j in range(n):
        pos = tab.Indirect(start + j * 4)
        out.append(Table(tab.Bytes, pos))
    return out


def _kvp(tab: Table) -> tuple[str | None, Any]:
    o = _field(tab, 4)
    key = tab.String(o + tab.Pos).decode("utf-8") if o else None
    o = _field(tab, 6)
    vtype = tab.Get(N.Uint8Flags, o + tab.Pos) if o else 0
    o = _field(tab, 8)
    if not o:
        return key, None
    val = Table(bytearray(), 0)
    tab.Union(val, o)
    vo = _field(val, 4)
    if not vo:
        return key, None
    if vtype == _VDATA_STRING:
        return key, val.String(vo + val.Pos).decode("utf-8")
    flags = _VDATA_SCALARS.get(vtype)
    if flags is None:
        return key, None
    return key, val.Get(flags, vo + val.Pos)


def read_header(path: str | os.PathLike) -> LiteRTLMHeader:
    """Parse the header of a ``.litertlm`` file; raise NotALiteRTLMFile if it is not one."""
    with open(path, "rb") as f:
        pre = f.read(HEADER_BEGIN)
        if len(pre) < HEADER_BEGIN or pre[:8] != MAGIC:
            raise NotALiteRTLMFile(f"{path} is not a .litertlm file (bad magic)")
        major, minor, patch = struct.unpack("<III", pre[8:20])
        (end,) = struct.unpack("<Q", pre[HEADER_END_LOCATION:HEADER_END_LOCATION + 8])
        size = os.fstat(f.fileno()).st_size
        if end <= HEADER_BEGIN or end > size:
            raise NotALiteRTLMFile(f"{path}: header end offset {end} out of range")
        buf = bytearray(f.read(end - HEADER_BEGIN))
    try:
        root = Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
        sysmeta: dict[str, Any] = {}
        o = _field(root, 4)
        if o:
            st = Table(buf, root.Indirect(o + root.Pos))
            for kv in _vector(st, 4):
                k, v = _kvp(kv)
                if k is not None:
                    sysmeta[k] = v
        sections: list[Section] = []
        o = _field(root, 6)
        if o:
            sm = Table(buf, root.Indirect(o + root.Pos))
            for i, so in enumerate(_vector(sm, 4)):
                items = {}
                for kv in _vector(so, 4):
                    k, v = _kvp(kv)
                    if k is not None:
                        items[k] = v
                bo = _field(so, 6)
                eo = _field(so, 8)
                do = _field(so, 10)
                begin = so.Get(N.Uint64Flags, bo + so.Pos) if bo else 0
                end_ = so.Get(N.Uint64Flags, eo + so.Pos) if eo else 0
                dtype = so.Get(N.Uint8Flags, do + so.Pos) if do else 0
                if not (0 <= begin <= end_ <= size):
                    raise NotALiteRTLMFile(f"{path}: section {i} range {begin}-{end_} outside the file")
                sections.append(Section(i, SECTION_DATA_TYPES.get(dtype, f"type{dtype}"), begin, end_, items))
    except NotALiteRTLMFile:
        raise
    except Exception as exc:  # corrupt flatbuffer
        raise NotALiteRTLMFile(f"{path}: unreadable header ({type(exc).__name__}: {exc})") from exc
    return LiteRTLMHeader((major, minor, patch), sysmeta, sections)


def read_section(path: str | os.PathLike, section: Section) -> bytes:
    with open(path, "rb") as f:
        f.seek(section.begin)
        data = f.read(section.size)
    if len(data) != section.size:
        raise NotALiteRTLMFile(f"{path}: section {section.index} is truncated")
    return data


def read_hf_tokenizer_json(path: str | os.PathLike, header: LiteRTLMHeader | None = None) -> str | None:
    """The Hugging Face tokenizer.json stored in the bundle, or None."""
    header = header or read_header(path)
    for s in header.sections:
        if s.data_type == "HF_Tokenizer_Zlib":
            raw = read_section(path, s)
            # LiteRT-LM stores an 8-byte little-endian uncompressed size, then zlib data.
            for skip in (8, 0):
                try:
                    return zlib.decompress(raw[skip:]).decode("utf-8")
                except zlib.error:
                    continue
    return None
