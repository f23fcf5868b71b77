"""The manifest written next to every bundle: what was built, from what, with what.

A versioned JSON record. The parts that describe the bundle itself (sections,
per-tensor dtype summary, sha256, size) are read back from the produced file by
:mod:`edgekit.bundle.inspect`, never copied from the build's intent.

Top-level keys (schema 1):
``schema``, ``kind`` ("edgekit-bundle-manifest"), ``edgekit_version``, ``name``,
``model`` (preset name + its config), ``source`` (checkpoint path + weights sha256,
or random seed + width_div), ``scheme`` (the resolved rules, ``Scheme.to_dict()``),
``build`` (text_only, prefill/cache lengths, calibration, stage timings, build
seconds, peak RSS of the export child and of the builder), ``toolchain``
(package versions), ``bundle`` (file name, bytes, sha256), ``sections``,
``dtype_summary``, ``layers`` (bits per decoder layer), ``runtime`` (what loaded
the bundle after the build and generated tokens), ``quality`` (optional), ``lock``
(:mod:`edgekit.bundle.lock`: sha256 of every input, every build option, every
installed package version, the CPU model, the sha256 of the bundle, its header and
each section; ``edgekit build ... --verify-lock MANIFEST`` rebuilds and compares).
``build.toolchain_log`` names the file that holds what the toolchain printed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError
from edgekit.fsutil import atomic_write_json

MANIFEST_SCHEMA = 1
MANIFEST_KIND = "edgekit-bundle-manifest"
MANIFEST_FILE = "manifest.json"
REQUIRED_KEYS = ("schema", "kind", "name", "model", "source", "scheme", "build", "toolchain", "bundle", "sections",
                 "dtype_summary")


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


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    validate(manifest, str(path))
    return atomic_write_json(path, manifest)


def validate(manifest: Any, source: str = "manifest") -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise ConfigError(f"{source}: not a JSON object")
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


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no manifest", hint="pass a bundle folder built by `edgekit build`") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable manifest ({exc})") from exc
    return validate(data, str(path))


def manifest_for_bundle(bundle: str | os.PathLike) -> Path | None:
    """``manifest.json`` beside a bundle file (or inside a bundle folder), if present."""
    p = Path(bundle)
    cand = p / MANIFEST_FILE if p.is_dir() else p.parent / MANIFEST_FILE
    return cand if cand.is_file() else None


def update_manifest(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    m = read_manifest(path)
    m.update(fields)
    write_manifest(path, m)
    return m
