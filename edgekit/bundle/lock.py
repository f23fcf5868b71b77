"""The build lock: what a bundle was made from, and how to check that a rebuild matches it.

``manifest["lock"]`` (schema 1) holds:

- ``inputs``: sha256 of every input: the checkpoint's weight files, its config files,
  its tokenizer files (and any other file of the folder), the scheme (the file given,
  if any, and the resolved rules), the calibration prompts (file and parsed prompts;
  ``used`` says whether the scheme reads them);
- ``options``: every build option that can change the bundle, defaults written out
  (including the export's arguments);
- ``toolchain``: the Python version and platform and every installed distribution
  with its version (``importlib.metadata``, what pip lists), plus edgekit's own
  source digest (informational: a checkout with local edits keeps its version);
- ``host``: the CPU model and machine (calibration runs on this CPU);
- ``identity``: sha256 of inputs + options + toolchain, and the header fields derived
  from it (``uuid``: a uuid5 of the identity; ``creation_timestamp``: a fixed date,
  ``SOURCE_DATE_EPOCH`` when set, else 1970-01-01T00:00:00+00:00);
- ``bundle`` {file, bytes, sha256}, ``header`` {bytes, sha256} (the bytes before the
  first section) and ``sections`` [{index, name, begin, bytes, sha256}], read back
  from the produced file.

litert-lm-builder 0.18.1 writes a random ``uuid4()`` and ``now()`` into every header
(``populate_system_metadata``, called by ``LitertLmFileBuilder`` at build time, drops
any uuid/creation_timestamp given to it). :func:`fixed_header` swaps that module
function, for the duration of one build, for one that calls the original and then
sets the two values derived from the inputs; no bytes are patched after the build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any, Iterator

from edgekit.fsutil import sha256_file

LOCK_SCHEMA = 1
# A fixed namespace for the header uuid5 (itself a uuid5 of the DNS namespace and a fixed name).
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "edgekit.bundle.lock")
SOURCE_DATE_EPOCH_ENV = "SOURCE_DATE_EPOCH"
CONFIG_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json")


# ------------------------------------------------------------------ inputs
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(_canonical(obj)).hexdigest()


def checkpoint_inputs(ckpt_dir: str | os.PathLike, weights_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """sha256 of every file of a checkpoint folder, grouped: weights, config, tokenizer, other.

    ``weights_sha256`` (from :class:`edgekit.models.checkpoint.CheckpointInfo`) saves
    hashing the weights a second time. ``edgekit_checkpoint.json`` (provenance of
    random weights, written with a time) is left out: the weights' hashes cover them.
    """
    d = Path(ckpt_dir)
    out: dict[str, dict[str, str]] = {"weights": {}, "config": {}, "tokenizer": {}, "other": {}}
    known = dict(weights_sha256 or {})
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        rel = f.relative_to(d).as_posix()
        if rel == "edgekit_checkpoint.json" or "/." in f"/{rel}" or "__pycache__" in rel:
            continue
        if f.suffix == ".safetensors" or rel.endswith(".safetensors.index.json"):
            group = "weights"
        elif f.name in CONFIG_FILES:
            group = "config"
        elif "tokenizer" in f.name or f.name in ("special_tokens_map.json", "chat_template.jinja",
                                                  "chat_template.json", "added_tokens.json"):
            group = "tokenizer"
        else:
            group = "other"
        out[group][rel] = known.get(rel) or sha256_file(f)
    return out


def scheme_input(given: Any, resolved: dict[str, Any]) -> dict[str, Any]:
    """The scheme as given (a name or a file) and the resolved rules."""
    rec: dict[str, Any] = {"given": str(given), "resolved_sha256": digest(resolved), "file_sha256": None}
    if isinstance(given, (str, os.PathLike)) and Path(given).is_file():
        rec["file_sha256"] = sha256_file(given)
    return rec


def calibration_input(path: str | os.PathLike | None, prompts_sha256: str | None, used: bool) -> dict[str, Any]:
    from edgekit.schemes.calibration import DEFAULT_CALIBRATION

    p = Path(path) if path is not None else Path(DEFAULT_CALIBRATION)
    return {
        "given": str(path) if path is not None else None,
        "file_sha256": sha256_file(p) if p.is_file() else None,
        "prompts_sha256": prompts_sha256,
        "used": bool(used),
    }


# ------------------------------------------------------------------ toolchain and host
def packages() -> dict[str, str]:
    """Every installed distribution (normalized name -> version), as pip lists them."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") if dist.metadata else None
        if not name:
            continue
        key = name.lower().replace("_", "-").replace(".", "-")
        out.setdefault(key, dist.version)  # the first on sys.path wins, as for imports
    return dict(sorted(out.items()))


def edgekit_source_sha256() -> str:
    """sha256 over edgekit's own Python sources and data (informational in the lock)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix in (".py", ".toml", ".json", ".txt", ".safetensors") and "__pycache__" not in f.parts:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def toolchain() -> dict[str, Any]:
    from edgekit import __version__

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": platform.system(),
        "machine": platform.machine(),
        "packages": packages(),
        "edgekit": {"version": __version__, "source_sha256": edgekit_source_sha256()},
    }


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (x86 ``model name``; Arm ``Model``/``Hardware``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or None
    found: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip().lower(), v.strip()
        if v and k in ("model name", "model", "hardware", "cpu model") and k not in found:
            found[k] = v
    for k in ("model name", "cpu model", "model", "hardware"):
        if k in found:
            return found[k]
    return platform.processor() or None


def host() -> dict[str, Any]:
    return {"cpu_model": cpu_model(), "machine": platform.machine(), "cpus": os.cpu_count()}


# ------------------------------------------------------------------ header fields
def source_date_epoch() -> int:
    v = os.environ.get(SOURCE_DATE_EPOCH_ENV, "").strip()
    try:
        return int(v) if v else 0
    except ValueError:
        from edgekit.errors import UsageError

        raise UsageError(f"{SOURCE_DATE_EPOCH_ENV}={v!r} is not an integer number of seconds",
                         hint=f"unset {SOURCE_DATE_EPOCH_ENV} or give seconds since 1970") from None


def content(inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs without the names they were given by (``given``: a path or a scheme name as typed)."""
    out: dict[str, Any] = {}
    for k, v in inputs.items():
        if k == "given":
            continue
        out[k] = content(v) if isinstance(v, dict) else v
    return out


def identity(inputs: dict[str, Any], options: dict[str, Any], tools: dict[str, Any]) -> dict[str, Any]:
    """The identity of a build and the header fields derived from it.

    The identity leaves out edgekit's source digest (informational) and the host
    (a build's inputs, not where it ran).
    """
    tc = {k: v for k, v in tools.items() if k != "edgekit"}
    tc["edgekit"] = tools.get("edgekit", {}).get("version")
    sha = digest({"inputs": content(inputs), "options": options, "toolchain": tc})
    epoch = int(options.get("source_date_epoch") or 0)
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()
    return {"sha256": sha, "uuid": str(uuid.uuid5(UUID_NAMESPACE, sha)), "creation_timestamp": stamp}


@contextlib.contextmanager
def fixed_header(uuid_value: str, creation_timestamp: str) -> Iterator[None]:
    """Within: litert-lm-builder writes these two header fields instead of uuid4() and now()."""
    from litert_lm_builder import litertlm_builder as lb

    orig = lb.populate_system_metadata
    fixed = {"uuid": uuid_value, "creation_timestamp": creation_timestamp}

    def populate(system_metadata):
        out = orig(system_metadata)  # upstream's own entries (and any it adds later), then our values
        return [dataclasses.replace(m, value=fixed[m.key]) if m.key in fixed else m for m in out]

    lb.populate_system_metadata = populate
    try:
        yield
    finally:
        lb.populate_system_metadata = orig


# ------------------------------------------------------------------ the built file
def _range_sha256(f, begin: int, end: int) -> str:
    h = hashlib.sha256()
    f.seek(begin)
    left = end - begin
    while left > 0:
        chunk = f.read(min(left, 1 << 22))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def bundle_record(path: str | os.PathLike) -> dict[str, Any]:
    """{bundle, header, sections} of a ``.litertlm``, every part with its sha256."""
    from edgekit.runtime.litertlm_file import read_header

    path = Path(path)
    hdr = read_header(path)
    size = path.stat().st_size
    first = min((s.begin for s in hdr.sections), default=size)
    with open(path, "rb") as f:
        secs = [{"index": s.index, "name": s.name, "begin": s.begin, "bytes": s.size,
                 "sha256": _range_sha256(f, s.begin, s.end)} for s in hdr.sections]
        header = {"bytes": first, "sha256": _range_sha256(f, 0, first),
                  "uuid": hdr.system_metadata.get("uuid"),
                  "creation_timestamp": hdr.system_metadata.get("creation_timestamp")}
    return {"bundle": {"file": path.name, "bytes": size, "sha256": sha256_file(path)},
            "header": header, "sections": secs}


def make_lock(*, inputs: dict[str, Any], options: dict[str, Any], tools: dict[str, Any], host_rec: dict[str, Any],
              ident: dict[str, Any], bundle: str | os.PathLike) -> dict[str, Any]:
    rec = {"schema": LOCK_SCHEMA, "inputs": inputs, "options": options, "toolchain": tools, "host": host_rec,
           "identity": ident}
    rec.update(bundle_record(bundle))
    return rec


# ------------------------------------------------------------------ comparisons
def toolchain_differences(locked: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two toolchains (Python, platform, every package version); [] = the same."""
    out: list[str] = []
    for k in ("python", "implementation", "system", "machine"):
        if locked.get(k) != current.get(k):
            out.append(f"{k} {locked.get(k)} (lock) vs {current.get(k)} (here)")
    lp, cp = locked.get("packages") or {}, current.get("packages") or {}
    for name in sorted(set(lp) | set(cp)):
        a, b = lp.get(name), cp.get(name)
        if a != b:
            out.append(f"{name} {a or 'absent'} (lock) vs {b or 'absent'} (here)")
    le, ce = (locked.get("edgekit") or {}).get("version"), (current.get("edgekit") or {}).get("version")
    if le != ce:
        out.append(f"edgekit {le} (lock) vs {ce} (here)")
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def compare(locked: dict[str, Any], rebuilt: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {what, name, status: MATCH|DIFF, lock, here} for inputs, options, header, sections, bundle."""
    rows: list[dict[str, Any]] = []
    li, ri = content(locked.get("inputs") or {}), content(rebuilt.get("inputs") or {})
    for group in sorted(set(li) | set(ri)):
        a, b = li.get(group), ri.get(group)
        detail = ""
        if a != b and isinstance(a, dict) and isinstance(b, dict):
            fa, fb = _flat(a), _flat(b)
            detail = ", ".join(f"{k}: {str(fa.get(k))[:12]} -> {str(fb.get(k))[:12]}"
                               for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k))
        rows.append({"what": "input", "name": group, "status": "MATCH" if a == b else "DIFF", "detail": detail})
    lo, ro = locked.get("options") or {}, rebuilt.get("options") or {}
    for k in sorted(set(lo) | set(ro)):
        if lo.get(k) != ro.get(k):
            rows.append({"what": "option", "name": k, "status": "DIFF",
                         "detail": f"{lo.get(k)!r} -> {ro.get(k)!r}"})
    if not any(r["what"] == "option" for r in rows):
        rows.append({"what": "option", "name": "all", "status": "MATCH", "detail": f"{len(lo)} options"})
    lh, rh = locked.get("header") or {}, rebuilt.get("header") or {}
    rows.append({"what": "header", "name": "header", "status": "MATCH" if lh.get("sha256") == rh.get("sha256")
                 else "DIFF", "detail": f"{lh.get('sha256', '')[:16]} -> {rh.get('sha256', '')[:16]}"})
    ls = {(s["index"], s["name"]): s for s in locked.get("sections") or []}
    rs = {(s["index"], s["name"]): s for s in rebuilt.get("sections") or []}
    for key in sorted(set(ls) | set(rs)):
        a, b = ls.get(key), rs.get(key)
        same = a is not None and b is not None and a["sha256"] == b["sha256"]
        rows.append({"what": "section", "name": f"[{key[0]}] {key[1]}", "status": "MATCH" if same else "DIFF",
                     "detail": f"{(a or {}).get('sha256', 'absent')[:16]} -> {(b or {}).get('sha256', 'absent')[:16]}"})
    lb_, rb = locked.get("bundle") or {}, rebuilt.get("bundle") or {}
    rows.append({"what": "bundle", "name": lb_.get("file", "bundle"),
                 "status": "MATCH" if lb_.get("sha256") == rb.get("sha256") else "DIFF",
                 "detail": f"{lb_.get('sha256', '')[:16]} -> {rb.get('sha256', '')[:16]}"})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    w = max((len(r["name"]) for r in rows), default=10)
    return [f"{r['status']:<5}  {r['what']:<7}  {r['name']:<{w}}  {r['detail']}".rstrip() for r in rows]
