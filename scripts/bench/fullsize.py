#!/usr/bin/env python3
"""Full-size E2B/E4B text-only: build wNa8o8 and fp16 on this machine, bench them in the engine.

    .venv/bin/python scripts/bench/fullsize.py --model e2b --dist DIR --build      # both builds, measured
    .venv/bin/python scripts/bench/fullsize.py --model e2b --dist DIR --bench --write

--build runs `edgekit build MODEL --random-weights --text-only [--scheme fp16] --prefill P
--cache-length C --output DIST` (the streamed route: auto at full width) under
``_common.run_measured``: wall time, and the peak RSS of the whole process tree sampled
every 0.2 s (and the kernel's per-process high-water marks). The record goes beside the
bundle (``<name>.build.json``). No figure here is extrapolated: the bundles are the
full-size ones.

--bench runs `edgekit bench --device host --bundle W --baseline F` (cold mode: one
process per run, the harness sampling /proc) and reads back medians, the resident
anonymous memory while decoding (max RssAnon inside each run's decode window, as
bundle_vs_fp16.py computes it), and the wNa8o8/fp16 ratios.

--write puts both into scripts/bench/RESULTS.md with the target rows of issue 13. A row this
run did not measure (a scheme not built in DIST, no bench) keeps the figures of the section as
last written, with its build note, and says so: building one scheme never erases the other's.
Each build's engine check (the verify stage's LiteRT-LM CPU engine run, or why it was skipped)
is read from its manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GIB = 2**30
TARGETS = {  # issue 13
    "peak_build_gib": C.target("<=", 20.0),
    "bundle_gb": {"e2b": C.target("<=", 2.0)},
    "anon_gb": {"e2b": C.target("<=", 0.8), "e4b": C.target("<=", 2.0)},
    "decode_ratio": C.target(">=", 2.5),
}


def name_of(model: str, scheme: str) -> str:
    return C.text_bundle_name(model, scheme)


def build(model: str, scheme: str, dist: Path, prefill: int, cache_length: int, extra: list[str],
          memory_limit: int | None = None) -> dict:
    argv = C.edgekit_argv("build", model, "--random-weights", "--text-only", "--scheme", scheme,
                          "--prefill", str(prefill), "--cache-length", str(cache_length),
                          "--output", str(dist), *extra)
    C.log("running " + " ".join(argv) + (f" in a {memory_limit / GIB:g} GiB memory cgroup" if memory_limit else ""))
    commit = C.git_commit()  # the code the build runs: taken before it starts, not when it ends
    group = C.MemoryCgroup(memory_limit) if memory_limit else None
    try:
        r = C.run_measured(group.argv(argv) if group else argv, interval=0.2, cwd=C.REPO, echo=True)
        limit = group.stats() if group else None
    finally:
        if group:
            group.remove()
    rec = {"argv": argv, "returncode": r.returncode, "seconds": round(r.seconds, 1),
           "peak_tree_rss_bytes": r.mem.peak_tree_rss, "peak_tree_anon_bytes": r.mem.peak_tree_anon,
           "peak_single_hwm_bytes": r.mem.peak_single_hwm, "rusage_maxrss_bytes": r.rusage_maxrss,
           "peak_rss_bytes": r.peak_rss, "date": C.utc_now(), "commit": commit,
           "stderr_tail": r.stderr.strip().splitlines()[-3:]}
    if limit:  # what a machine of that size gives the build: file-backed pages reclaimed, anonymous OOM-killed
        rec["memory_cgroup"] = limit
        rec["note"] = (f"in a {limit['limit_bytes'] / GIB:g} GiB memory cgroup: peak charge "
                       f"{(limit['peak_bytes'] or 0) / GIB:.2f} GiB, limit hit {limit['limit_hits']} times, "
                       f"{limit['oom_kills'] or 0} OOM kills")
    out = dist / name_of(model, scheme)
    out.mkdir(parents=True, exist_ok=True)
    C.atomic_json(out.parent / f"{name_of(model, scheme)}.build.json", rec)
    return rec


def read_build(dist: Path, model: str, scheme: str) -> dict | None:
    p = dist / f"{name_of(model, scheme)}.build.json"
    return json.loads(p.read_text()) if p.is_file() else None


def bench(model: str, dist: Path, reps: int, prefill: int, decode: int, warmup: int = 1) -> tuple[dict, dict, Path]:
    w = C.find_bundle(dist, model, "wNa8o8")
    f = C.find_bundle(dist, model, "fp16")
    if w is None:
        raise SystemExit(f"error: no {name_of(model, 'wNa8o8')} in {dist}")
    # without an fp16 build (full E4B fp16 needs more memory than this machine has to run),
    # the candidate is benched alone: its own figures, no ratios
    base = ["--baseline", str(f)] if f is not None else ["--no-baseline"]
    out = dist / "bench"
    argv = C.edgekit_argv("bench", "--device", "host", "--bundle", str(w), *base,
                          "--warmup", str(warmup), "--reps", str(reps), "--prefill", str(prefill), "--decode", str(decode),
                          "--no-profile-thresholds", "--json", "--output", str(out))
    C.log("running " + " ".join(argv))
    r = C.run_measured(argv, interval=0.5, cwd=C.REPO, echo=False)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        raise SystemExit(f"error: bench failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-3:]}")
    folder = Path(data["folder"]) if "folder" in data else max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    return C.medians(data, folder, "candidate"), (C.medians(data, folder, "baseline") if f is not None else None), folder


def rows_for(model: str, dist: Path, mc: dict | None, mb: dict | None) -> list:
    rows = []
    for scheme in ("wNa8o8", "fp16"):
        b = read_build(dist, model, scheme)
        if b is None:
            if scheme == "wNa8o8":  # the target row stays, shown as not measured
                rows.append(C.Row(f"full {model} text-only: peak build RSS, GiB", "not built", "", None,
                                  TARGETS["peak_build_gib"], unit=" GiB"))
            continue
        gib = b["peak_rss_bytes"] / GIB
        label = f"full {model} text-only: peak build RSS, GiB" if scheme == "wNa8o8" else \
            f"full {model} text-only fp16: peak build RSS, GiB"
        rows.append(C.Row(label, f"{b['seconds'] / 60:.1f} min", f"exit {b['returncode']}", round(gib, 2),
                          TARGETS["peak_build_gib"] if b["returncode"] == 0 else None, unit=" GiB"))
        if b.get("peak_tree_anon_bytes"):  # RSS counts mapped files (the engine's float32 weight cache)
            rows.append(C.Row(label.replace("peak build RSS", "peak build anonymous"), "", "",
                              round(b["peak_tree_anon_bytes"] / GIB, 2), None, unit=" GiB"))
    w = C.find_bundle(dist, model, "wNa8o8")
    f = C.find_bundle(dist, model, "fp16")
    fb = f.stat().st_size if f is not None else None
    if w is not None or fb:
        wb = w.stat().st_size if w is not None else None
        rows.append(C.Row(f"full {model} text-only: bundle bytes, GB", f"{wb:,}" if wb else "not built",
                          f"fp16 {fb:,}" if fb else "n/a", round(wb / 1e9, 3) if wb else None,
                          TARGETS["bundle_gb"].get(model), unit=" GB"))
    if mc is None:
        rows.append(C.Row(f"full {model} text-only: anon while decoding, GB", "not measured", "", None,
                          TARGETS["anon_gb"].get(model), unit=" GB"))
    if mc is not None:
        anon = mc.get("decode_anon_mb")
        rows.append(C.Row(f"full {model} text-only: anon while decoding, GB",
                          f"{anon:.0f} MB" if anon else "n/a",
                          f"fp16 {mb['decode_anon_mb']:.0f} MB" if mb and mb.get("decode_anon_mb") else "n/a",
                          round(anon * 2**20 / 1e9, 3) if anon else None, TARGETS["anon_gb"].get(model), unit=" GB"))
        if mb is not None:
            ratio = C.ratio(mc.get("decode_tps"), mb.get("decode_tps"))
            rows.append(C.Row(f"full {model} text-only: decode wNa8o8/fp16", mc.get("decode_tps"), mb.get("decode_tps"),
                              ratio, TARGETS["decode_ratio"]))
            for k, label in (("prefill_tps", "prefill tok/s"), ("ttft_ms", "TTFT ms"), ("peak_file_mb", "peak file-backed MB"),
                             ("peak_pss_mb", "peak PSS MB"), ("peak_anon_mb", "peak anon MB")):
                rows.append(C.Row(f"full {model} text-only: {label} (wNa8o8 vs fp16)", mc.get(k), mb.get(k),
                                  C.ratio(mc.get(k), mb.get(k))))
    return rows


def engine_rows(model: str, dist: Path) -> list:
    """Each build's engine check as its manifest records it (loads and generates: decode tok/s; or skipped),
    and its quality stage against the fp16 sibling (the ppl ratio, or why there is none)."""
    rows = []
    for scheme in ("wNa8o8", "fp16"):
        bundle = C.find_bundle(dist, model, scheme)
        if bundle is None:
            continue
        m = C.read_manifest(bundle)
        if m is None:
            continue
        eng = dict((m.runtime or {}).get("litert_lm") or {})
        if not eng:
            continue
        label = f"full {model} text-only{'' if scheme == 'wNa8o8' else ' fp16'}: engine check at build"
        if eng.get("ok"):
            rows.append(C.Row(label, f"decode {eng.get('decode_tps'):.3g} tok/s", f"init {eng.get('init_s'):.0f} s",
                              None, None, note="loads and generates"))
        else:
            rows.append(C.Row(label, "skipped" if eng.get("skipped") else "failed",
                              str(eng.get("skipped") or eng.get("error"))[:120]))
        q = dict(m.quality or {})
        if q:  # the build's quality stage against its fp16 sibling
            qlabel = f"full {model} text-only: quality at build vs fp16 (ppl ratio)"
            if q.get("ppl_ratio") is not None:
                rows.append(C.Row(qlabel, q.get("method") or "interpreter", f"{q.get('tokens')} tokens",
                                  round(q["ppl_ratio"], 4), None))
            else:
                rows.append(C.Row(qlabel, "not measured", str(q.get("skipped") or "")[:200]))
    return rows


def keep_unmeasured(model: str, rows: list, notes: list[str], body: str | None = None) -> tuple[list, list[str]]:
    """Rows with no figure from this run take the figures RESULTS.md's section already has (``body``, read
    from RESULTS.md when None), and the notes of builds and benches this run did not redo are carried over."""
    body = C.section_body(f"fullsize-{model}") if body is None else body
    if not body:
        return rows, notes
    old = C.table_cells(body)
    date = re.search(r"- date: (\S+ \S+)", body)
    when = date.group(1) if date else "an earlier run"
    out = []
    for r in rows:
        prev = old.get(r.name)
        if r.value is None and str(r.a) in ("not built", "not measured") and prev and prev[3] != "n/a":
            num = re.match(r"[-\d.,]+", prev[3])
            value = float(num.group(0).replace(",", "")) if num else None
            b = r.b if r.b not in ("", None, "n/a") else prev[2]  # a figure of the other scheme stays new
            r = C.Row(r.name, prev[1], b, value, r.target, unit=r.unit, note=f"kept from {when}")
        out.append(r)
    have = {r.name for r in out}
    for name, cells in old.items():  # rows of a scheme this run has nothing for at all
        if name not in have and cells[3] != "n/a":
            num = re.match(r"[-\d.,]+", cells[3])
            unit = cells[3][num.end():] if num else ""
            out.append(C.Row(name, cells[1], cells[2], float(num.group(0).replace(",", "")) if num else None,
                             _target_of(model, name), unit=unit or "x",
                             note=f"kept from {when}" if cells[4] else ""))
    mine = {n.split(":")[0] for n in notes}
    carried = [ln[2:] for ln in body.splitlines() if ln.startswith("- ") and ln[2:].split(":")[0] not in mine
               and ln[2:].split(":")[0] in ("wNa8o8 build", "fp16 build", "bench result folder")]
    return out, notes + [f"{c} (kept from {when})" for c in carried]


def _target_of(model: str, name: str):
    if "peak build RSS" in name:
        return TARGETS["peak_build_gib"]
    if "bundle bytes" in name:
        return TARGETS["bundle_gb"].get(model)
    if "anon while decoding" in name:
        return TARGETS["anon_gb"].get(model)
    if name.endswith("decode wNa8o8/fp16"):
        return TARGETS["decode_ratio"]
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="e2b", choices=["e2b", "e4b"])
    ap.add_argument("--dist", type=Path, required=True)
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--schemes", default="wNa8o8,fp16")
    ap.add_argument("--bench", action="store_true")
    C.run_options(ap, reps=3, prefill=128, decode=32)
    ap.add_argument("--cache-length", type=int, default=4096)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--memory-limit", type=float, metavar="GIB",
                    help="run each build in a memory cgroup of this many GiB (root): as a machine of that size would")
    a = ap.parse_args()
    a.dist.mkdir(parents=True, exist_ok=True)
    if a.build:
        for scheme in a.schemes.split(","):
            rec = build(a.model, scheme, a.dist, a.prefill, a.cache_length, [],
                        int(a.memory_limit * GIB) if a.memory_limit else None)
            C.log(f"{scheme}: exit {rec['returncode']}, {rec['seconds']} s, peak {rec['peak_rss_bytes'] / GIB:.2f} GiB")
    mc = mb = None
    notes = []
    if a.bench:
        mc, mb, folder = bench(a.model, a.dist, a.reps, a.prefill, a.decode, a.warmup)
        notes.append(f"bench result folder: {folder}")
        C.atomic_json(a.dist / f"{a.model}-bench-medians.json", {"wNa8o8": mc, "fp16": mb, "folder": str(folder)})
    elif (a.dist / f"{a.model}-bench-medians.json").is_file():
        d = json.loads((a.dist / f"{a.model}-bench-medians.json").read_text())
        mc, mb = d["wNa8o8"], d["fp16"]
        notes.append(f"bench result folder: {d['folder']}")
    rows = rows_for(a.model, a.dist, mc, mb) + engine_rows(a.model, a.dist)
    for scheme in ("wNa8o8", "fp16"):
        b = read_build(a.dist, a.model, scheme)
        if b is not None:
            anon = b.get("peak_tree_anon_bytes")
            notes.append(f"{scheme} build: commit {b.get('commit')}, {b.get('date')}, "
                         f"{b['seconds'] / 60:.1f} min, peak {b['peak_rss_bytes'] / GIB:.2f} GiB"
                         + (f" ({anon / GIB:.2f} GiB anonymous)" if anon else "")
                         + (f" ({b['note']})" if b.get("note") else ""))
    if a.write:
        rows, notes = keep_unmeasured(a.model, rows, notes)
    print(C.table(rows, ("metric", "wNa8o8 / time", "fp16 / exit", "value")))
    if a.write:
        body = C.section(f"fullsize-{a.model}: full-size {a.model} text-only, built and run here (no extrapolation)",
                         rows, ("metric", "wNa8o8 / time", "fp16 / exit", "value"), notes=notes + [
                             "builds: the streamed route (edgekit/builder/streamed.py): stand-in export with shared "
                             "decoder weights, activation ranges from the checkpoint's text forward, quantized "
                             "stand-in, checkpoint weights written in; peak RSS = whole process tree, sampled 0.2 s",
                             f"bench: edgekit bench --device host, cold mode, {a.reps} reps + {a.warmup} warmup, prefill "
                             f"{a.prefill}, decode {a.decode}; the machine was shared with other jobs (load average "
                             f"{os.getloadavg()[0]:.1f} when written)"],
                         settings=[f"cache length {a.cache_length}, prefill signature {a.prefill}"])
        C.update_results(f"fullsize-{a.model}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
