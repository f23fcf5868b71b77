"""Bundles are checked on this machine before anything is pushed (edgekit/devices/bundle_check.py),
and a bench reads a bundle's identity from the manifest `edgekit build` writes (bench/session.py:bundle_info).

Bad files are made from the tiny bundles the suite builds (tests/fixtures_bundles.py): a text file
named .litertlm, a truncated copy, a copy whose manifest disagrees. Each is refused with exit 10 and
one error line, and a spy on every transport's push shows that nothing was sent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.cli.main import main
from edgekit.devices.bundle_check import check_bundle
from edgekit.errors import InspectionFailed

FAST = ["--warmup", "0", "--prefill", "8", "--decode", "8"]


@pytest.fixture
def pushes(monkeypatch, tmp_path):
    """Every push through any transport, recorded (and the host's work folder kept under tmp_path)."""
    from edgekit.devices import transport

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # host work_dir is ~/.cache/edgekit/work
    seen: list[str] = []
    real = transport.BaseTransport.push

    def spy(self, local, remote, *a, **k):
        seen.append(str(local))
        return real(self, local, remote, *a, **k)

    monkeypatch.setattr(transport.BaseTransport, "push", spy)
    return seen


def _copy(src: Path, folder: Path, manifest: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    shutil.copyfile(src, dst)
    if manifest:
        shutil.copyfile(src.parent / "manifest.json", folder / "manifest.json")
    return dst


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _bench(*args: str, out: Path) -> int:
    return main(["bench", "--device", "host", *args, "--no-profile-thresholds", "--output", str(out)])


# ------------------------------------------------------------------ the check itself


def test_built_bundles_pass_and_match_their_manifests(tiny_bundles, tiny_manifests):
    for scheme, b in tiny_bundles.items():
        c = check_bundle(b)
        m = tiny_manifests[scheme]
        assert c.bytes == m["bundle"]["bytes"] and c.sha256 == m["bundle"]["sha256"]
        assert sorted(c.sections) == sorted((s["name"], s["bytes"]) for s in m["sections"])
        assert "tf_lite_prefill_decode" in dict(c.sections)
        assert c.system_metadata.get("edgekit.preset") == "tiny"


def test_bad_files_are_named_with_their_problem(tiny_bundles, tmp_path):
    src = tiny_bundles["fp16"]
    text = tmp_path / "a" / "model.litertlm"
    text.parent.mkdir()
    text.write_text("this is a text file, not a bundle\n" * 20)
    with pytest.raises(InspectionFailed, match="no LITERTLM magic"):
        check_bundle(text)

    size = src.stat().st_size
    for keep in (20, 4096, size // 2, size - 1):  # inside the preamble, the header, a section, the last byte
        cut = _copy(src, tmp_path / f"cut{keep}", manifest=False)
        with open(cut, "r+b") as f:
            f.truncate(keep)
        with pytest.raises(InspectionFailed, match="truncated") as e:
            check_bundle(cut)
        assert e.value.exit_code == 10

    # the header is intact but a TFLite section is not a TFLite model
    bad = _copy(src, tmp_path / "nottflite", manifest=False)
    from edgekit.runtime.litertlm_file import read_header

    sec = next(s for s in read_header(bad).sections if s.name == "tf_lite_prefill_decode")
    with open(bad, "r+b") as f:
        f.seek(sec.begin)
        f.write(b"\0" * 8)
    with pytest.raises(InspectionFailed, match="tf_lite_prefill_decode.*not a TFLite model"):
        check_bundle(bad)


def test_manifest_that_disagrees_is_refused(tiny_bundles, tmp_path):
    src = tiny_bundles["wNa8o8"]
    # same size, another sha256: the file changed after the build
    b = _copy(src, tmp_path / "sha")
    m = json.loads((b.parent / "manifest.json").read_text())
    m["bundle"]["sha256"] = "0" * 64
    (b.parent / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InspectionFailed, match="sha256 .* differs from its manifest"):
        check_bundle(b)
    # another bundle under this manifest: size and sections differ
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(tiny_bundles["fp16"], other / src.name)
    shutil.copyfile(src.parent / "manifest.json", other / "manifest.json")
    with pytest.raises(InspectionFailed, match="bytes, its manifest .* says"):
        check_bundle(other / src.name)
    # a manifest that cannot be read
    b2 = _copy(src, tmp_path / "badjson")
    (b2.parent / "manifest.json").write_text("{not json")
    with pytest.raises(InspectionFailed, match="manifest.json is unreadable"):
        check_bundle(b2)
    # no manifest at all: a bundle from elsewhere is accepted on its header alone
    assert check_bundle(_copy(src, tmp_path / "bare", manifest=False)).manifest is None


# ------------------------------------------------------------------ bench and push refuse before any push


@pytest.mark.parametrize("case", ["text", "text-no-suffix", "truncated", "manifest-disagrees"])
def test_bench_refuses_bad_bundle_exit_10_nothing_pushed(case, tiny_bundles, tmp_path, pushes, capsys):
    src = tiny_bundles["wNa8o8"]
    d = tmp_path / "bad"
    if case.startswith("text"):
        d.mkdir()
        bad = d / ("NOT_A_BUNDLE.litertlm" if case == "text" else "NOT_A_BUNDLE")
        bad.write_text("hello\n" * 1000)
        want = "no LITERTLM magic"
    elif case == "truncated":
        bad = _copy(src, d)
        with open(bad, "r+b") as f:
            f.truncate(src.stat().st_size - 1000)
        want = "truncated"
    else:
        bad = _copy(src, d)
        m = json.loads((d / "manifest.json").read_text())
        m["sections"][-1]["bytes"] += 1
        (d / "manifest.json").write_text(json.dumps(m))
        want = "sections differ from its manifest"
    good = _copy(tiny_bundles["fp16"], tmp_path / "good")
    # a bad candidate, and a bad baseline behind a good candidate: nothing is pushed, not even the good one
    for args in (["--bundle", str(bad), "--no-baseline"], ["--bundle", str(good), "--baseline", str(bad)]):
        code = _bench(*args, "--reps", "1", *FAST, out=tmp_path / "results")
        lines = _error_lines(capsys.readouterr().err)
        assert code == 10, lines
        assert len(lines) == 1 and str(bad) in lines[0] and want in lines[0], lines
        assert pushes == []
        assert not (tmp_path / "results").exists()
        assert not (tmp_path / "home" / ".cache" / "edgekit" / "work" / "bundles").exists()


def test_push_refuses_bad_bundle_exit_10_nothing_pushed(tiny_bundles, tmp_path, pushes, capsys):
    bad = tmp_path / "x" / "tiny.litertlm"
    bad.parent.mkdir()
    bad.write_text("not a bundle")
    assert main(["push", str(bad), "--device", "host"]) == 10
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "no LITERTLM magic" in lines[0]
    assert pushes == []
    # a good bundle goes through the same command
    good = _copy(tiny_bundles["fp16"], tmp_path / "good")
    assert main(["push", str(good), "--device", "host", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["sent"] and pushes == [str(good)]
    assert Path(r["remote"]).stat().st_size == good.stat().st_size


# ------------------------------------------------------------------ bundle_info: the builder's manifest


def test_bundle_info_reads_the_builders_manifest_in_a_renamed_folder(tiny_bundles, tiny_manifests, tmp_path):
    from edgekit.bench.session import bundle_info

    assert tiny_manifests["wNa8o8"]["model"]["preset"] == "tiny"  # the shape edgekit build writes
    info = bundle_info(_copy(tiny_bundles["wNa8o8"], tmp_path / "release_candidate"))
    assert (info.model, info.scheme, info.text_only) == ("tiny", "wNa8o8", True)
    assert info.label == "tiny-wNa8o8-text" and info.sha256 == tiny_manifests["wNa8o8"]["bundle"]["sha256"]
    # without a manifest the header's own edgekit.* metadata names it
    bare = bundle_info(_copy(tiny_bundles["fp16"], tmp_path / "elsewhere", manifest=False))
    assert (bare.model, bare.scheme) == ("tiny", "fp16")


@pytest.mark.slow
def test_bench_real_bundles_moved_to_renamed_folders(tiny_bundles, tmp_path, capsys):
    """The candidate in a folder of another name; the fp16 baseline found from its manifest's model."""
    from edgekit.results.records import load_result

    dist = tmp_path / "dist"
    cand = _copy(tiny_bundles["wNa8o8"], tmp_path / "release_candidate")
    _copy(tiny_bundles["fp16"], dist / "tiny-fp16-text")
    code = _bench("--bundle", str(cand), "--dist", str(dist), "--reps", "1", *FAST, "--json", out=tmp_path / "r1")
    cap = capsys.readouterr()
    assert code == 0, cap.err
    res = json.loads(cap.out)["result"]
    bundles = res["bundles"]
    assert bundles["candidate"]["path"] == str(cand) and bundles["baseline"]["path"].endswith(
        "tiny-fp16-text/" + tiny_bundles["fp16"].name)
    assert (bundles["candidate"]["model"], bundles["candidate"]["scheme"]) == ("tiny", "wNa8o8")

    # both moved to folders whose names say nothing: the manifests alone tell what they are
    base = _copy(tiny_bundles["fp16"], tmp_path / "baseline_copy")
    code = _bench("--bundle", str(cand), "--baseline", str(base), "--reps", "1", *FAST, out=tmp_path / "r2")
    err = capsys.readouterr().err
    assert code == 0, err
    folder = next(d for d in (tmp_path / "r2").iterdir() if not d.name.startswith("."))
    r = load_result(folder)
    assert r.bundles["candidate"].label == "tiny-wNa8o8-text"
    assert r.bundles["baseline"].label == "tiny-fp16-text"
    assert all(run.ok for run in r.runs) and len(r.runs) == 2
