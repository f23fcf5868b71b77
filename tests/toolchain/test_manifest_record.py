"""The bundle manifest record (edgekit/results/manifest.py): the typed view of what `edgekit build`
writes, its schema, a read-modify-write that keeps unknown keys and bytes, the folder naming
rule, and that no other module reads manifest.json or builds the folder name by hand."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.results import manifest as mf

ROOT = Path(__file__).resolve().parents[2]


def test_bundle_name_round_trip_and_what_is_not_one():
    for model, scheme, text in [("e2b", "wNa8o8", True), ("e4b", "fp16", False), ("tiny", "w4-mlp", True)]:
        name = mf.bundle_name(model, scheme, text)
        assert mf.parse_bundle_name(name) == (model, scheme, text)
    assert mf.bundle_name("tiny", "fp16", None) == "tiny-fp16"
    for other in ("release_candidate", "tiny-text", "-fp16", "tiny--text", "x"):
        assert mf.parse_bundle_name(other) == (None, None, None), other


def test_built_manifest_reads_typed_and_writes_back_byte_identical(tiny_bundles, tmp_path):
    bundle = tiny_bundles["wNa8o8"]
    path = bundle.parent / mf.MANIFEST_FILE
    m = mf.read_manifest(path)
    assert (m.schema, m.kind) == (mf.MANIFEST_SCHEMA, mf.MANIFEST_KIND)
    assert (m.preset, m.scheme_name, m.text_only, m.width_div) == ("tiny", "wNa8o8", True, 1)
    assert m.name == m.folder_name == bundle.parent.name
    assert m.bundle_file == bundle.name and m.bundle_bytes == bundle.stat().st_size
    assert m.bundle_sha256 and len(m.bundle_sha256) == 64
    assert m.weights_sha256 == m.source["weights_sha256"] and all(len(v) == 64 for v in m.weights_sha256.values())
    assert m.sections and all(isinstance(n, str) and b > 0 for n, b in m.sections)
    assert m.lock and m.runtime and m.build["prefill_length"] > 0 and m.scheme["name"] == "wNa8o8"
    # the file format is unchanged: reading and writing gives the builder's bytes back
    out = mf.write_manifest(tmp_path / mf.MANIFEST_FILE, m)
    assert out.read_bytes() == path.read_bytes()
    # the view's data is its own copy
    m.to_dict()["model"]["preset"] = "changed"
    assert m.preset == "tiny" and m.model["preset"] == "tiny"


def test_update_keeps_unknown_keys(tiny_bundles, tmp_path):
    p = tmp_path / mf.MANIFEST_FILE
    data = json.loads((tiny_bundles["fp16"].parent / mf.MANIFEST_FILE).read_text())
    data["from_a_later_edgekit"] = {"kept": [1, 2]}
    p.write_text(json.dumps(data))
    m = mf.update_manifest(p, quality={"top1_agreement": 1.0})
    back = json.loads(p.read_text())
    assert back["from_a_later_edgekit"] == {"kept": [1, 2]} and back["quality"] == {"top1_agreement": 1.0}
    assert m.quality == {"top1_agreement": 1.0} and m.preset == "tiny" and m.scheme_name == "fp16"


def test_strict_reader_refuses_lenient_reader_reads_what_is_there(tmp_path):
    p = tmp_path / mf.MANIFEST_FILE
    p.write_text(json.dumps({"schema": 2, "kind": mf.MANIFEST_KIND, "model": {"preset": "e2b"}}))
    with pytest.raises(ConfigError, match="manifest schema 2, this edgekit reads 1"):
        mf.read_manifest(p)
    m = mf.read_manifest(p, strict=False)
    assert (m.schema, m.preset, m.scheme_name, m.text_only, m.sections) == (2, "e2b", None, None, ())
    # another tool's manifest: nothing invented, wrong types read as absent
    p.write_text(json.dumps({"model": "e2b", "bundle": {"bytes": "12"}, "sections": [{"name": "a"}]}))
    m = mf.read_manifest(p, strict=False)
    assert (m.preset, m.bundle_bytes, m.sections, m.folder_name) == (None, None, (), None)
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="is not a JSON object"):
        mf.read_manifest(p, strict=False)
    p.write_text("{")
    with pytest.raises(ConfigError, match="is unreadable"):
        mf.read_beside(tmp_path / "x.litertlm")
    assert mf.read_beside(tmp_path / "elsewhere" / "x.litertlm") == (None, None)


def test_bundle_info_takes_identity_from_the_manifest_not_the_folder(tiny_bundles, tmp_path):
    """A real bundle in a folder named like another build: the builder's manifest keys win."""
    from edgekit.bench.session import bundle_info

    src = tiny_bundles["wNa8o8"]
    d = tmp_path / mf.bundle_name("e4b", "fp16", False)  # a folder name that lies
    d.mkdir()
    shutil.copyfile(src, d / src.name)
    shutil.copyfile(src.parent / mf.MANIFEST_FILE, d / mf.MANIFEST_FILE)
    info = bundle_info(d / src.name)
    assert (info.model, info.scheme, info.text_only) == ("tiny", "wNa8o8", True)
    assert info.manifest == json.loads((src.parent / mf.MANIFEST_FILE).read_text())  # carried whole
    assert info.record.preset == "tiny"


def _code_files():
    for top in ("edgekit", "scripts"):
        for p in sorted((ROOT / top).rglob("*.py")):
            if "__pycache__" not in p.parts:
                yield p


def test_manifest_file_and_folder_rule_live_in_one_module():
    """No module but edgekit/results/manifest.py names manifest.json in code, parses a manifest
    with json.load(s) or glues "-text" into a name (docstrings and comments may mention them)."""
    home = ROOT / "edgekit" / "results" / "manifest.py"
    found = []
    for p in _code_files():
        if p == home:
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        pieces = {id(c) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for c in n.values}
        for n in ast.walk(tree):
            if not (isinstance(n, ast.Constant) and isinstance(n.value, str)):
                continue
            s = n.value
            if s == "manifest.json" or s == "-text" or (id(n) in pieces and s.endswith("-text")):
                found.append(f"{p.relative_to(ROOT)}:{n.lineno}: {s!r}")
        for n in ast.walk(tree):  # json.load(s) of anything named like a manifest
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("load", "loads") \
                    and isinstance(n.func.value, ast.Name) and n.func.value.id == "json" \
                    and re.search(r"manifest|mpath", ast.unparse(n.args[0]) if n.args else "", re.I):
                found.append(f"{p.relative_to(ROOT)}:{n.lineno}: {ast.unparse(n)}")
    assert found == []
    # the check reads what it claims: the home module has both
    home_consts = {n.value for n in ast.walk(ast.parse(home.read_text())) if isinstance(n, ast.Constant)}
    assert "manifest.json" in home_consts and "text" in home_consts


# ------------------------------------------------------------------ eval and sweep records


def test_quality_result_reads_evaluate_and_manifest_shapes_and_writes_them_back_unchanged():
    from edgekit.results.evaluation import QualityResult

    ev = {"schema": 1, "ppl_ratio": 1.25, "top1_agreement": 0.5, "kl_mean": 0.1, "ppl_candidate": 50.0,
          "ppl_baseline": 40.0, "tokens": 254, "eval_text_sha256": "ab" * 32, "kl_max": 2.0,
          "top1_accuracy_candidate": 0.2, "top1_accuracy_baseline": 0.3, "windows": 2, "candidate": "c.litertlm",
          "baseline": "b.litertlm", "gate": {"passed": True}}
    q = QualityResult.from_dict(ev)
    assert (q.ppl_ratio, q.top1_agreement, q.tokens, q.kl_max, q.baseline) == (1.25, 0.5, 254, 2.0, "b.litertlm")
    assert json.dumps(q.to_dict()) == json.dumps(ev)  # same keys, same order
    stored = {**ev, "baseline": {"bundle": "dist/tiny-fp16-text/x.litertlm", "sha256": "cd" * 32}}
    assert QualityResult.from_dict(stored).baseline is None  # the manifest's record names the baseline apart
    with pytest.raises(ConfigError, match="no ppl_ratio, top1_agreement"):
        QualityResult.from_dict({"skipped": "the interpreter would not fit"})


def test_sweep_result_writes_the_json_it_always_wrote():
    from edgekit.results.evaluation import SweepResult, SweepRow

    row = SweepRow(kind="group", scheme="s", layers=(0, 1), label="0-1", layer_types=("sliding_attention",) * 2,
                   decode_layers=(1,), ppl_ratio=1.1, top1_agreement=0.9, kl_mean=0.01, ppl_candidate=11.0,
                   bundle="b", bundle_bytes=10, build_seconds=1.0, reused=False, ppl_increase_vs_reference=0.01,
                   tolerates_2bit=True)
    res = SweepResult(model="tiny", scheme="wNa8o8", reference_mlp_bits=4, groups=((0, 1),), decode_layers=(1,),
                      tolerance=0.02, fp16_bundle="f", ppl_fp16=10.0, tokens=254, eval_text_sha256="ab",
                      weights_sha256=None, rows=(row,), seconds=3.0)
    d = json.loads(json.dumps(res.to_dict()))
    assert list(d) == ["model", "scheme", "reference_mlp_bits", "groups", "decode_layers", "tolerance", "fp16_bundle",
                       "ppl_fp16", "tokens", "eval_text_sha256", "weights_sha256", "rows", "seconds"]
    assert list(d["rows"][0]) == ["kind", "scheme", "layers", "label", "layer_types", "decode_layers", "ppl_ratio",
                                  "top1_agreement", "kl_mean", "ppl_candidate", "bundle", "bundle_bytes",
                                  "build_seconds", "reused", "ppl_increase_vs_reference", "tolerates_2bit"]
    assert d["groups"] == [[0, 1]] and d["rows"][0]["layers"] == [0, 1] and d["rows"][0]["tolerates_2bit"] is True
