"""The manifest written next to every bundle: what was built, from what, with what.

This module is the one place that reads and writes ``manifest.json``; every reader in
edgekit/ and scripts/ goes through :func:`read_manifest` / :func:`read_beside` /
:meth:`Manifest.of` and the typed :class:`Manifest` view. It also holds the bundle
folder naming rule ``<model>-<scheme>[-text]`` (:func:`bundle_name` /
:func:`parse_bundle_name`). It sits on the records floor (2) so the bench (3) and the
bundle check before a push (devices, 2) read manifests the way the builder (5) writes them.

A versioned JSON record (``schema`` 1, ``kind`` "edgekit-bundle-manifest"). The parts
that describe the bundle itself (sections, per-tensor dtype summary, sha256, size) are
read back from the produced file by :mod:`edgekit.bundle.inspect`, never copied from
the build's intent (:func:`from_report`).

Top-level keys (schema 1):
``schema``, ``kind``, ``edgekit_version``, ``name``,
``model`` (``preset`` name, ``width_div``, its ``config``, ``param_counts``), ``source``
(checkpoint path + weights sha256, or random seed + width_div), ``scheme`` (the resolved
rules, ``Scheme.to_dict()``), ``build`` (``text_only``, prefill/cache lengths,
calibration, stage timings, build seconds, peak RSS of the export child and of the
builder; ``toolchain_log`` names the file that holds what the toolchain printed),
``toolchain`` (package versions), ``bundle`` (file name, bytes, sha256), ``sections``,
``dtype_summary``, ``layers`` (bits per decoder layer), ``encoders``, ``runtime`` (what
loaded the bundle after the build and generated tokens), ``quality`` (optional), ``qat``
(QAT builds), ``lock`` (:mod:`edgekit.bundle.lock`: sha256 of every input, every build
option, every installed package version, the CPU model, the sha256 of the bundle, its
header and each section; ``edgekit build ... --verify-lock MANIFEST`` rebuilds and compares).
Readers ignore keys they do not know; :class:`Manifest` keeps them (``data``) so a
read-modify-write (:func:`update_manifest`) loses nothing.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgekit.errors import ConfigError
from edgekit.fsutil import atomic_write_json

MANIFEST_SCHEMA = 1
MANIFEST_KIND = "edgekit-bundle-manifest"
MANIFEST_FILE = "manifest.json"
REQUIRED_KEYS = ("schema", "kind", "name", "model", "source", "scheme", "build", "toolchain", "bundle", "sections",
                 "dtype_summary")
TEXT_SUFFIX = "text"  # the last part of a text-only bundle's folder name


# --- the folder naming rule ---------------------------------------------------------------


def bundle_name(model: str, scheme: str, text_only: bool | None) -> str:
    """``<model>-<scheme>[-text]``: the folder (and file stem) ``edgekit build`` writes a bundle under."""
    return f"{model}-{scheme}" + (f"-{TEXT_SUFFIX}" if text_only else "")


def parse_bundle_name(name: str) -> tuple[str | None, str | None, bool | None]:
    """``<model>-<scheme>[-text]`` -> (model, scheme, text_only); (None, None, None) when it is not one.

    The model is the first part (preset names hold no ``-``); the scheme is the rest, so a
    scheme name may hold ``-``.
    """
    parts = name.split("-")
    text = parts[-1] == TEXT_SUFFIX
    if text:
        parts = parts[:-1]
    if len(parts) < 2 or not all(parts):
        return None, None, None
    return parts[0], "-".join(parts[1:]), text


# --- the typed view -------------------------------------------------------------------------


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _map(v: Any) -> Mapping[str, Any] | None:
    return v if isinstance(v, Mapping) else None


def _sections(v: Any) -> tuple[tuple[str, int], ...]:
    """(name, bytes) of each recorded section; () unless every entry records both."""
    if not isinstance(v, list) or not all(isinstance(s, Mapping) and "name" in s and _int(s.get("bytes")) is not None
                                          for s in v):
        return ()
    return tuple((str(s["name"]), int(s["bytes"])) for s in v)


@dataclass(frozen=True)
class Manifest:
    """A manifest read into the fields readers use; ``data`` holds the whole record (own copy).

    Every field is None (or empty) when the manifest does not record it with the type the
    builder writes: a manifest of another tool is read, nothing is invented. The nested
    records (``build``, ``source``, ``quality`` ...) are the manifest's own mappings; treat
    them as read-only and change a manifest with :meth:`replace`.
    """

    data: Mapping[str, Any] = field(repr=False)
    schema: int | None = None
    kind: str | None = None
    name: str | None = None
    preset: str | None = None  # model.preset
    width_div: int | None = None  # model.width_div
    scheme_name: str | None = None  # scheme.name
    text_only: bool | None = None  # build.text_only
    bundle_file: str | None = None  # bundle.file
    bundle_bytes: int | None = None  # bundle.bytes
    bundle_sha256: str | None = None  # bundle.sha256
    weights_sha256: Mapping[str, str] | None = None  # source.weights_sha256: {weights file: sha256}
    sections: tuple[tuple[str, int], ...] = ()  # (name, bytes) in recorded order

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "manifest", strict: bool = True) -> "Manifest":
        """The typed view of a manifest object. ``strict`` (what ``edgekit build`` and ``inspect``
        need) refuses anything but a complete edgekit manifest of this schema; without it any
        JSON object is read for what it records."""
        if strict:
            validate(data, source)
        elif not isinstance(data, Mapping):
            raise ConfigError(f"{source} is not a JSON object")
        d = copy.deepcopy(dict(data))
        text_only = _dig(d, "build", "text_only")
        return cls(
            data=d,
            schema=_int(d.get("schema")),
            kind=_str(d.get("kind")),
            name=_str(d.get("name")),
            preset=_str(_dig(d, "model", "preset")),
            width_div=_int(_dig(d, "model", "width_div")),
            scheme_name=_str(_dig(d, "scheme", "name")),
            text_only=text_only if isinstance(text_only, bool) else None,
            bundle_file=_str(_dig(d, "bundle", "file")),
            bundle_bytes=_int(_dig(d, "bundle", "bytes")),
            bundle_sha256=_str(_dig(d, "bundle", "sha256")),
            weights_sha256=_map(_dig(d, "source", "weights_sha256")),
            sections=_sections(d.get("sections")),
        )

    @classmethod
    def of(cls, manifest: "Manifest | Mapping[str, Any] | None") -> "Manifest | None":
        """A Manifest as is, a mapping read leniently (e.g. the dict a build just made), None as None."""
        if manifest is None or isinstance(manifest, Manifest):
            return manifest
        return cls.from_dict(manifest, strict=False)

    # nested records, as written (None when absent or not an object)
    @property
    def model(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("model"))

    @property
    def source(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("source"))

    @property
    def scheme(self) -> Mapping[str, Any] | None:
        """The resolved scheme (``Scheme.to_dict()``)."""
        return _map(self.data.get("scheme"))

    @property
    def build(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("build"))

    @property
    def toolchain(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("toolchain"))

    @property
    def dtype_summary(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("dtype_summary"))

    @property
    def layers(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("layers"))

    @property
    def runtime(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("runtime"))

    @property
    def quality(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("quality"))

    @property
    def qat(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("qat"))

    @property
    def lock(self) -> Mapping[str, Any] | None:
        return _map(self.data.get("lock"))

    @property
    def folder_name(self) -> str | None:
        """``<model>-<scheme>[-text]`` from what the manifest records, None when model or scheme is missing."""
        if self.preset is None or self.scheme_name is None:
            return None
        return bundle_name(self.preset, self.scheme_name, self.text_only)

    def to_dict(self) -> dict[str, Any]:
        """The whole record as a plain JSON object (a copy), unknown keys included."""
        return copy.deepcopy(dict(self.data))

    def replace(self, **fields: Any) -> "Manifest":
        """A new view with top-level keys set (e.g. ``quality=...``), read with the same strictness."""
        d = self.to_dict()
        d.update(fields)
        return Manifest.from_dict(d, strict=False)


# --- writing ------------------------------------------------------------------------------


def from_report(report: dict[str, Any]) -> dict[str, Any]:
    """The read-back parts of a manifest, from an inspect report."""
    return {
        "bundle": {"file": Path(report["path"]).name, "bytes": report["bytes"], "sha256": report.get("sha256")},
        "sections": [{"name": s["name"], "type": s["type"], "bytes": s["bytes"]} for s in report["sections"]],
        "dtype_summary": report["dtype_summary"],
        "layers": report["layers"],
        "encoders": {"vision": report["has_vision"], "audio": report["has_audio"]},
    }


def make_manifest(
    *,
    name: str,
    model: dict[str, Any],
    source: dict[str, Any],
    scheme: dict[str, Any],
    build: dict[str, Any],
    toolchain: dict[str, Any],
    report: dict[str, Any],
    runtime: dict[str, Any] | None = None,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from edgekit import __version__

    m: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "kind": MANIFEST_KIND,
        "edgekit_version": __version__,
        "name": name,
        "model": model,
        "source": source,
        "scheme": scheme,
        "build": build,
        "toolchain": toolchain,
    }
    m.update(from_report(report))
    if runtime is not None:
        m["runtime"] = runtime
    if quality is not None:
        m["quality"] = quality
    return m


def write_manifest(path: str | os.PathLike, manifest: "Manifest | dict[str, Any]") -> Path:
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    validate(data, str(path))
    return atomic_write_json(path, data)


def update_manifest(path: str | os.PathLike, **fields: Any) -> Manifest:
    m = read_manifest(path).replace(**fields)
    write_manifest(path, m)
    return m


# --- reading ------------------------------------------------------------------------------


def validate(manifest: Any, source: str = "manifest") -> Mapping[str, Any]:
    if not isinstance(manifest, Mapping):
        raise ConfigError(f"{source} is not a JSON object")
    if manifest.get("kind") != MANIFEST_KIND:
        raise ConfigError(f"{source}: not an edgekit bundle manifest (kind={manifest.get('kind')!r})")
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(
            f"{source}: manifest schema {manifest.get('schema')!r}, this edgekit reads {MANIFEST_SCHEMA}",
            hint="rebuild the bundle with this edgekit version",
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ConfigError(f"{source}: manifest lacks {', '.join(missing)}")
    return manifest


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no manifest", hint="pass a bundle folder built by `edgekit build`") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from exc


def read_manifest(path: str | os.PathLike, *, strict: bool = True) -> Manifest:
    """The manifest at ``path`` (ConfigError when missing, unreadable or, with ``strict``, not a
    complete edgekit manifest of this schema)."""
    path = Path(path)
    return Manifest.from_dict(_load_json(path), source=str(path), strict=strict)


def manifest_for_bundle(bundle: str | os.PathLike) -> Path | None:
    """``manifest.json`` beside a bundle file (or inside a bundle folder), if present."""
    p = Path(bundle)
    cand = p / MANIFEST_FILE if p.is_dir() else p.parent / MANIFEST_FILE
    return cand if cand.is_file() else None


def read_beside(bundle: str | os.PathLike, *, strict: bool = False) -> tuple[Path | None, Manifest | None]:
    """(path, manifest) of ``manifest.json`` beside a bundle file or in a bundle folder; (None, None)
    when there is none. One that is there but unreadable or not a JSON object raises ConfigError:
    it was meant to describe the bundle and cannot. Lenient by default (another tool's manifest is read)."""
    p = manifest_for_bundle(bundle)
    if p is None:
        return None, None
    return p, read_manifest(p, strict=strict)
