#!/usr/bin/env python3
"""Peak RSS (whole process tree) of `edgekit build e2b --random-weights --text-only` per width.

    .venv/bin/python scripts/bench/build_memory.py [--widths 8,4] [--try-2] [--write]
    .venv/bin/python scripts/bench/build_memory.py --model tiny --widths 1     # quick check

For each --width-div K: a cold build (the export cache of this benchmark's own cache
folder is emptied first; the random checkpoint is reused once made) is run under
``nice``, its process tree is sampled from /proc every 0.1 s (builder + export child +
verify child), and the peak is divided by the text parameter count. A straight line
through (params, peak) of the measured widths is extrapolated to full-size E2B
(width-div 1) and compared with the 20 GiB target. The stage at the peak is the last
progress line the build printed before the peak sample, and the process holding most
memory then is named. Width 2 is tried only with --try-2 and only if the
extrapolated peak fits in the available memory (minus 2 GiB).

Only one big build runs at a time: the script waits while another e2b build/export runs.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET_GIB = 20.0


def text_params(model: str, wd: int) -> int:
    sys.path.insert(0, str(C.REPO))
    from edgekit.models.presets import get_preset

    return int(get_preset(model).text_param_counts(wd)["text"])


class ExportLogProbe:
    """Follows the export child's log (``<partial>/export.log``): (t, last line) whenever it changes.

    The build's own progress lines only say "export"; litert-torch's log tells which
    phase of the export (model load, torch.export, conversion, quantization,
    serialization, bundling) runs at a given time, so the peak can be placed inside it.
    """

    def __init__(self, root_pid: int, t0: float, interval: float = 0.5):
        import threading

        self.root, self.t0, self.interval = root_pid, t0, interval
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, daemon=True)
        self._th.start()

    def _log_path(self) -> Path | None:
        for pid in C.tree_pids(self.root):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [x.decode(errors="replace") for x in argv]
            if "edgekit.builder.export" in args and "--output-dir" in args:
                return Path(args[args.index("--output-dir") + 1]).parent / "export.log"
        return None

    def _loop(self) -> None:
        import time

        last = None
        while not self._stop.is_set():
            p = self._log_path()
            if p is not None:
                try:
                    with open(p, "rb") as f:
                        f.seek(max(0, p.stat().st_size - 4096))
                        tail = f.read().decode(errors="replace")
                    parts = [x.strip() for x in tail.replace("\r", "\n").split("\n") if x.strip()]
                    line = parts[-1][:200] if parts else ""
                    if line and line != last:
                        self.lines.append((time.monotonic() - self.t0, line))
                        last = line
                except OSError:
                    pass
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._th.join(timeout=5)

    def line_before(self, t: float) -> str:
        out = ""
        for ts, line in self.lines:
            if ts > t:
                break
            out = line
        return out


def measure(model: str, scheme: str, wd: int, work: Path, keep_checkpoint: bool) -> dict:
    cache = work / f"cache-{model}-w{wd}"
    out = work / f"dist-{model}-w{wd}"
    shutil.rmtree(cache / "exports", ignore_errors=True)
    if not keep_checkpoint:
        shutil.rmtree(cache / "checkpoints", ignore_errors=True)
    # only this scheme's folder: an fp16 sibling built just before stays, so a wNa8o8 build then
    # runs its quality stage against it (as `edgekit build --scheme fp16` then `edgekit build` do)
    shutil.rmtree(out / C.text_bundle_name(model, scheme), ignore_errors=True)
    argv, how = C.build_argv(model, scheme, wd, out)
    env = dict(os.environ, EDGEKIT_CACHE=str(cache))
    C.log(f"build {model} --width-div {wd} --scheme {scheme} ({how}), cache {cache}")
    probes: list[ExportLogProbe] = []

    def probe(pid: int, t0: float) -> ExportLogProbe:
        probes.append(ExportLogProbe(pid, t0))
        return probes[-1]

    run = C.run_measured(argv, cwd=C.REPO, env=env, nice=5, interval=0.1, echo=True, watchers=[probe])
    C.log(f"build exit {run.returncode} in {run.seconds:.0f} s: peak tree RSS {run.peak_rss / C.GIB:.2f} GiB "
          f"(sampled {run.mem.peak_tree_rss / C.GIB:.2f}, single-process HWM {run.mem.peak_single_hwm / C.GIB:.2f})")
    if run.returncode != 0:
        tail = "".join(run.stderr.splitlines(True)[-5:])
        raise SystemExit(f"error: build of {model} w{wd} failed (exit {run.returncode}):\n{tail}")
    peak_t, peak_cmd = 0.0, ""
    for t, rss, cmd in run.mem.timeline:
        if rss == run.mem.peak_tree_rss:
            peak_t, peak_cmd = t, cmd
            break
    bundle = C.find_bundle(out, model, scheme)
    man = C.read_manifest(bundle) if bundle else None
    b = (man.build if man else None) or {}
    params = text_params(model, wd)
    return {
        "model": model, "width_div": wd, "scheme": scheme, "params": params, "seconds": round(run.seconds, 1),
        "peak_tree_rss": run.peak_rss, "peak_sampled_tree_rss": run.mem.peak_tree_rss,
        "peak_single_hwm": run.mem.peak_single_hwm, "samples": run.mem.samples,
        "bytes_per_param": run.peak_rss / params,
        "peak_at_s": peak_t, "peak_stage": run.line_before(peak_t), "peak_process": peak_cmd,
        "peak_export_log_line": probes[0].line_before(peak_t) if probes else "",
        "export_log": probes[0].lines if probes else [],
        "manifest_export_peak_rss": (b.get("export") or {}).get("peak_rss_bytes"),
        "manifest_builder_peak_rss": b.get("builder_peak_rss_bytes"),
        "stages_s": b.get("stages_s"), "bundle": str(bundle) if bundle else None,
        # the build's own estimate before it started (edgekit.builder.pipeline.estimate), per stage
        "estimate_peak_rss": (b.get("estimate") or {}).get("peak_rss_bytes"),
        "estimate_stage": (b.get("estimate") or {}).get("peak_stage"),
        "estimate_stages": (b.get("estimate") or {}).get("stages"),
        "quality_ran": bool(man.quality if man else None),
        "bundle_bytes": bundle.stat().st_size if bundle else None, "how": how,
        "timeline": run.mem.timeline[:: max(1, len(run.mem.timeline) // 20000)],
        "export_sections": export_sections(cache),
    }


def export_sections(cache: Path) -> dict[str, int]:
    """Section sizes (bytes) of the float32 export the build left in its cache."""
    sys.path.insert(0, str(C.REPO))
    from edgekit.runtime.litertlm_file import read_header

    for f in sorted((cache / "exports").glob("*/model.litertlm")):
        return {s.name: s.size for s in read_header(f).sections if s.name.startswith("tf_lite_")}
    return {}


PHASES = (  # (label, section, first log line of the phase, log line that ends it)
    ("prefill/decode graphs", "tf_lite_prefill_decode", r"Torch Export: prefill_\d", "Export text prefill-decode model"),
    ("per-layer embedder", "tf_lite_per_layer_embedder", "Torch Export: decode_per_layer_embedder",
     "Export per_layer_embedder model"),
)


def phase_profile(r: dict) -> list[dict]:
    """RSS rise of the build's tree during each export phase, against that section's float32 bytes."""
    log, tl = r.get("export_log") or [], r.get("timeline") or []
    out = []
    for label, sec, first, last in PHASES:
        t0 = next((t for t, line in log if re.search(first, line)), None)
        t1 = next((t for t, line in log if last in line and "DONE" in line), None)
        nbytes = (r.get("export_sections") or {}).get(sec)
        if t0 is None or t1 is None or not tl:
            continue
        before = [rss for t, rss, _ in tl if t <= t0]
        during = [rss for t, rss, _ in tl if t0 <= t <= t1]
        if not before or not during:
            continue
        rise = max(during) - before[-1]
        out.append({"phase": label, "section": sec, "start_rss": before[-1], "max_rss": max(during), "rise": rise,
                    "section_bytes": nbytes, "rise_per_byte": rise / nbytes if nbytes else None,
                    "seconds": t1 - t0})
    return out


def full_section_bytes(model: str) -> dict[str, int]:
    """float32 bytes of each section at width-div 1, from the preset's parameter counts."""
    sys.path.insert(0, str(C.REPO))
    from edgekit.models.presets import get_preset

    c = get_preset(model).text_param_counts(1)
    return {"tf_lite_prefill_decode": 4 * (c["decoder"] + c["embedding"] + c["ple_projection"]),
            "tf_lite_per_layer_embedder": 4 * c["ple"], "tf_lite_embedder": 4 * c["embedding"]}


def fit(points: list[tuple[int, int]]) -> tuple[float, float] | None:
    """Least-squares line peak = a + b * params; None with fewer than two widths (a line through one
    point and the origin says nothing about full size, which scripts/bench/fullsize.py measures)."""
    if len({p for p, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(p for p, _ in points) / n
    my = sum(m for _, m in points) / n
    sxx = sum((p - mx) ** 2 for p, _ in points)
    b = sum((p - mx) * (m - my) for p, m in points) / sxx
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="e2b", choices=["e2b", "tiny"])
    ap.add_argument("--widths", default=None, help="comma-separated width divisors (default e2b: 8,4; tiny: 1)")
    ap.add_argument("--scheme", default="wNa8o8",
                    help="comma-separated schemes, built in this order per width (fp16,wNa8o8: the wNa8o8 "
                         "build then runs its quality stage against the fp16 sibling, as by default)")
    ap.add_argument("--try-2", dest="try2", action="store_true", help="also width-div 2 if the estimate fits")
    ap.add_argument("--work", type=Path, default=C.REPO / ".cache" / "bench-build")
    ap.add_argument("--fresh-checkpoint", action="store_true", help="regenerate the random checkpoint too")
    ap.add_argument("--write", action="store_true", help="update scripts/bench/RESULTS.md")
    ap.add_argument("--json", type=Path, help="also write the raw figures (with RSS timelines) here")
    ap.add_argument("--from-json", type=Path,
                    help="report figures an earlier run of this script wrote with --json instead of measuring")
    a = ap.parse_args(argv)
    widths = [int(x) for x in (a.widths or ("8,4" if a.model == "e2b" else "1")).split(",")]
    a.work.mkdir(parents=True, exist_ok=True)

    results = []
    measured_at = C.utc_now()
    if a.from_json:
        import datetime as dt

        results = json.loads(a.from_json.read_text())
        widths = []
        measured_at = dt.datetime.fromtimestamp(a.from_json.stat().st_mtime, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%SZ")
    for wd in widths:
        if a.model == "e2b":
            C.wait_for_quiet_machine()
        for scheme in a.scheme.split(","):
            results.append(measure(a.model, scheme, wd, a.work, not a.fresh_checkpoint))
            r = results[-1]
            C.log(f"w{wd} {scheme}: {r['params']:,} params, peak {r['peak_tree_rss'] / C.GIB:.2f} GiB "
                  f"({r['bytes_per_param']:.2f} B/param) in {r['seconds']:.0f} s; at peak: {r['peak_stage']!r}")

    line = fit([(r["params"], r["peak_tree_rss"]) for r in results if "params" in r])
    if a.try2 and a.model == "e2b" and 2 not in widths and line is not None:
        a0, b0 = line
        est2 = a0 + b0 * text_params("e2b", 2)
        avail = C.mem_available()
        if est2 < avail - 2 * C.GIB:
            C.wait_for_quiet_machine(need_bytes=int(est2 + 2 * C.GIB))
            results.append(measure(a.model, a.scheme, 2, a.work, not a.fresh_checkpoint))
            line = fit([(r["params"], r["peak_tree_rss"]) for r in results if "params" in r])
        else:
            C.log(f"width-div 2 skipped: estimated peak {est2 / C.GIB:.1f} GiB > available "
                  f"{avail / C.GIB:.1f} GiB - 2 GiB")
            results.append({"skipped_w2": True, "estimate": est2, "available": avail})

    measured = [r for r in results if "params" in r]
    full = text_params(a.model, 1)
    est_rows = []
    for r in measured:  # the build's estimate against its measured tree peak (issue 13: within 15%)
        if r.get("estimate_peak_rss"):
            est_rows.append(C.Row(
                f"w{r['width_div']} {r.get('scheme', a.scheme)}: estimate / measured peak RSS"
                + (" (with quality stage)" if r.get("quality_ran") else ""),
                f"{r['estimate_peak_rss'] / C.GIB:.2f} GiB at {r.get('estimate_stage') or '?'}",
                f"{r['peak_tree_rss'] / C.GIB:.2f} GiB", C.ratio(r["estimate_peak_rss"], r["peak_tree_rss"]),
                C.target(C.WITHIN, 0.15)))
    rows = []
    for r in measured:
        rows.append(C.Row(f"w{r['width_div']} {r.get('scheme', a.scheme)}: peak RSS of the build's process tree, GiB", f"{r['peak_tree_rss'] / C.GIB:.2f}",
                          f"{r['params'] / 1e6:.0f} M", r["bytes_per_param"], None, unit=" B/param"))
    rows.extend(est_rows)
    notes = []
    if line is not None:
        a0, b0 = line
        rows.append(C.Row(f"full {a.model} text-only ({full / 1e9:.2f} B params), extrapolated peak, GiB",
                          f"{a0 / C.GIB:.2f} GiB + {b0:.2f} B/param", f"{full / 1e6:.0f} M", (a0 + b0 * full) / C.GIB,
                          C.target("<=", TARGET_GIB), unit=" GiB"))
    else:
        notes.append("one width measured: no extrapolation to full size (scripts/bench/fullsize.py builds and "
                     "measures full size directly)")
    # each stage's own peak (the manifest's: export child's wait4 rusage; builder's getrusage), extrapolated alike
    for key, label in (("manifest_export_peak_rss", "export child (litert-torch, float32)"),
                       ("manifest_builder_peak_rss", "builder process (calibrate, quantize, verify)")):
        pts = [(r["params"], r[key]) for r in measured if r.get(key)]
        if len(pts) == len(measured) and fit(pts) is not None:
            sa, sb = fit(pts)
            per = "; ".join(f"w{r['width_div']} {r[key] / C.GIB:.2f} GiB" for r in measured)
            notes.append(f"{label}: {per} -> full size {(sa + sb * full) / C.GIB:.1f} GiB "
                         f"({sa / C.GIB:.2f} GiB + {sb:.2f} B/param)")
    if a.model == "e2b":
        p2 = text_params("e2b", 2)
        if line is not None and not any(r.get("width_div") == 2 for r in measured):
            a0, b0 = line
            notes.append(f"width-div 2 ({p2 / 1e9:.2f} B params): estimated {(a0 + b0 * p2) / C.GIB:.1f} GiB from "
                         f"the same line, against {C.mem_available() / C.GIB:.1f} GiB available now (shared machine)"
                         + ("" if a.try2 else "; not tried (no --try-2)"))
    fullsec = full_section_bytes(a.model)
    for r in measured:
        for ph in phase_profile(r):
            if not ph["section_bytes"]:
                continue
            proj = ph["start_rss"] + ph["rise_per_byte"] * fullsec[ph["section"]]
            notes.append(
                f"w{r['width_div']} export phase '{ph['phase']}' ({ph['seconds']:.0f} s): tree RSS "
                f"{ph['start_rss'] / C.GIB:.2f} -> {ph['max_rss'] / C.GIB:.2f} GiB, a rise of {ph['rise'] / C.GIB:.2f} GiB "
                f"= {ph['rise_per_byte']:.1f}x the section's float32 bytes ({ph['section_bytes'] / C.GIB:.2f} GiB); "
                f"at full size that section is {fullsec[ph['section']] / C.GIB:.1f} GiB -> this phase alone "
                f"~{proj / C.GIB:.0f} GiB")
    by_phase: dict[str, list[dict]] = {}
    for r in measured:
        for ph in phase_profile(r):
            if ph["section_bytes"]:
                by_phase.setdefault(ph["phase"], []).append(ph)
    for label, phs in by_phase.items():
        if len(phs) >= 2:
            lo, hi = min(phs, key=lambda p: p["section_bytes"]), max(phs, key=lambda p: p["section_bytes"])
            if hi["section_bytes"] > lo["section_bytes"] and hi["rise"] > lo["rise"]:
                k = (hi["rise"] - lo["rise"]) / (hi["section_bytes"] - lo["section_bytes"])
                proj = hi["start_rss"] + hi["rise"] + k * (fullsec[hi["section"]] - hi["section_bytes"])
                notes.append(f"export phase '{label}' between widths: {k:.1f} GiB of RSS per GiB of section growth "
                             f"-> at full size ~{proj / C.GIB:.0f} GiB in this phase")
    for r in measured:
        st = r.get("stages_s") or {}
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in st.items()) if st else "n/a"
        notes.append(
            f"w{r['width_div']}: {r['seconds']:.0f} s; peak at {r['peak_at_s']:.0f} s during "
            f"`{r['peak_stage'][:100]}` in `{r['peak_process'][:90]}`"
            + (f" (export log then: `{r['peak_export_log_line'][:160]}`)" if r.get("peak_export_log_line") else "")
            + f"; stages: {stages}")
    for r in results:
        if r.get("skipped_w2"):
            notes.append(f"width-div 2 skipped: estimated {r['estimate'] / C.GIB:.1f} GiB > "
                         f"{r['available'] / C.GIB:.1f} GiB available - 2 GiB margin")
    notes.append("Peak = max over 0.1 s samples of the summed VmRSS of the build's whole process tree "
                 "(and at least any single process's VmHWM). Extrapolation: least-squares line through "
                 "(text params, peak) of the measured widths, evaluated at the full model's text params.")
    if a.from_json:
        notes.append(f"figures measured by this script at {measured_at} (--json {a.from_json.name}), "
                     f"rendered with --from-json")
    print(C.table(rows, ("width", "peak", "text params", "value")))
    hows = list(dict.fromkeys(r["how"] for r in measured))  # the commands as run, in order
    schemes = ",".join(dict.fromkeys(r.get("scheme", a.scheme) for r in measured)) or a.scheme
    for n in notes:
        print("- " + n)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    if a.write:
        body = C.section(f"build_memory: peak RSS of `edgekit build {a.model} --random-weights --text-only`",
                         rows, ("width", "peak", "text params", "value"), notes,
                         settings=[*(f"build command: {h}" for h in hows),
                                   f"schemes {schemes} (in this order), cold export cache, nice 5"])
        C.update_results("build_memory" + ("" if a.model == "e2b" else f"-{a.model}"), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
