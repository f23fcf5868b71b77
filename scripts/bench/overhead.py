#!/usr/bin/env python3
"""Wall time of `edgekit bench` vs the time the runtime itself reports for the same runs.

    .venv/bin/python scripts/bench/overhead.py [--model e2b] [--reps 3] [--write]
    .venv/bin/python scripts/bench/overhead.py --model tiny           # quick run
    .venv/bin/python scripts/bench/overhead.py --model tiny --device pixel8-standin --mode warm

Runs `edgekit bench --device D --bundle W --baseline F --mode M --cooldown 0` (cool-down
set to 0, so no deliberate sleeps) as a child process and times it from fork to exit.
Stand-in devices (scripts/targets up) are found through their profiles folder. Every
figure is taken with the load average (/proc/loadavg) beside it; nothing runs under nice.
"Runtime time" = sum over every runner process of its init_ms and, over every run in
it (warmups included, they are part of the wall time), prefill_ms + decode_ms, read
from the traces with edgekit.bench.traces (the runner's JSONL or a native binary's log).
Overhead = wall / runtime - 1. The finer split below needs the runner's JSONL
timestamps; for a native binary only the session-level parts are given.

The rest is split, from timestamps the parts already write:
  * session outside the runs: wall - sum of the harness's start..end per run
    (CLI start and imports, bundle sha256 and pushes, pulling traces, records,
    report views); the push lines the session prints are timed too;
  * per run, harness start .. the runner's start record: interpreter start + imports;
  * runner start record .. first run - init_ms: anything before the first run (the
    runner takes the sha256 the session verified: `--sha256`, no hashing);
  * the remainder in the runner: inside runs outside prefill+decode (session set-up,
    tokenisation), after the last run until the runner's end record, and from that
    record (stamped `t`) to the harness's end epoch (process exit + harness teardown).
Bundles: the e2b w4 pair built by bundle_vs_fp16.py (.cache/bench-build/dist-e2b-w4)
or the tiny pair (built when missing).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET = C.target("<=", 5.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="e2b", choices=["e2b", "tiny"])
    ap.add_argument("--width-div", type=int, default=None)
    C.run_options(ap, reps=3)
    ap.add_argument("--backend", choices=["auto", "litert_lm", "interpreter"],
                    help="runner backend passed to edgekit bench (default: the host profile's)")
    ap.add_argument("--device", default="host")
    ap.add_argument("--mode", choices=["cold", "warm"], default="cold")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    wd = a.width_div or (4 if a.model == "e2b" else 1)
    prefill = a.prefill or 128
    decode = a.decode or 64
    work = C.REPO / ".cache" / "bench-build"
    notes: list[str] = []
    dist, cache = work / f"dist-{a.model}-w{wd}", work / f"cache-{a.model}-w{wd}"
    cand = C.find_or_build(a.model, "wNa8o8", wd, dist, cache, notes)
    base = C.find_or_build(a.model, "fp16", wd, dist, cache, notes)

    out = C.REPO / "results" / "bench-scripts"
    argv_b = C.edgekit_argv("bench", "--device", a.device, "--mode", a.mode, "--bundle", str(cand),
                            "--baseline", str(base),
                            "--warmup", str(a.warmup), "--reps", str(a.reps), "--prefill", str(prefill),
                            "--decode", str(decode), "--cooldown", "0", "--no-profile-thresholds", "--json",
                            "--output", str(out))
    if a.backend:
        argv_b += ["--backend", a.backend]
    C.log("timing: edgekit " + " ".join(argv_b[1:]))
    from fidelity import targets_env

    load0 = Path("/proc/loadavg").read_text().split()[0]
    run = C.run_measured(argv_b, cwd=C.REPO, interval=0.5, keep_timeline=False, echo=True, env=targets_env())
    load1 = Path("/proc/loadavg").read_text().split()[0]
    if run.returncode not in (0, 1):
        raise SystemExit(f"error: edgekit bench exited {run.returncode}: {run.stderr.strip()[-600:]}")
    wall = run.seconds
    data = json.loads(run.stdout)
    folder = Path(data["folder"])
    runtime_ms = harness_ms = start_ms = sha_ms = runner_rest_ms = init_total = 0.0
    tail_in_runner_ms = exit_ms = between_in_runner_ms = 0.0
    nruns = 0
    spans: list[tuple[float, float]] = []  # harness start/end, seconds since the bench process started
    sys.path.insert(0, str(C.REPO))
    from edgekit.bench.traces import parse_trace_dir

    dirs: list[str] = []  # one per runner process (warm mode: several run records share one)
    for r in sorted(data["result"]["runs"], key=lambda r: r["order"]):
        if r["trace_dir"] not in dirs:
            dirs.append(r["trace_dir"])
    native = False
    for d in dirs:
        tdir = folder / d
        tr = parse_trace_dir(tdir, native_warmup=a.warmup if a.mode == "warm" else 0)
        h = tr.harness
        if not (tr.iterations and tr.init_ms is not None and h.get("start_epoch_ms") and h.get("end_epoch_ms")):
            raise SystemExit(f"error: incomplete trace in {tdir}")
        nruns += 1
        pd = sum((x.prefill_ms or 0.0) + (x.decode_ms or 0.0) for x in tr.iterations)
        runtime_ms += tr.init_ms + pd
        init_total += tr.init_ms
        h0, h1 = float(h["start_epoch_ms"]), float(h["end_epoch_ms"])
        spans.append((h0 / 1000 - run.t0_epoch, h1 / 1000 - run.t0_epoch))
        harness_ms += h1 - h0
        if tr.source != "runner":  # a native binary's log has no timestamps to split the process's time by
            native = True
            continue
        start, end, its = tr.start, tr.end, tr.iterations  # the runner's records, as edgekit parsed them
        start_ms += start["t"] * 1000 - h0
        first = min(x.t_start for x in its) * 1000
        # start.t .. first run start = sha256 + init_ms + session set-up before run 1
        sha_ms += max(0.0, first - start["t"] * 1000 - tr.init_ms)
        runner_rest_ms += (h1 - h0) - (first - h0) - pd
        if end.get("t"):  # the runner stamps its end record: split its tail from its exit
            last = max(x.t_end for x in its)
            tail_in_runner_ms += end["t"] * 1000 - last * 1000
            exit_ms += h1 - end["t"] * 1000
            between_in_runner_ms += (last - min(x.t_start for x in its)) * 1000 - pd
    runtime_s = runtime_ms / 1000
    overhead = wall / runtime_s - 1
    session_out = wall - harness_ms / 1000
    pushes = [(float(m.group(2)), m.group(1)) for m in re.finditer(r"push (.+?): .*?, ([0-9.]+) s\)", run.stderr)]
    push_s = sum(s for s, _ in pushes)
    t_session = next((t for t, line in run.stderr_lines if line.startswith("bench on ")), None)
    cli_s = t_session if t_session is not None else float("nan")
    setup_s = spans[0][0] - (t_session or 0.0)
    between_s = sum(max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:]))
    tail_s = wall - spans[-1][1]
    rows = [
        C.Row("wall of `edgekit bench` vs runtime-reported time, s (overhead %)", wall, runtime_s, overhead * 100,
              TARGET, unit=" %"),
    ]
    head = ("metric", "edgekit wall", "runtime", "overhead")
    print(C.table(rows, head))
    parts = [
        ("session outside runs", session_out),
        ("  CLI start, imports, sha256 of both bundles until the session's first line", cli_s),
        ("  transport, pushes (sha256 + copy) and runner files until the first run", setup_s),
        ("    of which the pushes, as the session reports them", push_s),
        ("  between runs (pull traces, parse, next argv)", between_s),
        ("  after the last run (records, result.json, Markdown/HTML/plots)", tail_s),
        ("per-run process start + imports until the runner's start record", start_ms / 1000),
        ("runner: sha256 of the bundle + anything before the first run, minus init", sha_ms / 1000),
        ("runner: after the run, outside prefill+decode (exit), + harness teardown", runner_rest_ms / 1000),
        ("  of which inside runs outside prefill+decode (session, tokenizing, stream set-up)",
         between_in_runner_ms / 1000),
        ("  of which after the last run until the end record (BenchmarkInfo, session close)",
         tail_in_runner_ms / 1000),
        ("  of which from the end record to the harness's end (process exit, harness teardown)", exit_ms / 1000),
        ("runtime itself: init + prefill + decode", runtime_s),
    ]
    notes.append(f"device {a.device}, mode {a.mode}: {nruns} runner processes ({a.warmup} warmup + {a.reps} measured "
                 f"per bundle, 2 bundles), cool-down 0 s; engine init {init_total / 1000:.1f} s of the runtime's "
                 f"{runtime_s:.1f} s; load average {load0} before, {load1} after (1 min); not niced")
    for label, s in parts:
        if native and label.startswith(("per-run", "runner", "  of which")):
            notes.append(f"{label}: n/a (a native binary's log carries no timestamps)")
            continue
        notes.append(f"{label}: {s:.2f} s ({s / wall:.1%} of wall)")
    notes.append("overhead = wall / runtime - 1; wall from fork to exit of the `edgekit bench` process; "
                 "split from the harness's start/end epochs, the runner's records and the session's stderr lines")
    for n in notes:
        print("- " + n)
    if a.write:
        body = C.section(f"overhead: `edgekit bench --device {a.device} --mode {a.mode}` wall time vs "
                         f"runtime-reported time ({a.model} w{wd})", rows,
                         head, notes, settings=[f"prefill {prefill}, decode {decode}, warmup {a.warmup}, "
                                                f"reps {a.reps}, cooldown 0, device {a.device}, mode {a.mode}"])
        C.update_results(f"overhead-{a.model}-w{wd}-{a.device}-{a.mode}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
