#!/usr/bin/env python3
"""The int8 KV cache against the float32 one, measured in the LiteRT-LM CPU engine (issue 14).

    .venv/bin/python scripts/bench/kv_cache.py --dist DIR --build --bench --write

--build makes a shape-exact random QAT checkpoint of e2b at --width-div (default 4) with
`scripts/make_qat_checkpoint.py --random` (once, in DIR/ckpt), then builds it twice as a user would:
`edgekit build e2b --checkpoint DIR/ckpt --text-only --no-quality --kv-cache float|int8 --output DIR`
(the streamed route: the int8 cache takes the checkpoint's k/v cache scales), each under
``_common.run_measured`` (wall time, process-tree peak RSS).

--bench runs `edgekit bench --device host --bundle <int8 KV> --baseline <float KV>` (cold mode,
one process per run, the harness sampling /proc) at the bundles' cache length, and reads back the
medians: the resident anonymous memory while decoding (max RssAnon inside the decode window), decode
and prefill tok/s.

--write puts the KV-cache bytes (read back from each bundle by `edgekit.bundle.inspect`), the exactness
of the KV scales (the manifests), the engine figures and their ratios into RESULTS.md (section
`kv-cache`). With random weights the agreement figures mean nothing and are not shown; the memory,
bytes and speed are those of the real shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GIB = 2**30
SCHEME = {"float": "wNa8o8-qat", "int8": "wNa8o8-qat-kv8"}


def bundle_of(dist: Path, kv: str) -> Path | None:
    return C.find_bundle(dist, "e2b", SCHEME[kv])


def make_checkpoint(dist: Path, width_div: int) -> Path:
    ckpt = dist / "ckpt"
    if not (ckpt / "config.json").is_file():
        argv = [sys.executable, str(C.REPO / "scripts" / "make_qat_checkpoint.py"), str(ckpt), "--preset", "e2b",
                "--width-div", str(width_div), "--random"]
        C.log("running " + " ".join(argv))
        r = C.run_measured(argv, cwd=C.REPO)
        if r.returncode != 0:
            raise SystemExit(f"error: make_qat_checkpoint failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
    return ckpt


def build(dist: Path, ckpt: Path, kv: str) -> dict:
    argv = C.edgekit_argv("build", "e2b", "--checkpoint", str(ckpt), "--text-only", "--no-quality",
                          "--kv-cache", kv, "--output", str(dist))
    C.log("running " + " ".join(argv))
    commit = C.git_commit()
    r = C.run_measured(argv, interval=0.2, cwd=C.REPO, echo=True)
    rec = {"argv": argv, "returncode": r.returncode, "seconds": round(r.seconds, 1), "peak_rss_bytes": r.peak_rss,
           "date": C.utc_now(), "commit": commit, "stderr_tail": r.stderr.strip().splitlines()[-3:]}
    C.atomic_json(dist / f"build-{kv}.json", rec)
    return rec


def bench(dist: Path, reps: int, warmup: int, prefill: int, decode: int) -> tuple[dict, dict, Path]:
    cand, base = bundle_of(dist, "int8"), bundle_of(dist, "float")
    if cand is None or base is None:
        raise SystemExit(f"error: build both bundles first (--build): none of {SCHEME} missing in {dist}")
    out = dist / "bench"
    argv = C.edgekit_argv("bench", "--device", "host", "--bundle", str(cand), "--baseline", str(base),
                          "--warmup", str(warmup), "--reps", str(reps), "--prefill", str(prefill), "--decode",
                          str(decode), "--no-profile-thresholds", "--json", "--output", str(out))
    C.log("running " + " ".join(argv))
    r = C.run_measured(argv, interval=0.5, cwd=C.REPO)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        raise SystemExit(f"error: bench failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-3:]}")
    folder = Path(data["folder"]) if "folder" in data else max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    return C.medians(data, folder, "candidate"), C.medians(data, folder, "baseline"), folder


def kv_summary(bundle: Path) -> dict:
    from edgekit.bundle.inspect import inspect_bundle

    return inspect_bundle(bundle, with_sha256=False)["tflite"]["tf_lite_prefill_decode"].get("kv_cache") or {}


def rows(dist: Path, mi: dict | None, mf: dict | None) -> tuple[list, list[str]]:
    out, notes = [], []
    bi, bf = bundle_of(dist, "int8"), bundle_of(dist, "float")
    if bi and bf:
        ki, kf = kv_summary(bi), kv_summary(bf)
        out.append(C.Row("e2b/4 QAT: KV-cache bytes (int8 vs float)", ki.get("bytes"), kf.get("bytes"),
                         C.ratio(ki.get("bytes"), kf.get("bytes"))))
        notes.append(f"KV caches: int8 {'/'.join(ki.get('dtypes', []))} x{ki.get('caches')}, float "
                     f"{'/'.join(kf.get('dtypes', []))} x{kf.get('caches')}")
        mi_ = C.read_manifest(bi)
        if mi_ is not None and mi_.qat:
            ex = (mi_.qat.get("exactness") or {})
            out.append(C.Row("e2b/4 QAT: KV-cache scales carried (int8 build)", ex.get("kv_scales_carried"),
                             ex.get("kv_scales_total"), None))
        for kv, b in (("int8", bi), ("float", bf)):
            rec = dist / f"build-{kv}.json"
            if rec.is_file():
                r = json.loads(rec.read_text())
                notes.append(f"{kv} KV build: commit {r.get('commit')}, {r.get('date')}, {r['seconds'] / 60:.1f} min, "
                             f"peak {r['peak_rss_bytes'] / GIB:.2f} GiB, exit {r['returncode']}")
    if mi is not None and mf is not None:
        for k, label in (("decode_anon_mb", "anon while decoding, MB"), ("peak_anon_mb", "peak anon, MB"),
                         ("decode_tps", "decode tok/s"), ("prefill_tps", "prefill tok/s"), ("ttft_ms", "TTFT ms")):
            out.append(C.Row(f"e2b/4 QAT: {label} (int8 vs float KV)", mi.get(k), mf.get(k),
                             C.ratio(mi.get(k), mf.get(k))))
    return out, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", type=Path, required=True)
    ap.add_argument("--width-div", type=int, default=4)
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--bench", action="store_true")
    C.run_options(ap, reps=3, prefill=128, decode=32)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    a.dist.mkdir(parents=True, exist_ok=True)
    if a.build:
        ckpt = make_checkpoint(a.dist, a.width_div)
        for kv in ("float", "int8"):
            rec = build(a.dist, ckpt, kv)
            C.log(f"{kv} KV: exit {rec['returncode']}, {rec['seconds']} s, peak {rec['peak_rss_bytes'] / GIB:.2f} GiB")
    mi = mf = None
    notes: list[str] = []
    medians = a.dist / "bench-medians.json"
    if a.bench:
        mi, mf, folder = bench(a.dist, a.reps, a.warmup, a.prefill, a.decode)
        C.atomic_json(medians, {"int8": mi, "float": mf, "folder": str(folder)})
    if medians.is_file():
        d = json.loads(medians.read_text())
        mi, mf = d["int8"], d["float"]
        notes.append(f"bench result folder: {d['folder']}")
    rs, more = rows(a.dist, mi, mf)
    print(C.table(rs, ("metric", "int8 KV", "float KV", "int8/float")))
    if a.write:
        body = C.section("kv-cache: int8 vs float32 KV cache, e2b width/4 QAT, LiteRT-LM CPU engine", rs,
                         ("metric", "int8 KV", "float KV", "int8/float"), notes=notes + more + [
                             f"bench: edgekit bench --device host, cold mode, {a.reps} reps + {a.warmup} warmup, "
                             f"prefill {a.prefill}, decode {a.decode}; random QAT weights (shapes real, "
                             "agreement not meaningful)"],
                         settings=[f"e2b width/{a.width_div}, text-only, the preset's cache length and prefill"])
        C.update_results("kv-cache", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
