"""Fixtures for results, comparison, gate and reports (session-scoped where expensive).

Committed result fixtures live in tests/fixtures/results/. The ``synth-*`` ones
are synthesized here (deterministic RNG, plausible phone-like numbers) so the
pure logic can be tested without a device; ``host-*`` ones were captured from a
real `edgekit bench` on this machine's ``host`` profile and are kept in the schema
they were written in (schema 1: read with bases recounted). Regenerate the synthetic
ones with ``python tests/fixtures_results.py``; regenerate golden outputs with
``EDGEKIT_REGEN_GOLDEN=1 pytest tests/unit/test_report_golden.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "results"
GOLDEN = FIXTURES / "golden"
REGEN_ENV = "EDGEKIT_REGEN_GOLDEN"


def regen_golden() -> bool:
    return os.environ.get(REGEN_ENV, "") not in ("", "0")


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with the committed golden file (or rewrite it when EDGEKIT_REGEN_GOLDEN=1)."""
    path = GOLDEN / name
    if regen_golden():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"golden file {path} missing; run with {REGEN_ENV}=1 once and commit it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"output differs from {path}; rerun with {REGEN_ENV}=1 if the change is intended"


def _bundle(model: str, scheme: str, size: int, sha: str, quality: dict | None = None, text_only=True) -> dict:
    from edgekit.results.manifest import MANIFEST_KIND, MANIFEST_SCHEMA, bundle_name

    name = bundle_name(model, scheme, text_only)
    # the identity keys of the shape `edgekit build` writes (edgekit/results/manifest.py)
    manifest = {"schema": MANIFEST_SCHEMA, "kind": MANIFEST_KIND, "name": name, "model": {"preset": model},
                "scheme": {"name": scheme}, "build": {"text_only": text_only}}
    if quality:
        manifest["quality"] = quality
    return {"path": f"dist/{name}/{name}.litertlm", "sha256": sha, "bytes": size, "model": model,
            "scheme": scheme, "text_only": text_only, "manifest": manifest}


def _run(rng, role, phase, index, order, decode_tps, prefill_tps, anon_mb, file_mb, init_ms, t0, decode=32,
         temp0=38.0, freq=2_910_000):
    token_ms = list(np.round(rng.normal(1000.0 / decode_tps, 0.04 * 1000.0 / decode_tps, decode).clip(0.1), 3))
    token_ms[0] = round(token_ms[0] * 1.3, 3)
    d_tps = round(decode / (sum(token_ms) / 1000.0), 3)
    p_tps = round(float(rng.normal(prefill_tps, prefill_tps * 0.03)), 3)
    prefill_ms = 64 / p_tps * 1000.0
    ttft = round(prefill_ms + token_ms[0], 3)
    init_ms = round(float(rng.normal(init_ms, init_ms * 0.03)), 3)
    anon = float(rng.normal(anon_mb, anon_mb * 0.01))
    filem = float(rng.normal(file_mb, file_mb * 0.005))
    mem = []
    total_ms = init_ms + prefill_ms + sum(token_ms) + 150
    for i, t in enumerate(np.arange(0, total_ms, 50.0)):
        frac = min(1.0, t / (init_ms + 1))
        a = round(anon * (0.2 + 0.8 * frac), 3)
        f = round(filem * frac, 3)
        mem.append([float(t), round(a + f + 3.1, 3), a, f, round(a + f * 0.8, 3), 0.0])
    temp_end = temp0 + float(rng.uniform(0.5, 2.5))
    metrics = {
        "init_ms": init_ms, "ttft_ms": ttft, "prefill_tps": p_tps, "decode_tps": d_tps,
        "token_p50_ms": round(float(np.percentile(token_ms, 50)), 3),
        "token_p90_ms": round(float(np.percentile(token_ms, 90)), 3),
        "token_p99_ms": round(float(np.percentile(token_ms, 99)), 3),
        "peak_rss_mb": round(max(m[1] for m in mem), 3), "peak_anon_mb": round(max(m[2] for m in mem), 3),
        "peak_file_mb": round(max(m[3] for m in mem), 3), "peak_pss_mb": round(max(m[4] for m in mem), 3),
    }
    dur = total_ms / 1000.0
    return {
        "role": role, "phase": phase, "index": index, "order": order, "status": "ok", "error": None,
        "metrics": metrics, "token_ms": token_ms,
        "mem_fields": ["t_ms", "rss_mb", "anon_mb", "file_mb", "pss_mb", "swap_mb"], "mem": mem,
        "thermal": {"start_c": round(temp0, 1), "max_c": round(temp_end + 0.5, 1), "end_c": round(temp_end, 1),
                    "zone": "cpu-big"},
        "cpufreq": [{"cpu": c, "start_khz": freq, "min_khz": freq * 0.8, "max_khz": freq, "end_khz": freq}
                    for c in (0, 4, 8)],
        "trace_dir": f"traces/{order:02d}-{role}-{phase}-{index}", "t_start": t0, "t_end": t0 + dur,
    }, dur


def synth_result(seed: int = 1, reps: int = 5, warmup: int = 1, cand_decode: float = 48.0,
                 base_decode: float = 22.5, cand_anon: float = 310.0, base_anon: float = 575.0,
                 cand_prefill: float = 410.0, base_prefill: float = 265.0, cand_file: float = 820.0,
                 base_file: float = 1480.0, cand_init: float = 420.0, base_init: float = 610.0,
                 base_model: str = "e2b", prefill: int = 64, decode: int = 32, identity: dict | None = None,
                 runtime_version: str = "0.18.1") -> dict:
    rng = np.random.default_rng(seed)
    t0 = 1_795_000_000.0 + seed * 10_000
    runs = []
    order = 0
    quality = {"ppl_ratio": 1.043, "top1_agreement": 0.931, "kl_mean": 0.0412}
    base_quality = {"ppl_ratio": 1.0, "top1_agreement": 1.0, "kl_mean": 0.0}
    plan = [("candidate", "warmup", i) for i in range(warmup)] + [("baseline", "warmup", i) for i in range(warmup)]
    for i in range(reps):
        plan += [("candidate", "measure", i), ("baseline", "measure", i)]
    temp = 38.0
    for role, phase, idx in plan:
        cand = role == "candidate"
        run, dur = _run(rng, role, phase, idx, order, cand_decode if cand else base_decode,
                        cand_prefill if cand else base_prefill, cand_anon if cand else base_anon,
                        cand_file if cand else base_file, cand_init if cand else base_init, t0,
                        decode=decode, temp0=temp)
        temp = run["thermal"]["end_c"] - 1.0
        runs.append(run)
        t0 += dur + 2.0
        order += 1
    return {
        "schema": 1, "kind": "edgekit-bench-result", "created": f"2026-11-{10 + seed % 10:02d}T12:00:00Z",
        "edgekit_version": "0.1.0", "status": "ok", "error": None, "failed_run": None,
        "device": {"profile": "pixel8", "transport": "adb",
                   "identity": identity or {"serial": "38111FDJH00ABC", "model": "Pixel 8", "soc": "Tensor G3",
                                            "android_release": "15", "sdk": "35", "abi": "arm64-v8a"}},
        "settings": {"prefill": prefill, "decode": decode, "threads": 4, "backend": "cpu", "warmup": warmup,
                     "reps": reps, "cooldown_s": 2.0, "interval_ms": 50, "affinity": "f0", "runner": "native"},
        "bundles": {
            "candidate": _bundle("e2b", "wNa8o8", 1_214_000_000, "a1" * 32, quality),
            "baseline": _bundle(base_model, "fp16", 4_630_000_000, "f0" * 32, base_quality),
        },
        "runtime": {"backend": "cpu", "runtime": {"litert_lm": runtime_version},
                    "host": {"machine": "aarch64", "system": "Android"}},
        "runs": runs,
    }


SYNTH = {
    # a clear win: decode ~2.1x, anonymous memory about -46%
    "synth-pixel8-wna8o8-vs-fp16": dict(seed=1),
    # the same bundles measured again later (for `edgekit compare A B`)
    "synth-pixel8-wna8o8-vs-fp16-rerun": dict(seed=2),
    # a regression of the candidate against itself: fp16 as candidate, wNa8o8 as baseline
    "synth-pixel8-fp16-vs-wna8o8": dict(seed=3, cand_decode=22.5, base_decode=48.0, cand_anon=575.0, base_anon=310.0,
                                        cand_prefill=265.0, base_prefill=410.0, cand_file=1480.0, base_file=820.0,
                                        cand_init=610.0, base_init=420.0),
    # baseline of another model: not comparable
    "synth-pixel8-mismatch": dict(seed=4, base_model="e4b"),
    # three reps each: Mann-Whitney cannot reach p < 0.05
    "synth-pixel8-3reps": dict(seed=5, reps=3),
    # another runtime version (for compare: not comparable unless --allow-mismatch)
    "synth-pixel8-runtime-0.19": dict(seed=6, runtime_version="0.19.0", cand_anon=620.0),
}


def write_synthetic() -> None:
    for name, kw in SYNTH.items():
        d = FIXTURES / name
        d.mkdir(parents=True, exist_ok=True)
        data = synth_result(**kw)
        if name == "synth-pixel8-fp16-vs-wna8o8":
            b = data["bundles"]
            b["candidate"], b["baseline"] = b["baseline"], b["candidate"]
        write_current(data, d / "result.json")


def write_current(data: dict, path: Path) -> None:
    """Write a (schema 1) result dict as the current schema: bases counted from its samples."""
    import json

    from edgekit.results.records import BenchResult

    path.write_text(json.dumps(BenchResult.from_dict(data).to_dict(), indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def results_fixtures() -> Path:
    """Folder of committed result fixtures (each a results/<name>/result.json)."""
    assert FIXTURES.is_dir(), f"missing {FIXTURES}"
    return FIXTURES


def _file(p) -> Path:
    p = Path(p)
    return p if p.is_file() else sorted(p.glob("*.litertlm"))[0]


@pytest.fixture(scope="session")
def bench_bundles(request) -> dict[str, Path]:
    """scheme -> .litertlm of the tiny model, from the build fixture `tiny_bundles`."""
    env = os.environ.get("EDGEKIT_TEST_DIST")  # developer shortcut: a dist/ with tiny-*-text builds
    if env:
        d = Path(env)
        return {"wNa8o8": _file(next(d.glob("*-wNa8o8*"))), "fp16": _file(next(d.glob("*-fp16*")))}
    try:
        tb = request.getfixturevalue("tiny_bundles")
    except pytest.FixtureLookupError:
        if os.environ.get("CI"):
            pytest.fail("fixture tiny_bundles (tests/fixtures_bundles.py) is missing")
        pytest.skip("fixture tiny_bundles (tests/fixtures_bundles.py) not available yet")
    by = {str(k).lower(): _file(v) for k, v in dict(tb).items()}
    return {"wNa8o8": by["wna8o8"], "fp16": by["fp16"]}



if __name__ == "__main__":
    write_synthetic()
    print(f"wrote {len(SYNTH)} synthetic results under {FIXTURES}", file=sys.stderr)
