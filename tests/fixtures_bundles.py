"""Session-scoped tiny bundles built with the real toolchain, cached on disk.

``tiny_bundles`` -> {"wNa8o8": Path, "fp16": Path}: text-only bundles of the tiny
preset (shipped checkpoint, or seed-0 random weights while none is shipped),
built by ``edgekit.builder.pipeline.build``. They are cached under
``$EDGEKIT_CACHE`` (default ``<repo>/.cache/edgekit``) in ``test-bundles/<key>``,
where the key hashes the source files of the build path (build, bundle, runtime,
schemes, models) and the shipped tiny assets, so any code change rebuilds them and
reruns are fast. The float export itself is cached by the pipeline.

``tiny_manifests`` -> {"wNa8o8": dict, "fp16": dict} (the manifest.json of each).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("edgekit/builder", "edgekit/bundle", "edgekit/runtime", "edgekit/schemes", "edgekit/models")
SCHEMES = ("fp16", "wNa8o8")  # fp16 first: it is the baseline of the other


def bundle_cache_root() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or REPO / ".cache" / "edgekit")


def code_key() -> str:
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for f in sorted((REPO / d).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".toml", ".json", ".txt", ".safetensors") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build_tiny_bundles(out_root: Path | None = None) -> dict[str, Path]:
    """Build (or reuse) the tiny text-only bundles; returns scheme -> bundle path."""
    from edgekit.builder.pipeline import build
    from edgekit.results.manifest import MANIFEST_FILE, bundle_name

    root = out_root or bundle_cache_root() / "test-bundles" / code_key()
    out: dict[str, Path] = {}
    for scheme in SCHEMES:
        name = bundle_name("tiny", scheme, True)
        d = root / name
        bundle = d / f"{name}.litertlm"
        if not (bundle.is_file() and (d / MANIFEST_FILE).is_file()):
            res = build("tiny", scheme=scheme, text_only=True, output=root, cache_dir=bundle_cache_root(),
                        quality=False)
            bundle = res.bundle
        out[scheme] = bundle
    return out


@pytest.fixture(scope="session")
def tiny_bundles() -> dict[str, Path]:
    return build_tiny_bundles()


@pytest.fixture(scope="session")
def tiny_manifests(tiny_bundles) -> dict[str, dict]:
    return {k: json.loads((p.parent / "manifest.json").read_text()) for k, p in tiny_bundles.items()}


@pytest.fixture(scope="session")
def tiny_source():
    """(checkpoint folder, CheckpointInfo) of the source the tiny bundles are built from."""
    from edgekit.builder.pipeline import make_random_source, plan_source
    from edgekit.models.presets import get_preset

    preset = get_preset("tiny")
    d, info = plan_source(preset, None, False, 0, 1, bundle_cache_root())
    if info is None:
        info = make_random_source(preset, d, 0, 1)
    return d, info


@pytest.fixture(scope="session")
def tiny_float_bundle(tiny_bundles, tiny_manifests) -> Path:
    """The cached float32 export the tiny bundles were made from (text-only)."""
    key = tiny_manifests["wNa8o8"]["build"]["export"]["key"]
    p = bundle_cache_root() / "exports" / key / "model.litertlm"
    assert p.is_file(), f"float export {p} missing from the cache"
    return p


def build_tiny_multimodal_bundle(out_root: Path | None = None) -> Path:
    """Build (or reuse) the tiny wNa8o8 bundle WITH vision/audio sections (edgekit/builder/encoders.py)."""
    from edgekit.builder.pipeline import build
    from edgekit.results.manifest import MANIFEST_FILE, bundle_name

    root = out_root or bundle_cache_root() / "test-bundles" / code_key()
    name = bundle_name("tiny", "wNa8o8", False)
    bundle = root / name / f"{name}.litertlm"
    if not (bundle.is_file() and (root / name / MANIFEST_FILE).is_file()):
        bundle = build("tiny", scheme="wNa8o8", text_only=False, output=root, cache_dir=bundle_cache_root(),
                       quality=False).bundle
    return bundle


@pytest.fixture(scope="session")
def tiny_multimodal_bundle() -> Path:
    return build_tiny_multimodal_bundle()


@pytest.fixture()
def build_tempdirs(monkeypatch) -> list[str]:
    """The temporary folders the build pipeline makes (tempfile.mkdtemp), recorded as it makes them."""
    from edgekit.builder import pipeline

    made: list[str] = []
    real_mkdtemp = pipeline.tempfile.mkdtemp

    def mkdtemp(*a, **k):
        made.append(real_mkdtemp(*a, **k))
        return made[-1]

    monkeypatch.setattr(pipeline.tempfile, "mkdtemp", mkdtemp)
    return made
