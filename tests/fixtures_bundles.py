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

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
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


# Float exports other tests of the session need, made in the background while the tiny bundles are
# built cold (a fresh clone): a conversion child is single-threaded (the tiny export measured 62.9 s wall,
# 62.1 s CPU), so on a 2-core machine the other core is idle during the tiny export. The same
# edgekit.builder.export.export_checkpoint call, in its own process, fills the same cache entry (its
# per-key lock makes a test that asks for it meanwhile wait, then read it). One child at a time; none is
# started after the tiny bundles are built, and the running one is waited for then, so nothing runs
# beside the tests themselves. EDGEKIT_TEST_PREFETCH=0 turns it off.
PREFETCH_EXPORTS = (
    {"text_only": False},  # tiny_multimodal_bundle (classic route), test_streamed_encoders' classic sections
    {"text_only": True, "lightweight_conversion": True},  # test_build_memory
)
_PREFETCH_CHILD = (
    "import json, sys\n"
    "from edgekit.builder import export as ex\n"
    "ex.export_checkpoint(sys.argv[2], json.loads(sys.argv[3]), ex.ExportOptions(**json.loads(sys.argv[4])),"
    " cache_dir=sys.argv[1])\n"
)


class _Prefetch:
    """Runs PREFETCH_EXPORTS one child after the other in a thread until stop()."""

    def __init__(self, ckpt_dir: Path, identity: dict, options: list[dict], cache: Path):
        self._jobs = [[sys.executable, "-c", _PREFETCH_CHILD, str(cache), str(ckpt_dir), json.dumps(identity),
                       json.dumps(o)] for o in options]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="edgekit-test-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for cmd in self._jobs:
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              cwd=str(REPO))
            self._proc.wait()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
        self._thread.join()


def _start_prefetch(cache: Path) -> _Prefetch | None:
    if os.environ.get("EDGEKIT_TEST_PREFETCH", "1") == "0":
        return None
    from edgekit.builder import export as ex
    from edgekit.builder.pipeline import plan_source
    from edgekit.models.presets import get_preset

    preset = get_preset("tiny")
    d, info = plan_source(preset, None, False, 0, 1, cache)
    if info is None:  # no shipped checkpoint: the random one is made by the build itself
        return None
    identity = {"preset": preset.name, "width_div": 1, "weights_sha256": info.weights_sha256}
    base = {"prefill_length": preset.default_prefill, "cache_length": preset.default_cache_length}
    todo = [o for o in ({**base, **o} for o in PREFETCH_EXPORTS)
            if not (cache / "exports" / ex.export_key(identity, ex.ExportOptions(**o)) / "model.litertlm").is_file()]
    return _Prefetch(d, identity, todo, cache) if todo else None


def build_tiny_bundles(out_root: Path | None = None) -> dict[str, Path]:
    """Build (or reuse) the tiny text-only bundles; returns scheme -> bundle path."""
    from edgekit.builder.pipeline import build
    from edgekit.results.manifest import MANIFEST_FILE, bundle_name

    root = out_root or bundle_cache_root() / "test-bundles" / code_key()
    out: dict[str, Path] = {}
    prefetch = None
    try:
        for scheme in SCHEMES:
            name = bundle_name("tiny", scheme, True)
            d = root / name
            bundle = d / f"{name}.litertlm"
            if not (bundle.is_file() and (d / MANIFEST_FILE).is_file()):
                if prefetch is None and out_root is None:
                    prefetch = _start_prefetch(bundle_cache_root())
                res = build("tiny", scheme=scheme, text_only=True, output=root, cache_dir=bundle_cache_root(),
                            quality=False)
                bundle = res.bundle
            out[scheme] = bundle
    finally:
        if prefetch is not None:
            prefetch.stop()
    return out


@pytest.fixture(scope="session")
def tiny_bundles() -> dict[str, Path]:
    return build_tiny_bundles()


@pytest.fixture(scope="session")
def tiny_manifests(tiny_bundles) -> dict[str, dict]:
    return {k: json.loads((p.parent / "manifest.json").read_text()) for k, p in tiny_bundles.items()}


@functools.lru_cache(maxsize=None)
def session_tempdir(prefix: str) -> Path:
    """A temporary folder for this pytest process, removed at exit (kept with EDGEKIT_KEEP_TEST_FILES)."""
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=prefix))
    if not os.environ.get("EDGEKIT_KEEP_TEST_FILES"):
        atexit.register(shutil.rmtree, d, True)
    return d


@functools.lru_cache(maxsize=None)
def tiny_source_info():
    """(checkpoint folder, CheckpointInfo) of the source the tiny bundles are built from, as the pipeline
    plans it (the shipped checkpoint, or seed-0 random weights made once)."""
    from edgekit.builder.pipeline import make_random_source, plan_source
    from edgekit.models.presets import get_preset

    preset = get_preset("tiny")
    d, info = plan_source(preset, None, False, 0, 1, bundle_cache_root())
    if info is None:
        info = make_random_source(preset, d, 0, 1)
    return Path(d), info


def tiny_source_identity() -> tuple[Path, dict, int]:
    """(checkpoint folder, source identity, vocabulary size) exactly as the pipeline computes them for tiny."""
    from edgekit.models.presets import get_preset

    preset = get_preset("tiny")
    d, info = tiny_source_info()
    return d, {"preset": preset.name, "width_div": 1, "weights_sha256": info.weights_sha256}, int(preset.vocab_size)


@pytest.fixture(scope="session")
def tiny_source():
    """(checkpoint folder, CheckpointInfo) of the source the tiny bundles are built from."""
    return tiny_source_info()


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
