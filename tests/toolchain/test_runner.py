"""edgekit/runtime/runner.py: JSONL per contract, both backends, standalone copy, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.bench.traces import parse_trace_dir
from edgekit.runtime import runner

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "android_harness" / "harness.sh"


@pytest.fixture(scope="session")
def tiny_bundle(request):
    if os.environ.get("EDGEKIT_TEST_BUNDLE"):  # a bundle of your own, for development
        return os.environ["EDGEKIT_TEST_BUNDLE"]
    try:
        bundles = request.getfixturevalue("tiny_bundles")
    except pytest.FixtureLookupError:
        pytest.skip("tests/fixtures_bundles.py has no tiny_bundles fixture yet")
    for key in ("fp16", "float", "wNa8o8"):
        if key in bundles:
            return str(bundles[key])
    return str(next(iter(bundles.values())))


def _run(argv, cwd=None, env=None, timeout=300):
    p = subprocess.run([sys.executable, "-m", "edgekit.runtime.runner", *argv], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout)
    recs = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    return p.returncode, recs, p.stderr


def _check_runs(recs, prefill, decode, warmup, reps, token_times=None):
    start = recs[0]
    if token_times is None:  # per-token latencies: the interpreter always, litert_lm with --token-times
        token_times = bool(start.get("token_times")) or start.get("backend") == "interpreter"
    assert start["event"] == "start" and start["schema"] == 1 and start["runner"] == "edgekit-runner"
    assert recs[1]["event"] == "init" and recs[1]["init_ms"] > 0
    runs = [r for r in recs if r["event"] == "run"]
    assert [r["phase"] for r in runs] == ["warmup"] * warmup + ["measure"] * reps
    for r in runs:
        assert r["prefill_tokens"] == prefill and r["decode_tokens"] == decode
        if token_times:
            assert len(r["token_ms"]) == decode and all(x > 0 for x in r["token_ms"])
            # what a caller streaming tokens waits: the prefill call's wall time + the first token
            assert r["ttft_wall_ms"] == pytest.approx(r.get("prefill_wall_ms", r["prefill_ms"]) + r["token_ms"][0])
            if r.get("decode_timing") != "engine":
                assert r["decode_ms"] == pytest.approx(sum(r["token_ms"]))
        else:  # no Python per token: nothing per token is invented
            assert r["token_ms"] == [] and "ttft_wall_ms" not in r
        assert r["decode_tps"] == pytest.approx(decode / (r["decode_ms"] / 1000))
        assert r["prefill_tps"] == pytest.approx(prefill / (r["prefill_ms"] / 1000))
        # ttft = LiteRT-LM's definition on every backend: first prefill turn + decode turn / its tokens
        assert r["ttft_ms"] == pytest.approx(r["prefill_ms"] + r["decode_ms"] / decode, rel=1e-3)
        assert r.get("prefill_wall_ms", r["prefill_ms"]) >= r["prefill_ms"] > 0
        assert r["t_start"] <= r["t_end"]
        assert (r["t_end"] - r["t_start"]) * 1000 >= r["prefill_ms"] + r["decode_ms"] - 1
    end = recs[-1]
    assert {k: end[k] for k in ("event", "status")} == {"event": "end", "status": "ok"}
    assert end["t"] >= max(r["t_end"] for r in runs)
    assert start["ttft_definition"] == runner.TTFT_DEFINITION
    return start, runs


@pytest.mark.slow
@pytest.mark.parametrize("backend,token_times", [("litert_lm", False), ("litert_lm", True), ("interpreter", False)])
def test_runner_backends(tiny_bundle, backend, token_times):
    code, recs, err = _run([tiny_bundle, "--prefill", "16", "--decode", "8", "--warmup", "1", "--reps", "2",
                            "--threads", "1", "--backend", backend] + (["--token-times"] if token_times else []))
    assert code == 0, err[-2000:]
    # the interpreter times every token anyway (one Python call per token)
    start, runs = _check_runs(recs, 16, 8, 1, 2, token_times=token_times or backend == "interpreter")
    assert start["backend"] == backend and start["token_times"] is token_times
    from edgekit.fsutil import sha256_file

    assert start["bundle_sha256"] == sha256_file(tiny_bundle)
    assert start["runtime"]["ai_edge_litert"] and start["runtime"]["litert_lm_api"]
    if backend == "litert_lm":
        for r in runs:  # the engine's own BenchmarkInfo of the same run, beside edgekit's wall-clock figures
            assert r["engine_prefill_tokens"] == 16 and r["engine_decode_tokens"] == 8
            assert r["engine_prefill_tps"] > 0 and r["engine_decode_tps"] > 0
            # prefill_ms is the engine's prefill turn: the same tok/s as its BenchmarkInfo
            assert r["prefill_timing"] == "engine"
            assert r["prefill_tps"] == pytest.approx(r["engine_prefill_tps"], rel=1e-6)
            # decode_ms is the engine's decode turn, inside the wall time of the decode call
            assert r["decode_timing"] == "engine"
            assert r["decode_tps"] == pytest.approx(r["engine_decode_tps"], rel=1e-6)
            assert r["decode_wall_ms"] * 1.05 + 1.0 >= r["decode_ms"]
            # ttft_ms is the engine's own BenchmarkInfo TTFT
            assert r["ttft_ms"] == pytest.approx(r["engine_ttft_ms"], rel=1e-6)


@pytest.mark.slow
def test_runner_warm_mode_one_record_per_iteration(tiny_bundle):
    """Warm mode: one engine, warmups then N iterations, each its own session and record, in order."""
    code, recs, err = _run([tiny_bundle, "--prefill", "16", "--decode", "8", "--warmup", "2", "--reps", "4",
                            "--threads", "1", "--backend", "litert_lm", "--mode", "warm"])
    assert code == 0, err[-2000:]
    start, runs = _check_runs(recs, 16, 8, 2, 4, token_times=False)
    assert start["mode"] == "warm" and start["warmup"] == 2 and start["reps"] == 4
    assert [r["index"] for r in runs] == [0, 1, 0, 1, 2, 3]
    assert len([r for r in recs if r["event"] == "init"]) == 1  # one engine load for all iterations
    for a, b in zip(runs, runs[1:]):  # iterations one after another, never overlapping
        assert a["t_end"] <= b["t_start"]
    assert len({r["t_start"] for r in runs}) == len(runs)
    tr_its = [r for r in recs if r["event"] == "run" and r["phase"] == "measure"]
    assert all(r["engine_decode_tokens"] == 8 for r in tr_its)


@pytest.mark.slow
def test_runner_fresh_engine_reloads_per_run(tiny_bundle):
    code, recs, err = _run([tiny_bundle, "--prefill", "16", "--decode", "8", "--warmup", "1", "--reps", "2",
                            "--threads", "1", "--backend", "litert_lm", "--fresh-engine"])
    assert code == 0, err[-2000:]
    start, runs = _check_runs(recs, 16, 8, 1, 2, token_times=False)
    assert start["fresh_engine"] is True
    assert all(r["init_ms"] > 0 for r in runs)
    assert runs[0]["init_ms"] == recs[1]["init_ms"]  # the first run uses the engine loaded at start
    # each later run loaded its own engine: LiteRT logs more environment creations than with one engine
    code1, recs1, err1 = _run([tiny_bundle, "--prefill", "16", "--decode", "8", "--warmup", "1", "--reps", "2",
                               "--threads", "1", "--backend", "litert_lm"])
    assert code1 == 0 and recs1[0]["fresh_engine"] is False
    assert all("init_ms" not in r for r in recs1 if r["event"] == "run")
    marker = "Creating LiteRT environment"
    assert err.count(marker) > err1.count(marker) >= 1


@pytest.mark.slow
def test_runner_auto_says_which(tiny_bundle, tmp_path):
    out = tmp_path / "r.jsonl"
    code, _, err = _run([tiny_bundle, "--prefill", "8", "--decode", "4", "--warmup", "0", "--reps", "1",
                         "--backend", "auto", "--out", str(out)])
    assert code == 0, err[-2000:]
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert recs[0]["backend"] in ("litert_lm", "interpreter") and recs[0]["backend_requested"] == "auto"
    if recs[0]["backend"] == "interpreter":
        assert recs[0]["fallback_reason"]


@pytest.mark.slow
def test_runner_standalone_copy_under_harness(tiny_bundle, tmp_path):
    """The copied runtime tree runs from PYTHONPATH (as on a Pi), under the harness."""
    root = tmp_path / "rt dir"
    for local, rel in runner.runtime_files():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, dst)
    env = dict(os.environ, PYTHONPATH=str(root))
    out = tmp_path / "trace"
    p = subprocess.run(["dash", str(HARNESS), "-o", str(out), "-i", "20", "--", sys.executable, "-m",
                        "edgekit.runtime.runner", tiny_bundle, "--prefill", "16", "--decode", "8", "--warmup", "1",
                        "--reps", "2", "--backend", "interpreter", "--mode", "warm"], env=env, cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, (out / "runner.err").read_text()[-2000:]
    tr = parse_trace_dir(out)
    assert tr.ok and tr.source == "runner"
    assert tr.start["runner_path"] == str(root / "edgekit" / "runtime" / "runner.py")
    assert len(tr.measured) == 2 and all(len(it.token_ms) == 8 for it in tr.iterations)
    assert tr.mem and tr.peak("rss_anon_kb") > 10_000  # a Python process with numpy + the interpreter


def test_runner_missing_bundle(tmp_path):
    code, recs, _ = _run([str(tmp_path / "nope.litertlm"), "--prefill", "4", "--decode", "2"])
    assert code == 3
    assert recs[0]["event"] == "start" and recs[-1]["event"] == "error" and "not found" in recs[-1]["message"]


def test_runner_garbage_bundle(tmp_path):
    bad = tmp_path / "bad.litertlm"
    bad.write_bytes(b"not a bundle" * 100)
    code, recs, _ = _run([str(bad), "--prefill", "4", "--decode", "2", "--backend", "interpreter"])
    assert code == 3 and recs[-1]["event"] == "error" and "cannot load" in recs[-1]["message"]


def test_runner_bad_args():
    code, recs, err = _run(["x.litertlm", "--prefill", "0", "--decode", "2"])
    assert code == 2 and recs == [] and "--prefill" in err


def test_prompt_ids_deterministic():
    a = runner.prompt_ids(64, 1000)
    assert a == runner.prompt_ids(64, 1000) and all(16 <= t < 1000 for t in a) and len(set(a)) > 32


@pytest.mark.slow
def test_runner_single_copied_file(tiny_bundle, tmp_path):
    """runner.py alone (no package beside it) runs the litert_lm backend, as on a Pi without the tree."""
    copy = tmp_path / "runner.py"
    shutil.copy(runner.__file__, copy)
    p = subprocess.run([sys.executable, str(copy), tiny_bundle, "--prefill", "8", "--decode", "4", "--warmup", "0",
                        "--reps", "1", "--backend", "litert_lm"], capture_output=True, text=True, cwd=str(tmp_path),
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    recs = [json.loads(l) for l in p.stdout.splitlines()]
    assert recs[0]["runner_path"] == str(copy) and recs[0]["backend"] == "litert_lm"
    _check_runs(recs, 8, 4, 0, 1)


def test_prompt_word_is_one_token_per_repetition_for_this_tokenizer():
    """A byte-level tokenizer makes ' the' four tokens: the runner picks a word that is one."""
    from edgekit.runtime.runner import LiteRtLmBackend, RunnerError

    class ByteEngine:
        bos_token_id = 2

        def tokenize(self, text):
            return list(text.encode())

    b = LiteRtLmBackend.__new__(LiteRtLmBackend)
    b.engine, b._prompt, b._prompt_tokens = ByteEngine(), None, None
    text = b.prompt(16)
    assert len(ByteEngine().tokenize(text)) + 1 == 16 and set(text) == {"a"}

    class MergingEngine(ByteEngine):
        def tokenize(self, text):  # merges everything: no word works
            return [0]

    b.engine, b._prompt = MergingEngine(), None
    with pytest.raises(RunnerError, match="no fixed prompt tokenizes to exactly 16 tokens"):
        b.prompt(16)


@pytest.mark.slow
def test_runner_takes_a_verified_sha256_instead_of_hashing(tiny_bundle):
    given = "ab" * 32
    code, recs, err = _run([tiny_bundle, "--prefill", "8", "--decode", "2", "--warmup", "0", "--reps", "1",
                            "--backend", "interpreter", "--sha256", given.upper()])
    assert code == 0, err[-2000:]
    assert recs[0]["bundle_sha256"] == given and recs[0]["bundle_sha256_source"] == "given"
