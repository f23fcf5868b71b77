"""edgekit build: manifests, sizes, atomic output, the quality hook, and every bad input."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from edgekit.cli.main import main
from edgekit.errors import BuildError
from edgekit.fsutil import sha256_file
from edgekit.schemes import load_scheme
from fixtures_bundles import bundle_cache_root


@pytest.fixture
def cache_env(monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(bundle_cache_root()))
    return bundle_cache_root()


def _one_error_line(err: str) -> None:
    assert "Traceback" not in err
    errs = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errs) == 1, err


# ------------------------------------------------------------------ manifests
def test_manifest_records_source_scheme_toolchain_and_measurements(tiny_manifests, tiny_source):
    _, info = tiny_source
    for name, m in tiny_manifests.items():
        assert m["schema"] == 1 and m["kind"] == "edgekit-bundle-manifest"
        assert m["name"] == f"tiny-{name}-text"
        assert m["model"]["preset"] == "tiny" and m["model"]["width_div"] == 1
        assert m["source"]["weights_sha256"] == info.weights_sha256
        if info.is_random:
            assert m["source"]["kind"] == "random_weights" and m["source"]["seed"] == 0
        assert m["scheme"] == load_scheme(name, "tiny").to_dict()
        assert m["toolchain"]["litert-torch"] == metadata.version("litert-torch")
        assert m["toolchain"]["ai-edge-quantizer"] == metadata.version("ai-edge-quantizer")
        b = m["build"]
        assert b["text_only"] is True and b["seconds"] > 0
        assert b["peak_rss_bytes"] >= b["builder_peak_rss_bytes"] > 50 * 2**20
        assert b["export"]["peak_rss_bytes"] > 100 * 2**20  # measured on the export child
        assert m["runtime"]["interpreter"]["ok"] and m["runtime"]["interpreter"]["generated"]
        if name == "wNa8o8" or "litert_lm" in m["runtime"]:  # (the sweep may rebuild fp16 without it)
            assert m["runtime"]["litert_lm"]["ok"], m["runtime"]["litert_lm"]
        assert m["encoders"] == {"vision": False, "audio": False}
    w = tiny_manifests["wNa8o8"]["build"]["calibration"]
    assert w["prompts"] > 0 and w["samples"]["decode"] > 0 and w["samples"]["prefill_32"] > 0
    assert tiny_manifests["fp16"]["build"]["calibration"] is None


def test_bundle_sizes_follow_the_bits(tiny_bundles, tiny_float_bundle, tiny_manifests):
    f32 = tiny_float_bundle.stat().st_size
    f16 = tiny_bundles["fp16"].stat().st_size
    w = tiny_bundles["wNa8o8"].stat().st_size
    assert w < f16 < f32
    assert 0.4 < f16 / f32 < 0.7  # float16 weights: about half the float32 export
    est = tiny_manifests["wNa8o8"]["build"]["estimate"]["bundle_bytes"]
    assert 0.5 < w / est < 2.5  # the estimate is within reach of the real size


# ------------------------------------------------------------------ atomic output
def test_failed_build_leaves_nothing_and_keeps_previous_output(tiny_bundles, tmp_path, monkeypatch, cache_env,
                                                              build_tempdirs):
    from edgekit.builder import pipeline
    from edgekit.builder import quantize

    out = tmp_path / "dist"
    good = out / "tiny-fp16-text"
    shutil.copytree(tiny_bundles["fp16"].parent, good)
    before = sha256_file(good / tiny_bundles["fp16"].name)

    def boom(*a, **k):
        raise RuntimeError("simulated toolchain crash while packing")

    monkeypatch.setattr(quantize, "repack", boom)
    made = build_tempdirs
    with pytest.raises(BuildError, match="repack failed in the toolchain") as ei:
        pipeline.build("tiny", scheme="fp16", text_only=True, output=out, verify_engine=False, quality=False)
    assert sorted(p.name for p in out.iterdir()) == ["tiny-fp16-text"]  # no partial folder left
    assert sha256_file(good / tiny_bundles["fp16"].name) == before
    # and the build's work folder in the cache holds only the toolchain's log, named in the error
    assert made
    kept = [Path(p) for p in made if Path(p).exists()]
    assert [sorted(x.name for x in k.iterdir()) for k in kept] == [["toolchain.log"]]
    assert f"toolchain log: {kept[0] / 'toolchain.log'}" in str(ei.value)
    shutil.rmtree(kept[0])


# ------------------------------------------------------------------ bad input
def _ckpt(tmp_path, tiny_source) -> Path:
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_source[0], d)
    return d


def _build(args, capsys):
    code = main(["build", "tiny", "--text-only", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_missing_checkpoint_dir(tmp_path, capsys):
    code, out, err = _build(["--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], capsys)
    assert code == 6 and "does not exist" in err and out == ""
    _one_error_line(err)


@pytest.mark.parametrize("damage,expect", [
    ("no_config", "config.json"),
    ("wrong_model_type", "model_type"),
    ("shape_mismatch", "shape"),
    ("corrupt_safetensors", "safetensors"),
    ("missing_tokenizer", "tokenizer"),
])
def test_bad_checkpoints(damage, expect, tmp_path, tiny_source, capsys):
    d = _ckpt(tmp_path, tiny_source)
    st = d / "model.safetensors"
    if damage == "no_config":
        (d / "config.json").unlink()
    elif damage == "wrong_model_type":
        cfg = json.loads((d / "config.json").read_text())
        cfg["model_type"] = "llama"
        (d / "config.json").write_text(json.dumps(cfg))
    elif damage == "shape_mismatch":
        raw = bytearray(st.read_bytes())
        (n,) = struct.unpack("<Q", raw[:8])
        head = json.loads(raw[8:8 + n])
        name = next(k for k, v in head.items() if k != "__metadata__" and len(v["shape"]) == 2
                    and v["shape"][0] != v["shape"][1])
        head[name]["shape"] = head[name]["shape"][::-1]  # same bytes, transposed shape
        new = json.dumps(head, separators=(",", ":")).encode()
        assert len(new) <= n
        raw[8:8 + n] = new + b" " * (n - len(new))
        st.write_bytes(bytes(raw))
    elif damage == "corrupt_safetensors":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
    elif damage == "missing_tokenizer":
        for f in d.glob("tokenizer*"):
            f.unlink()
    code, out, err = _build(["--checkpoint", str(d), "--output", str(tmp_path / "o")], capsys)
    assert code == 6, err
    assert expect in err.lower()
    _one_error_line(err)
    assert not (tmp_path / "o" / "tiny-wNa8o8-text").exists()


def test_unknown_preset_and_scheme(tmp_path, capsys):
    assert main(["build", "gemma9", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "gemma9" in err
    _one_error_line(err)
    code, _, err = _build(["--scheme", "w3a3", "--output", str(tmp_path)], capsys)
    assert code == 2 and "w3a3" in err
    _one_error_line(err)


@pytest.mark.parametrize("text", [
    "name = 'x'\ndefault_weight_bits = 3\nactivations = 'int8_static'\noutputs = 'int8'\nrules = []\n",
    "name = 'x'\nthis is not toml\n",
])
def test_malformed_scheme_file(text, tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    code, _, err = _build(["--scheme", str(f), "--output", str(tmp_path / "o")], capsys)
    assert code == 5, err
    assert "bad.toml" in err
    _one_error_line(err)


def test_bad_calibration_file_fails_before_the_export(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    code, _, err = _build(["--calibration", str(missing), "--output", str(tmp_path / "o")], capsys)
    assert code == 5 and "nope.txt" in err
    _one_error_line(err)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00junk")
    code, _, err = _build(["--calibration", str(binary), "--output", str(tmp_path / "o")], capsys)
    assert code == 5
    assert "[export]" not in err  # refused before any long work


def test_checkpoint_and_random_weights_exclusive(tmp_path, tiny_source, capsys):
    code, _, err = _build(["--checkpoint", str(tiny_source[0]), "--random-weights", "--output", str(tmp_path)],
                          capsys)
    assert code == 2 and "--random-weights" in err


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _build(["--output", str(blocker / "dist")], capsys)
    assert code == 9 and "output" in err
    _one_error_line(err)


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_output(tmp_path, capsys):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "size=1m,ro"):
        pytest.skip("needs root to mount a read-only tmpfs (covered by test_unwritable_output otherwise)")
    try:
        code, _, err = _build(["--output", str(mnt / "dist")], capsys)
    finally:
        _umount(mnt)
    assert code == 9, err
    _one_error_line(err)


def test_disk_full(tmp_path, tiny_bundles, capsys, monkeypatch, cache_env):
    """A real ENOSPC: the output is a 1 MiB tmpfs (root) or os-level writes fail with ENOSPC."""
    mnt = tmp_path / "small"
    mounted = _mount_tmpfs(mnt, "size=1m")
    if not mounted:
        from edgekit.builder import quantize

        real = quantize.repack

        def full(toml, out_path, *a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_path))

        monkeypatch.setattr(quantize, "repack", full)
        assert real is not full
    try:
        # --force: the estimate would refuse first (it sees the free space); we want the real write to fail
        code, out, err = _build(["--scheme", "fp16", "--output", str(mnt), "--force"], capsys)
        left = sorted(p.name for p in mnt.iterdir())
    finally:
        if mounted:
            _umount(mnt)
    assert code == 8, err
    assert "disk full" in err and out == ""
    _one_error_line(err)
    assert left == [], left  # nothing that looks complete, no partial folder either


def test_estimate_refuses_before_doing_anything(tmp_path, capsys, cache_env, monkeypatch):
    # full-size E2B fits this machine on the streamed route (~11 GiB); with 1 GiB available it must not start
    import edgekit.builder.pipeline as pl

    monkeypatch.setattr(pl, "mem_available", lambda: 1 << 30)
    ckpts = cache_env / "checkpoints"
    before = sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []
    code = main(["build", "e2b", "--random-weights", "--text-only", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    if code == 0:
        pytest.fail("a full-size E2B build must not start with 1 GiB of memory without --force")
    assert code == 8, err
    assert "GB of memory" in err or "GB of disk" in err
    assert "--force" in err  # the hint names the override
    _one_error_line(err)
    after = sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []
    assert after == before  # refused before making (or starting to make) weights


@pytest.mark.slow
def test_build_without_text_only_has_encoders(tiny_multimodal_bundle, capsys):
    """No --text-only: vision and audio sections (edgekit/builder/encoders.py), and inspect's check passes."""
    code = main(["inspect", str(tiny_multimodal_bundle.parent)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "vision: yes  audio: yes" in out
    assert "tf_lite_vision_encoder" in out and "tf_lite_audio_encoder_hw" in out


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_cli_build_prints_bundle_path_and_quality_hook(tiny_bundles, tmp_path, capsys, cache_env):
    out = tmp_path / "dist"
    shutil.copytree(tiny_bundles["fp16"].parent, out / "tiny-fp16-text")
    code = main(["build", "tiny", "--text-only", "--output", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    path = Path(cap.out.strip())
    assert path == out / "tiny-wNa8o8-text" / "tiny-wNa8o8-text.litertlm" and path.is_file()
    for stage in ("[export]", "[calibrate]", "[quantize]", "[verify]", "[inspect]", "[quality]"):
        assert stage in cap.err
    m = json.loads((path.parent / "manifest.json").read_text())
    q = m["quality"]
    assert q["baseline"]["sha256"] == sha256_file(tiny_bundles["fp16"])
    assert q["tokens"] > 0 and q["ppl_candidate"] > 0 and 0 <= q["top1_agreement"] <= 1
    # built in the other order (baseline last), the candidate's manifest gets the record too
    out2 = tmp_path / "dist2"
    shutil.copytree(path.parent, out2 / "tiny-wNa8o8-text")
    m2 = json.loads((out2 / "tiny-wNa8o8-text" / "manifest.json").read_text())
    del m2["quality"]
    (out2 / "tiny-wNa8o8-text" / "manifest.json").write_text(json.dumps(m2))
    assert main(["build", "tiny", "--text-only", "--scheme", "fp16", "--output", str(out2)]) == 0
    capsys.readouterr()
    m3 = json.loads((out2 / "tiny-wNa8o8-text" / "manifest.json").read_text())
    assert m3["quality"]["tokens"] == q["tokens"]
    assert m3["quality"]["baseline"]["sha256"] == sha256_file(out2 / "tiny-fp16-text" / "tiny-fp16-text.litertlm")
    assert main(["inspect", str(out2 / "tiny-wNa8o8-text")]) == 0  # still matches its bundle
    capsys.readouterr()
    # the same inputs give the same bundle: deterministic calibration and quantization, header from the inputs
    assert m["bundle"]["sha256"] == sha256_file(tiny_bundles["wNa8o8"])
    assert m["lock"]["identity"]["uuid"] == json.loads(
        (tiny_bundles["wNa8o8"].parent / "manifest.json").read_text())["lock"]["identity"]["uuid"]
