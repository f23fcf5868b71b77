"""Check a bundle file on this machine before it is pushed or run.

:func:`check_bundle` reads the ``.litertlm`` preamble and header
(:mod:`edgekit.runtime.litertlm_file`), requires the sections a LiteRT-LM LLM engine
loads (LLM metadata, a tokenizer, at least one TFLite model, each starting a TFLite
flatbuffer), and, when a ``manifest.json`` lies beside the file (``edgekit build``
writes one), requires it to be readable and to agree with the file on what it records:
size, sha256 and the sections (name and bytes). A manifest that records none of these
(another tool's) is only read.

Any failure raises :class:`~edgekit.errors.InspectionFailed` (exit 10, the code
``edgekit inspect`` gives for the same file): one line naming the file and the first
problem found. Used by ``edgekit bench`` (``bench.session.bundle_info``: both bundles,
before a transport is opened) and ``edgekit push`` (before it connects). The transports
themselves push any file (harness, runtime modules, native binaries) and do not check.

It lives with the transports (floor 2) so ``edgekit.bench`` (floor 3) can call it without
importing ``edgekit.bundle`` (floor 4).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError, InspectionFailed
from edgekit.results.manifest import Manifest, read_beside
from edgekit.runtime.litertlm_file import HEADER_BEGIN, MAGIC, NotALiteRTLMFile, read_header

TOKENIZER_TYPES = ("HF_Tokenizer_Zlib", "SP_Tokenizer")
TFLITE_TYPES = ("TFLiteModel",)
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier of a TFLite model, at bytes 4..8
HINT = "pass a .litertlm bundle built by `edgekit build` (`edgekit inspect PATH` shows what a file holds)"


@dataclass(frozen=True)
class BundleCheck:
    """What was checked, for the caller to report or reuse."""

    path: str
    bytes: int
    version: tuple[int, int, int]
    sections: tuple[tuple[str, int], ...]  # (name, bytes) in file order
    system_metadata: dict[str, Any] = field(default_factory=dict)
    manifest_path: str | None = None
    manifest: Manifest | None = None  # read leniently: another tool's manifest is only read
    sha256: str | None = None  # computed only when the manifest records one to compare


def _fail(path: str | os.PathLike, problem: str) -> InspectionFailed:
    return InspectionFailed(f"{os.fspath(path)}: not a usable bundle: {problem}", hint=HINT)


def read_manifest_beside(bundle: str | os.PathLike) -> tuple[Path | None, Manifest | None]:
    """(path, manifest) of ``manifest.json`` beside ``bundle``; (None, None) when there is none.

    A manifest that is there but unreadable, or not a JSON object, is refused: it was meant
    to describe the bundle and cannot.
    """
    try:
        return read_beside(bundle)
    except ConfigError as exc:
        raise _fail(bundle, str(exc)) from exc


def check_bundle(path: str | os.PathLike, *, manifest: bool = True) -> BundleCheck:
    """Check ``path`` as described in the module docstring; return what was read."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        pre = f.read(HEADER_BEGIN)
    if pre[: len(MAGIC)] != MAGIC:
        raise _fail(path, f"no {MAGIC.decode()} magic at the start ({size} bytes; not a .litertlm file)")
    if len(pre) < HEADER_BEGIN:
        raise _fail(path, f"truncated: {size} bytes, shorter than the {HEADER_BEGIN}-byte preamble")
    try:
        header = read_header(path)
    except NotALiteRTLMFile as exc:
        # read_header's message names the path; keep only the reason
        reason = str(exc).replace(f"{path}: ", "").replace(str(path), "the file")
        raise _fail(path, f"{reason} (file of {size} bytes: truncated or corrupt)") from exc
    (header_end,) = struct.unpack("<Q", pre[24:32])
    sections = header.sections
    types = [s.data_type for s in sections]
    if not sections:
        raise _fail(path, "the header lists no sections")
    if "LlmMetadataProto" not in types:
        raise _fail(path, "no LlmMetadataProto section (not an LLM bundle)")
    if not any(t in TOKENIZER_TYPES for t in types):
        raise _fail(path, "no tokenizer section (HF_Tokenizer_Zlib or SP_Tokenizer)")
    if not any(t in TFLITE_TYPES for t in types):
        raise _fail(path, "no TFLite model section")
    with open(path, "rb") as f:
        for s in sections:
            if s.begin < header_end:
                raise _fail(path, f"section {s.index} ({s.name}) starts inside the header")
            if s.data_type in TFLITE_TYPES:
                f.seek(s.begin)
                head = f.read(8)
                if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
                    raise _fail(path, f"section {s.index} ({s.name}) is not a TFLite model")
    found = tuple((s.name, s.size) for s in sections)
    mpath, mdata, sha = None, None, None
    if manifest:
        mpath, mdata = read_manifest_beside(path)
        if mdata is not None:
            sha = _check_against_manifest(path, size, found, mpath, mdata)
    return BundleCheck(str(path), size, header.version, found, dict(header.system_metadata),
                       str(mpath) if mpath else None, mdata, sha)


def _check_against_manifest(path: Path, size: int, found: tuple[tuple[str, int], ...], mpath: Path,
                            m: Manifest) -> str | None:
    """Compare what ``m`` records (``bundle.bytes``, ``bundle.sha256``, ``sections``) with the file."""
    want_bytes = m.bundle_bytes
    if want_bytes is not None and want_bytes != size:
        raise _fail(path, f"{size} bytes, its manifest {mpath} says {want_bytes} (truncated, or another file)")
    if m.sections:
        want = sorted(m.sections)
        if want != sorted(found):
            missing = sorted(set(want) - set(found))
            extra = sorted(set(found) - set(want))
            raise _fail(path, f"sections differ from its manifest {mpath}: manifest only {missing}, "
                              f"file only {extra}")
    want_sha = m.bundle_sha256
    if want_sha:
        # the cache push uses too: a bundle is hashed once per (path, size, mtime, ctime, inode)
        from edgekit.devices.hashing import local_sha256

        sha = local_sha256(str(path))
        if sha != want_sha:
            raise _fail(path, f"sha256 {sha[:12]}... differs from its manifest {mpath} ({want_sha[:12]}...): "
                              "the file changed after the build")
        return sha
    return None
