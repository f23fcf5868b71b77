"""Same inputs, same bundle (the manifest's lock, --verify-lock) and a clean terminal (toolchain log)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from edgekit.cli.main import main
from edgekit.fsutil import sha256_file
from fixtures_bundles import REPO, bundle_cache_root

FP16_TOML = REPO / "edgekit" / "schemes" / "data" / "fp16.toml"
# what the toolchain prints during a tiny build (quantizer blocks, tqdm, TFLite native INFO, torchao, glog, logging)
TOOLCHAIN_MARKERS = ("Quantization Ratio", "Model name:", "Original model size", "Failed to load", "_pytree",
                     "INFO: Created TensorFlow Lite", "WARNING:root", "it/s]")


@pytest.fixture
def cache_env(monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(bundle_cache_root()))
    return bundle_cache_root()


def _fp16(out: Path, **kw):
    from edgekit.builder.pipeline import build

    kw.setdefault("scheme", "fp16")
    return build("tiny", text_only=True, output=out, cache_dir=bundle_cache_root(), quality=False,
                 verify_engine=False, **kw)


def _range_sha(path: Path, begin: int, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(begin)
        return hashlib.sha256(f.read(n)).hexdigest()


# ------------------------------------------------------------------ same inputs, same bytes
@pytest.mark.slow
def test_two_builds_are_byte_identical_and_the_manifest_holds_the_lock(tmp_path, tiny_source, tiny_bundles,
                                                                      tiny_manifests):
    # the first build is the session's tiny fp16 (tests/fixtures_bundles.py: the same pipeline call with the
    # same inputs and options; verify_engine is no lock option), the second one is made here
    from types import SimpleNamespace

    a = SimpleNamespace(bundle=tiny_bundles["fp16"], manifest=tiny_manifests["fp16"])
    b = _fp16(tmp_path / "b")
    assert a.manifest["lock"] == b.manifest["lock"]
    assert sha256_file(a.bundle) == sha256_file(b.bundle)
    assert a.bundle.read_bytes() == b.bundle.read_bytes()

    lock = a.manifest["lock"]
    assert lock["schema"] == 1
    # every input, hashed
    ckpt_dir, info = tiny_source
    ck = lock["inputs"]["checkpoint"]
    assert ck["weights"] and ck["weights"] == info.weights_sha256
    assert ck["config"]["config.json"] == sha256_file(ckpt_dir / "config.json")
    assert ck["tokenizer"]["tokenizer.json"] == sha256_file(ckpt_dir / "tokenizer.json")
    assert len(lock["inputs"]["scheme"]["resolved_sha256"]) == 64
    cal = lock["inputs"]["calibration"]
    assert len(cal["file_sha256"]) == 64 and cal["used"] is False  # fp16 reads no calibration prompts
    # every build option, the export's arguments written out
    o = lock["options"]
    assert (o["model"], o["scheme"], o["text_only"], o["prefill_length"], o["cache_length"]) == \
        ("tiny", "fp16", True, 32, 256)
    assert o["export"]["hash_seed"] == "0" and o["export"]["prefill_length"] == 32
    # every package version, the CPU
    pk = lock["toolchain"]["packages"]
    assert pk["litert-torch"] == metadata.version("litert-torch")
    assert pk["litert-lm-builder"] == metadata.version("litert-lm-builder")
    assert len(pk) >= 50  # the whole environment, not just the toolchain's pins
    assert lock["toolchain"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert lock["host"]["cpu_model"]
    # the bundle, its header and every section, read back and true
    assert lock["bundle"]["sha256"] == sha256_file(a.bundle) == a.manifest["bundle"]["sha256"]
    assert [s["name"] for s in lock["sections"]] == [s["name"] for s in a.manifest["sections"]]
    for s in lock["sections"]:
        assert s["sha256"] == _range_sha(a.bundle, s["begin"], s["bytes"]), s["name"]
    assert lock["header"]["sha256"] == _range_sha(a.bundle, 0, lock["header"]["bytes"])
    # header fields derived from the inputs, not random / now
    from edgekit.bundle.lock import UUID_NAMESPACE
    from edgekit.runtime.litertlm_file import read_header

    meta = read_header(a.bundle).system_metadata
    assert meta["uuid"] == lock["identity"]["uuid"] == str(uuid.uuid5(UUID_NAMESPACE, lock["identity"]["sha256"]))
    assert meta["creation_timestamp"] == "1970-01-01T00:00:00+00:00"
    # the identity is a function of what the lock records, the export's options included
    from edgekit.bundle import lock as lk

    assert lk.identity(lock["inputs"], lock["options"], lock["toolchain"]) == lock["identity"]
    other = {**o, "prefill_length": 16, "cache_length": 128,
             "export": {**o["export"], "prefill_length": 16, "cache_length": 128}}
    assert lk.identity(lock["inputs"], other, lock["toolchain"])["uuid"] != lock["identity"]["uuid"]
    # another option, another identity (and header), end to end; decode_steps (verify's decode length)
    # needs no new export: another prefill/cache length would cost a whole export here
    c = _fp16(tmp_path / "c", decode_steps=4)
    assert c.manifest["lock"]["options"]["decode_steps"] == 4 != o["decode_steps"]
    assert c.manifest["lock"]["identity"]["uuid"] != lock["identity"]["uuid"]
    assert read_header(c.bundle).system_metadata["uuid"] == c.manifest["lock"]["identity"]["uuid"]


@pytest.fixture(scope="module")
def cold_cli_build(tmp_path_factory):
    """One `edgekit build tiny --text-only --scheme fp16 --no-quality` in a child process, with an empty
    cache (the export runs again) and PYTHONHASHSEED=12345; two tests below read it: same bytes as the
    session's fp16, and a clean terminal (it also shows the export child's output kept off the terminal)."""
    d = tmp_path_factory.mktemp("cold-cli-build")
    env = dict(os.environ, EDGEKIT_CACHE=str(d / "cache"), PYTHONHASHSEED="12345")
    env.pop("EDGEKIT_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "build", "tiny", "--text-only", "--scheme", "fp16",
                        "--no-quality", "--output", str(d / "out")], env=env, capture_output=True, text=True,
                       timeout=1800)
    return r, d / "out"


@pytest.mark.slow
def test_export_redone_under_another_hash_seed_gives_the_same_bundle(tiny_bundles, cold_cli_build):
    """A fresh cache (the export runs again) from a parent with another PYTHONHASHSEED: same bytes.

    litert-torch 0.10.0 writes the stop tokens in set() order; the export child runs with PYTHONHASHSEED=0.
    """
    r, _ = cold_cli_build
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[export] litert-torch export_hf (float32, child process) ..." in r.stderr  # not the cached one
    rebuilt = Path(r.stdout.strip())
    assert sha256_file(rebuilt) == sha256_file(tiny_bundles["fp16"])


# ------------------------------------------------------------------ --verify-lock
def _lines(out: str) -> list[list[str]]:
    return [ln.split() for ln in out.splitlines() if ln.strip()]


@pytest.mark.slow
def test_verify_lock_match_then_diff_after_one_scheme_byte(tmp_path, capsys, cache_env):
    scheme = tmp_path / "fp16.toml"
    shutil.copyfile(FP16_TOML, scheme)
    built = _fp16(tmp_path / "dist", scheme=str(scheme))
    manifest = built.manifest_path

    code = main(["build", "tiny", "--text-only", "--scheme", str(scheme), "--verify-lock", str(manifest)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = _lines(cap.out)
    assert rows and all(r[0] == "MATCH" for r in rows), cap.out
    sections = [r for r in rows if r[1] == "section"]
    assert len(sections) == len(built.manifest["sections"])
    assert any(r[1] == "header" for r in rows) and any(r[1] == "bundle" for r in rows)
    assert not any(t in cap.out for t in TOOLCHAIN_MARKERS)

    # one byte of the scheme file: "float16" -> "float32" would change every weight; flip one byte of
    # the scheme's name instead: the header (identity, scheme metadata) differs, the weights do not
    raw = bytearray(scheme.read_bytes())
    i = raw.index(b"name = 'fp16'") + len("name = 'fp1")
    raw[i:i + 1] = b"7"
    scheme.write_bytes(bytes(raw))
    code = main(["build", "tiny", "--text-only", "--scheme", str(scheme), "--verify-lock", str(manifest)])
    cap = capsys.readouterr()
    assert code == 10, cap.err  # InspectionFailed: the rebuild does not match the lock
    rows = {(r[1], r[2]): r[0] for r in _lines(cap.out)}
    assert rows[("input", "scheme")] == "DIFF"
    assert rows[("input", "checkpoint")] == "MATCH"
    assert rows[("header", "header")] == "DIFF"
    assert rows[("section", "[3]")] == "MATCH"  # tf_lite_prefill_decode: same float16 weights
    assert "DIFF" in cap.err and "error: " in cap.err


@pytest.mark.slow
def test_verify_lock_diff_after_one_calibration_byte(tmp_path, capsys, cache_env, tiny_bundles, tiny_manifests):
    """wNa8o8: one byte of the calibration file changes the activation ranges -> section DIFF.

    The lock is the session's tiny wNa8o8 build (default calibration file; the identity counts the
    file's content, not the path it was given by), so only the rebuild of --verify-lock calibrates here."""
    from edgekit.schemes.calibration import DEFAULT_CALIBRATION

    cal = tmp_path / "calibration.txt"
    shutil.copyfile(DEFAULT_CALIBRATION, cal)
    manifest_path = tiny_bundles["wNa8o8"].parent / "manifest.json"
    lock_cal = tiny_manifests["wNa8o8"]["lock"]["inputs"]["calibration"]
    assert lock_cal["used"] is True and lock_cal["file_sha256"] == sha256_file(cal)
    # one byte: the blank line after the first prompt becomes " ", so the first two prompts are one
    from edgekit.schemes.calibration import parse_calibration

    raw = bytearray(cal.read_bytes())
    first = parse_calibration(raw.decode())[0]
    k = raw.index(b"\n\n", raw.index(first.encode()))
    raw[k + 1:k + 2] = b" "
    n_before = len(parse_calibration(cal.read_text()))
    cal.write_bytes(bytes(raw))
    assert len(parse_calibration(cal.read_text())) == n_before - 1
    code = main(["build", "tiny", "--text-only", "--calibration", str(cal), "--verify-lock", str(manifest_path)])
    cap = capsys.readouterr()
    assert code == 10, cap.err
    rows = {(r[1], r[2]): r[0] for r in _lines(cap.out)}
    assert rows[("input", "calibration")] == "DIFF"
    assert rows[("section", "[3]")] == "DIFF"  # tf_lite_prefill_decode: other activation scales
    assert rows[("section", "[2]")] == "MATCH"  # the tokenizer is untouched


def test_verify_lock_refuses_another_toolchain(tiny_manifests, tiny_bundles, tmp_path, capsys, cache_env):
    m = json.loads(json.dumps(tiny_manifests["fp16"]))
    assert "lock" in m, "the manifest holds no lock"
    m["lock"]["toolchain"]["packages"]["litert-torch"] = "0.0.1"
    m["lock"]["toolchain"]["packages"]["not-installed-here"] = "1.0"
    fake = tmp_path / "manifest.json"
    fake.write_text(json.dumps(m))
    code = main(["build", "tiny", "--text-only", "--scheme", "fp16", "--verify-lock", str(fake)])
    cap = capsys.readouterr()
    assert code == 4, cap.err  # NotComparable: refused before any build
    assert cap.out == ""
    here = metadata.version("litert-torch")
    assert f"litert-torch 0.0.1 (lock) vs {here} (here)" in cap.err
    assert "not-installed-here 1.0 (lock) vs absent (here)" in cap.err
    assert "[export]" not in cap.err  # nothing was built
    assert [ln for ln in cap.err.splitlines() if ln.startswith("error: ")].__len__() == 1


def test_verify_lock_needs_a_lock(tiny_manifests, tmp_path, capsys):
    m = dict(tiny_manifests["fp16"])
    m.pop("lock", None)
    fake = tmp_path / "manifest.json"
    fake.write_text(json.dumps(m))
    code = main(["build", "tiny", "--text-only", "--scheme", "fp16", "--verify-lock", str(fake)])
    cap = capsys.readouterr()
    assert code == 5 and "no lock" in cap.err and cap.out == ""


# ------------------------------------------------------------------ a clean terminal
@pytest.mark.slow
def test_cli_build_terminal_carries_only_edgekit_and_the_log_has_the_toolchain(cold_cli_build):
    r, out = cold_cli_build
    assert r.returncode == 0, r.stderr[-3000:]
    bundle = out / "tiny-fp16-text" / "tiny-fp16-text.litertlm"
    assert r.stdout == f"{bundle}\n"  # stdout: the result only
    for marker in TOOLCHAIN_MARKERS:
        assert marker not in r.stderr, (marker, r.stderr[:3000])
    assert "\r" not in r.stderr  # no tqdm bars (not a TTY: plain lines)
    err_lines = r.stderr.splitlines()
    assert err_lines and all(ln.startswith(("[", "built ")) for ln in err_lines), r.stderr[:3000]
    for stage in ("[source]", "[export]", "[quantize]", "[repack]", "[verify]", "[inspect]", "[manifest]"):
        assert stage in r.stderr
    log = Path(json.loads((bundle.parent / "manifest.json").read_text())["build"]["toolchain_log"])
    assert log.is_file() and str(log) in r.stderr
    text = log.read_text(errors="replace")
    assert "Quantization Ratio" in text and "Original model size" in text  # the quantizer's Python prints
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in text  # native code writing to fd 2
    assert "==== edgekit" in text and "[quantize]" in text  # the stages give the toolchain's lines context


def test_failing_stage_names_the_kept_log(tiny_bundles, tmp_path, capfd, monkeypatch, cache_env, build_tempdirs):
    from edgekit.builder import quantize

    def noisy_crash(*a, **k):
        print("python-level noise from the toolchain")
        os.write(1, b"native noise on fd 1\n")
        os.write(2, b"native noise on fd 2\n")
        raise RuntimeError("simulated packing crash")

    monkeypatch.setattr(quantize, "repack", noisy_crash)
    made = build_tempdirs
    code = main(["build", "tiny", "--text-only", "--scheme", "fp16", "--no-quality", "--output", str(tmp_path)])
    cap = capfd.readouterr()
    assert code == 7, cap.err
    err = [ln for ln in cap.err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "repack failed in the toolchain" in err[0]
    assert "toolchain log: " in err[0]
    log = Path(err[0].split("toolchain log: ", 1)[1].rstrip(")"))
    assert log.is_file() and str(log.parent) in made
    assert sorted(p.name for p in log.parent.iterdir()) == ["toolchain.log"]  # the rest of the work is gone
    text = log.read_text()
    for noise in ("python-level noise", "native noise on fd 1", "native noise on fd 2"):
        assert noise in text
        assert noise not in cap.out and noise not in cap.err
    assert "[repack] failed: RuntimeError: simulated packing crash" in text
    assert cap.out == ""
    shutil.rmtree(log.parent)


# ------------------------------------------------------------------ progress
def test_stage_progress_plain_lines_off_a_terminal():
    from edgekit.builder.toolchain_log import StageProgress

    buf = io.StringIO()
    p = StageProgress(buf, tty=False)
    p.plan(["source", "export"])
    p("source", "validate", None)
    p("source", "validate", 1.5)
    p.close()
    assert buf.getvalue() == "[source] validate ...\n[source] validate: done in 1.50 s\n"


def test_stage_progress_bar_on_a_terminal_has_percent_rate_and_eta():
    from edgekit.builder.toolchain_log import StageProgress

    buf = io.StringIO()
    p = StageProgress(buf, tty=True, tick_s=60)
    p.plan(["source", "export", "quantize", "manifest"])
    assert "ETA n/a" in p.line()  # nothing finished: no rate, no ETA
    p("source", "validate", None)
    p.t0 -= 10  # 10 s elapsed
    p("export", "litert-torch", None)
    line = p.line()
    assert " 25% 1/4" in line and "stages/min" in line and "ETA 0:30" in line and "export: litert-torch" in line
    p.close(True)
    out = buf.getvalue()
    assert out.startswith("\r[") and "100% 4/4" in out and out.endswith("\n")


def test_toolchain_log_redirects_fds_and_python_streams(tmp_path, capfd):
    from edgekit.builder.toolchain_log import ToolchainLog

    log = ToolchainLog(tmp_path / "t.log")
    seen = []
    with log:
        print("py out")
        print("py err", file=sys.stderr)
        os.write(1, b"fd1\n")
        os.write(2, b"fd2\n")
        log.outside(lambda: (print("to the terminal", file=sys.stderr), seen.append(1)))()
        subprocess.run(["sh", "-c", "echo child-out; echo child-err >&2"], check=True)
    cap = capfd.readouterr()
    text = (tmp_path / "t.log").read_text()
    for s in ("py out", "py err", "fd1", "fd2", "child-out", "child-err"):
        assert s in text and s not in cap.out + cap.err
    assert "to the terminal" in cap.err and "to the terminal" not in text and seen == [1]
    print("after")
    assert "after" in capfd.readouterr().out


def test_help_and_inspect_print_no_toolchain_noise(tiny_bundles):
    for argv in (["--help"], ["inspect", str(tiny_bundles["fp16"])]):
        r = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *argv], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        for marker in TOOLCHAIN_MARKERS:
            assert marker not in r.stderr + r.stdout, (argv, marker)
