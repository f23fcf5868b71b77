#!/usr/bin/env python3
"""edgekit bench's figures vs the runtime's own benchmark (`litert-lm benchmark`), per device and bench mode.

    .venv/bin/python scripts/bench/fidelity.py --model tiny [--devices host,rpi5-standin,pixel8-standin] [--write]
    .venv/bin/python scripts/bench/fidelity.py --model e2b            # e2b width/4 (built when missing, ~10 min)

For each round (``--rounds``, default 3), device and mode, edgekit's bench and the
runtime's benchmark run right next to each other (which goes first alternates), so both
see the same load:
  * `edgekit bench --device D --bundle W --baseline F --mode M --warmup 1 --reps R
    --prefill P --decode D --threads T --backend litert_lm` for M = cold and warm; edgekit's
    figure = the median of the measured runs (what `edgekit bench` reports);
  * the runtime's own benchmark on this machine, for both bundles: for cold mode
    `litert-lm benchmark B -p P -d D --runs R --backend cpu --cpu-thread-count T --cache disk
    --ringbuffers-local-attention false` (0.18.1: one warmup, then a NEW engine for every
    run in one process, the mean of the runs: every run is the first generation after a
    load); for warm mode the same C API calls as litert_lm.Benchmark.run with ONE engine
    for the warmup and all runs (what litert_lm_main --num_iterations and the CLI's 0.19
    nightly do), the mean of the runs.
The stand-ins (scripts/targets) run on this machine too, so the same reference serves them.

Same definitions on both sides (edgekit/runtime/runner.py, LiteRT-LM's BenchmarkInfo):
prefill tok/s = P / the engine's prefill turn; decode tok/s = D / the engine's decode turn;
TTFT = the first prefill turn + the decode turn / D (BenchmarkInfo::GetTimeToFirstToken;
engine init, tokenizing and Python excluded). KV cache size: both sides leave it to the
engine's default for P (the CLI computes the same value); ring buffers off on both.

Targets (issue 12): prefill, decode and TTFT of each bundle within 5% of the runtime's;
the wNa8o8/fp16 decode ratio within 3% of the runtime's ratio; CV of edgekit's decode
over R runs <= 3% on host (the largest of the two bundles, median over rounds).
Every round's load average (/proc/loadavg, 1 min) is recorded beside its figures: the
machine is shared, and nothing measured here runs under `nice`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WITHIN5 = C.target("within", 0.05)
WITHIN3 = C.target("within", 0.03)
CV_TARGET = C.target("<=", 0.03)
ROLES = {"candidate": "wNa8o8", "baseline": "fp16"}
KEYS = (("prefill_tps", "prefill tok/s"), ("decode_tps", "decode tok/s"), ("ttft_ms", "TTFT ms"))


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def targets_env() -> dict:
    """EDGEKIT_PROFILES with the stand-ins' profiles (scripts/targets up writes them)."""
    state = C.REPO / ".targets" / "state.json"
    env = dict(os.environ)
    if state.is_file():
        prof = json.loads(state.read_text()).get("profiles_dir")
        if prof:
            env["EDGEKIT_PROFILES"] = prof + (os.pathsep + env["EDGEKIT_PROFILES"] if env.get("EDGEKIT_PROFILES") else "")
    return env


def edgekit_bench(device: str, bundles: dict, mode: str, reps: int, prefill: int, decode: int, threads: int,
                  out: Path, env: dict) -> tuple[dict, str]:
    argv = C.edgekit_argv("bench", "--device", device, "--bundle", str(bundles["wNa8o8"]), "--baseline",
                          str(bundles["fp16"]), "--mode", mode, "--warmup", "1", "--reps", str(reps), "--prefill",
                          str(prefill), "--decode", str(decode), "--threads", str(threads), "--backend", "litert_lm",
                          "--no-profile-thresholds", "--json", "--output", str(out))
    C.log(f"running: edgekit bench --device {device} --mode {mode} (reps {reps})")
    p = subprocess.run(argv, cwd=C.REPO, capture_output=True, text=True, env=env)
    if p.returncode not in (0, 1):
        raise SystemExit(f"error: edgekit bench --device {device} --mode {mode} exited {p.returncode}: "
                         f"{p.stderr.strip()[-800:]}")
    data = json.loads(p.stdout)
    res = {}
    for role, scheme in ROLES.items():
        runs = [r for r in data["result"]["runs"] if r["role"] == role and r["phase"] == "measure"
                and r.get("status", "ok") == "ok"]
        res[scheme] = {k: [r["metrics"].get(k) for r in runs if r["metrics"].get(k) is not None] for k, _ in KEYS}
    return res, data["folder"]


def litert_lm_benchmark(bundle: Path, prefill: int, decode: int, runs: int, threads: int) -> dict:
    argv = [str(C.VENV_BIN / "litert-lm"), "benchmark", str(bundle), "-p", str(prefill), "-d", str(decode),
            "--runs", str(runs), "--backend", "cpu", "--cache", "disk", "--ringbuffers-local-attention", "false",
            "--cpu-thread-count", str(threads)]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=C.REPO)
    text = p.stdout + "\n" + p.stderr

    def grab(label: str) -> float | None:
        m = re.search(label + r"\s*:\s*([0-9.]+)", text)
        return float(m.group(1)) if m else None

    ttft = grab("Time to first token")
    res = {"prefill_tps": grab("Prefill speed"), "decode_tps": grab("Decode speed"),
           "ttft_ms": None if ttft is None else ttft * 1000.0}
    if res["decode_tps"] is None or res["prefill_tps"] is None:  # that CLI exits 0 on errors: parse, never trust
        last = [ln for ln in text.splitlines() if ln.strip()][-3:]
        raise SystemExit(f"error: litert-lm benchmark gave no figures for {bundle.name}: {' / '.join(last)[:400]}")
    return res


# The warm reference: exactly the C API calls of litert_lm.Benchmark.run (litert-lm-api 0.18.1:
# engine settings in benchmark mode with the prompt and decode lengths, generate_content,
# BenchmarkInfo), but ONE engine for the warmup and every run, as litert_lm_main
# --num_iterations does and as the CLI's 0.19 nightly does. Run in a child process.
_WARM_REF = r"""
import ctypes, json, sys
import litert_lm
from litert_lm import interfaces
from litert_lm._ffi import _get_lib, InputDataType
bundle, prefill, decode, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lib = _get_lib()
st = lib.litert_lm_engine_settings_create(bundle, "cpu", None, None)
lib.litert_lm_engine_settings_enable_benchmark(st)
lib.litert_lm_engine_settings_set_num_threads(st, threads)
lib.litert_lm_engine_settings_set_max_num_tokens(st, ((prefill + 1023) // 4096 + 1) * 4096)
lib.litert_lm_engine_settings_set_num_prefill_tokens(st, prefill)
lib.litert_lm_engine_settings_set_num_decode_tokens(st, decode)
lib.litert_lm_engine_settings_set_cache_dir(st, "")
lib.litert_lm_engine_settings_set_use_ringbuffers_local_attention(st, False)
eng = lib.litert_lm_engine_create(st)
lib.litert_lm_engine_settings_delete(st)
assert eng, "engine"
out = []
for i in range(runs + 1):
    ses = lib.litert_lm_engine_create_session(eng, None)
    # litert_lm.Benchmark's prompt (padded/truncated to exactly `prefill` tokens by the engine's benchmark mode)
    fields = getattr(interfaces.AbstractBenchmark, "__dataclass_fields__", {})
    p = (fields["prompt"].default if "prompt" in fields else "How are you").encode()
    inp = lib.litert_lm_input_data_create(InputDataType.TEXT, p, len(p))
    arr = (ctypes.c_void_p * 1)(inp)
    r = lib.litert_lm_session_generate_content(ses, arr, 1)
    if r:
        lib.litert_lm_responses_delete(r)
    lib.litert_lm_input_data_delete(inp)
    ip = lib.litert_lm_session_get_benchmark_info(ses)
    info = interfaces.create_benchmark_info(lib, ip)
    lib.litert_lm_benchmark_info_delete(ip)
    lib.litert_lm_session_delete(ses)
    if i:
        out.append({"prefill_tps": info.last_prefill_tokens_per_second, "decode_tps": info.last_decode_tokens_per_second,
                    "ttft_ms": info.time_to_first_token_in_second * 1000.0,
                    "tokens": [info.last_prefill_token_count, info.last_decode_token_count]})
print(json.dumps(out))
"""


def warm_reference(bundle: Path, prefill: int, decode: int, runs: int, threads: int) -> dict:
    p = subprocess.run([str(C.VENV_BIN / "python"), "-c", _WARM_REF, str(bundle), str(prefill), str(decode),
                        str(runs), str(threads)], capture_output=True, text=True, cwd=C.REPO)
    try:
        recs = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"error: warm reference failed on {bundle.name}: {p.stderr.strip()[-400:]}")
    if any(tuple(r["tokens"]) != (prefill, decode) for r in recs):
        raise SystemExit(f"error: warm reference ran other token counts: {[r['tokens'] for r in recs]}")
    return {k: C.mean([r[k] for r in recs]) for k, _ in KEYS}


# Where the old gap came from, each piece timed apart (--sources).
_CALLBACK_COST = r"""
import json, sys
from edgekit.runtime.runner import LiteRtLmBackend
bundle, prefill, decode, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
plain = LiteRtLmBackend(bundle, 2, None, token_times=False)
streamed = LiteRtLmBackend.__new__(LiteRtLmBackend)
streamed.__dict__.update(plain.__dict__)
streamed.token_times = True  # the same engine, decoded through the stream callback
for b in (plain, streamed, plain, streamed):
    b.run_once(prefill, decode)
out = []
for i in range(n):
    pair = {}
    for name, b in ((("plain", plain), ("streamed", streamed)) if i % 2 == 0 else (("streamed", streamed), ("plain", plain))):
        r = b.run_once(prefill, decode)
        pair[name] = {"engine_decode_tps": r["engine_decode_tps"], "engine_ttft_ms": r["engine_ttft_ms"],
                      "old_ttft_ms": r.get("ttft_wall_ms")}
    out.append(pair)
print(json.dumps(out))
"""


def sampler_cost(harness_text: str, shell: list[str], seconds: float = 4.0) -> tuple[float, int]:
    """CPU time the harness itself spends (% of one core) sampling a `sleep` for ``seconds``, and its samples."""
    import resource
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        h = Path(tmp) / "harness.sh"
        h.write_text(harness_text)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        subprocess.run([*shell, str(h), "-o", str(Path(tmp) / "o"), "-i", "50", "--", "sleep", str(seconds)],
                       check=True)
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        n = len((Path(tmp) / "o" / "mem.tsv").read_text().splitlines()) - 1
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return cpu / wall, n


def sources(a, bundles: dict, wd: int) -> int:
    rows: list[C.Row] = []
    notes = [f"load average at the start: {loadavg()}"]
    old = subprocess.run(["git", "-C", str(C.REPO), "show", f"{OLD_HARNESS_COMMIT}:android_harness/harness.sh"],
                         capture_output=True, text=True, check=True).stdout
    new = (C.REPO / "android_harness" / "harness.sh").read_text()
    for label, text, shell in (("before (harness at " + OLD_HARNESS_COMMIT + "), dash", old, ["dash"]),
                               ("before, mksh (Android's shell)", old, ["mksh"]),
                               ("now, sh (dash, re-executed under mksh)", new, ["sh"]),
                               ("now, mksh", new, ["mksh"])):
        la = loadavg()
        frac, n = sampler_cost(text, shell)
        rows.append(C.Row(f"harness sampler CPU, {label}, % of one core at 50 ms", frac * 100, "", frac * 100,
                          None, unit=" %"))
        notes.append(f"sampler {label}: {n} samples in 4 s of `sleep`, load {la}")
    for scheme, b in bundles.items():
        la = loadavg()
        p = subprocess.run([str(C.VENV_BIN / "python"), "-c", _CALLBACK_COST, str(b), str(a.prefill), str(a.decode),
                            "20"], capture_output=True, text=True, cwd=C.REPO)
        try:
            pairs = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SystemExit(f"error: callback cost run failed: {p.stderr.strip()[-400:]}")
        ratio = C.median([x["streamed"]["engine_decode_tps"] / x["plain"]["engine_decode_tps"] for x in pairs])
        rows.append(C.Row(f"{scheme}: decode through the stream callback / one decode call (engine tok/s, "
                          f"20 paired runs, one engine)", C.median([x["streamed"]["engine_decode_tps"] for x in pairs]),
                          C.median([x["plain"]["engine_decode_tps"] for x in pairs]), ratio, None))
        tt = C.median([x["streamed"]["old_ttft_ms"] / x["streamed"]["engine_ttft_ms"] for x in pairs])
        rows.append(C.Row(f"{scheme}: old TTFT (prefill call wall + first streamed gap) / LiteRT-LM's TTFT, same runs",
                          C.median([x["streamed"]["old_ttft_ms"] for x in pairs]),
                          C.median([x["streamed"]["engine_ttft_ms"] for x in pairs]), tt, None))
        notes.append(f"{scheme}: callback pairs measured at load {la}-{loadavg()}")
    head = ("piece", "A", "B", "A/B")
    print(C.table(rows, head))
    for n in notes:
        print("- " + n)
    if a.write:
        notes.append("A/B columns: sampler rows give the % of one core; the callback rows give streamed vs plain; "
                     "the TTFT rows give the old definition vs the runtime's. Nothing measured runs under nice.")
        body = C.section(f"fidelity: where the old gap came from ({a.model} w{wd}, host)", rows, head, notes,
                         settings=[f"prefill {a.prefill}, decode {a.decode}, CPU threads 2"])
        C.update_results(f"fidelity-sources-{a.model}-w{wd}", body)
    return 0


# the harness as it was before its sampler stopped starting processes per sample
OLD_HARNESS_COMMIT = "a3092cd"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["e2b", "tiny"])
    ap.add_argument("--width-div", type=int, default=None)
    ap.add_argument("--devices", default="host,rpi5-standin,pixel8-standin")
    ap.add_argument("--modes", default="cold,warm")
    C.run_options(ap, reps=5, warmup=None, prefill=128, decode=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sources", action="store_true",
                    help="time the pieces of the old gap apart (sampler CPU, stream callback, TTFT definition)")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    wd = a.width_div or (4 if a.model == "e2b" else 1)
    notes: list[str] = []
    work = C.REPO / ".cache" / "bench-build"
    dist, cache = work / f"dist-{a.model}-w{wd}", work / f"cache-{a.model}-w{wd}"
    bundles = {s: C.find_or_build(a.model, s, wd, dist, cache, notes) for s in ("wNa8o8", "fp16")}
    if a.sources:
        return sources(a, bundles, wd)
    devices = [d for d in a.devices.split(",") if d]
    modes = [m for m in a.modes.split(",") if m]
    env = targets_env()
    out = C.REPO / "results" / "bench-scripts"
    header = C.header_lines()  # date, commit, machine, load at the start
    ek: dict = {d: {m: [] for m in modes} for d in devices}  # device -> mode -> [round result]
    ref: dict = {d: {m: [] for m in modes} for d in devices}  # the reference run right beside each
    for i in range(a.rounds):
        C.log(f"round {i + 1}/{a.rounds}, load {loadavg()}")
        for dev in devices:
            for mode in (modes if i % 2 == 0 else modes[::-1]):
                # the runtime's benchmark right before or after (alternating) edgekit's, so both see the same load
                for what in (("ref", "ek") if (i + devices.index(dev)) % 2 == 0 else ("ek", "ref")):
                    la = loadavg()
                    if what == "ref":
                        fn = litert_lm_benchmark if mode == "cold" else warm_reference
                        rr = {s: fn(b, a.prefill, a.decode, a.reps, a.threads) for s, b in bundles.items()}
                        rr["load"] = f"{la}-{loadavg()}"
                        ref[dev][mode].append(rr)
                        C.log(f"  runtime {mode} reference: " + ", ".join(
                            f"{s} decode {rr[s]['decode_tps']:.1f}" for s in bundles))
                    else:
                        res, folder = edgekit_bench(dev, bundles, mode, a.reps, a.prefill, a.decode, a.threads, out,
                                                    env)
                        res["load"] = f"{la}-{loadavg()}"
                        res["folder"] = folder
                        ek[dev][mode].append(res)
                        C.log(f"  edgekit {dev} {mode}: " + ", ".join(
                            f"{s} decode {C.median(res[s]['decode_tps']):.1f}" for s in bundles))

    sections = {}
    for dev in devices:
        rows: list[C.Row] = []
        dnotes = list(notes)
        for mode in modes:
            rounds = ek[dev][mode]
            mref = ref[dev][mode]
            ref_mean = {s: {k: C.mean([r[s][k] for r in mref]) for k, _ in KEYS} for s in bundles}
            med = {s: {k: C.mean([C.median(r[s][k]) for r in rounds if r[s][k]]) for k, _ in KEYS} for s in bundles}
            for s in ("wNa8o8", "fp16"):
                for k, label in KEYS:
                    # the mean over rounds of edgekit's medians / the mean over rounds of the runtime's figures
                    rows.append(C.Row(f"{mode}: {s} {label}", med[s][k], ref_mean[s][k],
                                      C.ratio(med[s][k], ref_mean[s][k]), WITHIN5))
            ek_r = C.ratio(med["wNa8o8"]["decode_tps"], med["fp16"]["decode_tps"])
            rt_r = C.ratio(ref_mean["wNa8o8"]["decode_tps"], ref_mean["fp16"]["decode_tps"])
            rows.append(C.Row(f"{mode}: wNa8o8/fp16 decode ratio", ek_r, rt_r, C.ratio(ek_r, rt_r), WITHIN3))
            # how well each tool agrees with itself between rounds on this machine (no target): a fidelity
            # target tighter than this spread cannot be judged here
            for s in ("wNa8o8", "fp16"):
                ek_rounds = [C.median(e[s]["decode_tps"]) for e in rounds if e[s]["decode_tps"]]
                rt_rounds = [r[s]["decode_tps"] for r in mref]
                rows.append(C.Row(f"{mode}: {s} decode tok/s, CV between rounds (each tool against itself)",
                                  C.cv(ek_rounds) if len(ek_rounds) > 1 else None,
                                  C.cv(rt_rounds) if len(rt_rounds) > 1 else None, None, None, unit=""))
            cvs = [max(C.cv(e[s]["decode_tps"]) for s in bundles) for e in rounds]
            rows.append(C.Row(f"{mode}: CV of edgekit decode over {a.reps} runs (worse bundle, median of rounds)",
                              C.median(cvs), "", C.median(cvs), CV_TARGET if dev == "host" else None, unit=""))
            for j, (e, r) in enumerate(zip(rounds, mref)):
                dnotes.append(
                    f"{mode} round {j + 1} (load {e['load']}; reference load {r['load']}): " + "; ".join(
                        f"{s} edgekit decode {', '.join(f'{x:.0f}' for x in e[s]['decode_tps'])} "
                        f"prefill med {C.median(e[s]['prefill_tps']):.0f} TTFT med {C.median(e[s]['ttft_ms']):.2f} ms"
                        f" | runtime decode {r[s]['decode_tps']:.0f} prefill {r[s]['prefill_tps']:.0f} "
                        f"TTFT {r[s]['ttft_ms']:.2f} ms" for s in ("wNa8o8", "fp16")) + f" ({e['folder']})")
        head = ("metric", "edgekit", "runtime", "edgekit/runtime")
        print(f"\n### {dev}\n" + C.table(rows, head))
        dnotes.append(f"bundles: {', '.join(f'{s} {b.name} ({b.stat().st_size:,} B)' for s, b in bundles.items())}")
        dnotes.append(f"load average (1, 5, 15 min) at the end: {C.machine_info()['loadavg']}")
        dnotes.append("runtime reference: cold rows vs `litert-lm benchmark` 0.18.1 (a new engine for every run: each "
                      "run is the first generation after a load, like a cold edgekit run); warm rows vs the same C API "
                      "calls as litert_lm.Benchmark with ONE engine for all runs (as litert_lm_main --num_iterations "
                      "and the 0.19 nightly CLI do); both: 1 warmup, the mean of the runs")
        dnotes.append("edgekit figure: median of the measured runs of one `edgekit bench` (what it reports), averaged "
                      "over the rounds; runtime figure: averaged over its runs beside them; ratio = edgekit / runtime "
                      "of those averages; nothing measured runs under nice")
        for n in dnotes:
            print("- " + n)
        title = f"fidelity: `edgekit bench --device {dev}` vs the runtime's own benchmark ({a.model} w{wd})"
        settings = [f"prefill {a.prefill}, decode {a.decode}, {a.reps} runs + 1 warmup per tool and bundle, "
                    f"{a.rounds} rounds (tool order alternating), CPU threads {a.threads}, modes {', '.join(modes)}"]
        body = C.section(title, rows, head, dnotes, settings=settings)
        # the machine line is the one measured before the first round
        body_lines = body.splitlines()
        hl = C.header_lines()
        for k, line in enumerate(body_lines):
            for h_now, h0 in zip(hl, header):
                if line == h_now and h_now.startswith("- machine"):
                    body_lines[k] = h0
        sections[dev] = "\n".join(body_lines) + "\n"
    if a.write:
        for dev, body in sections.items():
            C.update_results(f"fidelity-{a.model}-w{wd}-{dev}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
