"""Checkpoints: shape-exact deterministic random weights, validation of bad folders before loading."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest

from edgekit.errors import CheckpointError
from edgekit.fsutil import sha256_file
from edgekit.models.checkpoint import (
    EDGEKIT_META_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    make_random_checkpoint,
    read_safetensors_header,
    write_synthetic_tokenizer,
)
from edgekit.models.presets import get_preset


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_random_checkpoint("tiny", tmp_path_factory.mktemp("ck") / "tiny", seed=0)


@pytest.fixture()
def copy(tiny_ckpt, tmp_path):
    def _copy() -> Path:
        dst = tmp_path / "ck"
        shutil.copytree(tiny_ckpt, dst)
        return dst

    return _copy


def _rewrite_weights(path: Path, mutate) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / WEIGHTS_FILE))
    mutate(tensors)
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})


# --------------------------------------------------------------- random checkpoints
def test_random_checkpoint_layout_and_load(tiny_ckpt):
    info = load_checkpoint(tiny_ckpt, "tiny")
    p = get_preset("tiny")
    assert info.preset == "tiny" and info.width_div == 1 and info.is_random and not info.is_qat
    assert info.float_dtype == "float32" and set(info.dtypes) == {"F32"}
    assert info.weights_sha256 == {WEIGHTS_FILE: sha256_file(tiny_ckpt / WEIGHTS_FILE)}
    meta = json.loads((tiny_ckpt / EDGEKIT_META_FILE).read_text())
    assert meta["seed"] == 0 and meta["width_div"] == 1 and meta["weights"] == info.weights_sha256
    assert meta["synthetic_tokenizer"] is False and "tokenizer.json" in info.tokenizer_files
    header = read_safetensors_header(tiny_ckpt / WEIGHTS_FILE)
    assert {k: v.shape for k, v in header.items()} == p.expected_shapes()
    assert info.source_record()["seed"] == 0
    # the committed tiny config is the checkpoint's config (as save_pretrained writes it)
    assert json.loads((tiny_ckpt / "config.json").read_text()) == json.loads(
        (p.shipped_checkpoint_dir / "config.json").read_text())
    gen = json.loads((tiny_ckpt / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (2, 1, 0)


def test_random_checkpoint_loads_in_transformers_without_missing_keys(tiny_ckpt):
    import torch
    from transformers import AutoTokenizer, Gemma4ForConditionalGeneration

    model, loading = Gemma4ForConditionalGeneration.from_pretrained(str(tiny_ckpt), output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    tok = AutoTokenizer.from_pretrained(str(tiny_ckpt))
    ids = tok("The module provides classes", return_tensors="pt").input_ids
    assert ids[0, 0].item() == 2  # <bos>
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 2048)
    assert float(logits.abs().max()) <= 30.0 + 1e-4  # final softcap 30 applied
    assert torch.isfinite(logits).all()


def test_same_seed_same_bytes_other_seed_differs(tiny_ckpt, tmp_path):
    again = make_random_checkpoint("tiny", tmp_path / "again", seed=0)
    other = make_random_checkpoint("tiny", tmp_path / "other", seed=1)
    assert sha256_file(again / WEIGHTS_FILE) == sha256_file(tiny_ckpt / WEIGHTS_FILE)
    assert sha256_file(other / WEIGHTS_FILE) != sha256_file(tiny_ckpt / WEIGHTS_FILE)
    assert json.loads((other / EDGEKIT_META_FILE).read_text())["seed"] == 1


def test_width_div_checkpoint_and_bf16(tmp_path):
    out = make_random_checkpoint("tiny", tmp_path / "half", seed=3, width_div=2, dtype="bfloat16")
    info = load_checkpoint(out, "tiny")
    assert info.width_div == 2 and info.float_dtype == "bfloat16"
    assert info.config["text_config"]["hidden_size"] == 64
    assert info.num_params == sum(math.prod(s) for s in get_preset("tiny").expected_shapes(2).values())
    assert json.loads((out / EDGEKIT_META_FILE).read_text())["width_div"] == 2


def test_synthetic_tokenizer_full_vocab(tmp_path):
    from tokenizers import Tokenizer

    write_synthetic_tokenizer(tmp_path, 262_144)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == 262_144
    assert [tok.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<end_of_turn>")] == [0, 1, 2, 106]
    assert tok.token_to_id("<image_soft_token>") == get_preset("e2b").top["image_token_id"]
    enc = tok.encode("héllo")
    assert enc.ids[0] == 2 and tok.decode(enc.ids) == "héllo"
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["edgekit_synthetic"] is True
    again = tmp_path / "again"
    again.mkdir()
    write_synthetic_tokenizer(again, 262_144)
    assert sha256_file(again / "tokenizer.json") == sha256_file(tmp_path / "tokenizer.json")


# --------------------------------------------------------------- bad inputs
def _fails(path, preset, needle):
    with pytest.raises(CheckpointError, match=needle) as ei:
        load_checkpoint(path, preset)
    assert ei.value.exit_code == 6 and ei.value.hint
    assert "\n" not in str(ei.value)
    return ei.value


def test_missing_dir_and_not_a_dir(tmp_path):
    _fails(tmp_path / "nope", "tiny", "does not exist")
    f = tmp_path / "file"
    f.write_text("x")
    _fails(f, "tiny", "not a folder")


def test_no_config_and_bad_config(copy):
    ck = copy()
    (ck / "config.json").unlink()
    _fails(ck, "tiny", "no config.json")
    (ck / "config.json").write_text("{not json")
    _fails(ck, "tiny", "config.json: not valid JSON")
    (ck / "config.json").write_text("[1, 2]")
    _fails(ck, "tiny", "not a JSON object")


def test_wrong_model_type(copy):
    ck = copy()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ck / "config.json").write_text(json.dumps(cfg))
    _fails(ck, "tiny", "model_type is 'llama', expected 'gemma4'")
    cfg["model_type"] = "gemma4_text"
    (ck / "config.json").write_text(json.dumps(cfg))
    _fails(ck, "tiny", "text-only Gemma4ForCausalLM")


def test_other_model_size(copy):
    ck = copy()
    (ck / "config.json").write_text(json.dumps(get_preset("e4b").config_dict(8)))
    err = _fails(ck, "e2b", "is a e4b checkpoint")
    assert "e4b" in err.hint
    (ck / "config.json").write_text(json.dumps(get_preset("e2b").config_dict(8)))
    _fails(ck, "tiny", "is a e2b checkpoint")


def test_config_width_mismatch(copy):
    ck = copy()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 500
    (ck / "config.json").write_text(json.dumps(cfg))
    _fails(ck, "tiny", "intermediate_size is 500")


def test_shape_mismatch_names_the_tensor(copy):
    import torch

    ck = copy()
    name = "model.language_model.layers.7.mlp.gate_proj.weight"
    _rewrite_weights(ck, lambda t: t.__setitem__(name, torch.zeros(512, 128)))
    _fails(ck, "tiny", rf"{name} has shape \[512, 128\], tiny needs \[1024, 128\]")


def test_missing_and_unexpected_tensor(copy):
    ck = copy()
    name = "model.language_model.layers.2.self_attn.q_proj.weight"
    _rewrite_weights(ck, lambda t: t.pop(name))
    _fails(ck, "tiny", rf"tensor {name} is missing")
    ck2 = ck.parent / "ck2"
    shutil.copytree(ck, ck2)
    shutil.copyfile(ck.parent / "ck" / WEIGHTS_FILE, ck2 / WEIGHTS_FILE)

    import torch

    def add(t):
        t[name] = torch.zeros(128, 128)
        t["model.language_model.layers.2.mystery.weight"] = torch.zeros(2)

    _rewrite_weights(ck2, add)
    _fails(ck2, "tiny", "unexpected tensor model.language_model.layers.2.mystery.weight")


def test_kv_shared_kv_projections_are_tolerated(copy):
    import torch

    ck = copy()
    extra = "model.language_model.layers.8.self_attn.k_proj.weight"  # published checkpoints keep these
    _rewrite_weights(ck, lambda t: t.__setitem__(extra, torch.zeros(32, 128)))
    info = load_checkpoint(ck, "tiny")
    assert extra in info.unexpected


def test_corrupt_safetensors(copy):
    ck = copy()
    w = ck / WEIGHTS_FILE
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 1000])  # truncated
    _fails(ck, "tiny", "truncated: tensor")
    w.write_bytes(struct.pack("<Q", 10 ** 9) + data[8:100])  # header length past the end
    _fails(ck, "tiny", "corrupt safetensors header")
    n = struct.unpack("<Q", data[:8])[0]
    w.write_bytes(data[:8] + b"{" * n + data[8 + n:])  # header not JSON
    _fails(ck, "tiny", "not valid JSON")
    w.write_bytes(b"abc")
    _fails(ck, "tiny", "not a safetensors file")
    w.unlink()
    _fails(ck, "tiny", r"no \*\.safetensors")


def test_missing_or_foreign_tokenizer(copy):
    ck = copy()
    (ck / "tokenizer.json").unlink()
    _fails(ck, "tiny", "no tokenizer")
    write_synthetic_tokenizer(ck, 4096)  # ids past tiny's 2048
    _fails(ck, "tiny", "token ids reach 4095 but the model's vocabulary has 2048")


def test_qat_checkpoint_detected(copy):
    import torch

    ck = copy()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gemma", "num_bits": 4, "quantize_embeddings": True,
                                  "module_quant_configs": {r"mlp\.": {"num_bits": 2}}}
    (ck / "config.json").write_text(json.dumps(cfg))
    name = "model.language_model.layers.0.mlp.up_proj"

    def pack(t):
        t[name + ".weight"] = torch.zeros(512, 128 // 4, dtype=torch.uint8)  # int2, four a byte
        t[name + ".weight_scale"] = torch.ones(512, 1)
        t[name + ".input_activation_scale"] = torch.tensor(0.1)
        t["model.language_model.layers.0.self_attn.k_cache_scale"] = torch.tensor(0.5)

    _rewrite_weights(ck, pack)
    info = load_checkpoint(ck, "tiny")
    assert info.is_qat and info.quantization_config["module_quant_configs"] == {r"mlp\.": {"num_bits": 2}}
    assert info.dtypes["U8"] == 1
    # the same packed tensor without quant_method gemma is a shape mismatch
    del cfg["quantization_config"]
    (ck / "config.json").write_text(json.dumps(cfg))
    _fails(ck, "tiny", rf"{name}.weight has shape \[512, 32\]")


def test_sharded_index_with_missing_shard(copy):
    ck = copy()
    (ck / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    _fails(ck, "tiny", "model-00001-of-00002.safetensors named in model.safetensors.index.json is missing")


def test_ensure_reuses_matching_checkpoint(tiny_ckpt, tmp_path):
    from edgekit.models.checkpoint import ensure_random_checkpoint, random_checkpoint_bytes

    dst = tmp_path / "cache"
    shutil.copytree(tiny_ckpt, dst)
    before = (dst / WEIGHTS_FILE).stat().st_mtime_ns
    assert ensure_random_checkpoint("tiny", dst, seed=0) == dst
    assert (dst / WEIGHTS_FILE).stat().st_mtime_ns == before  # reused, not rewritten
    ensure_random_checkpoint("tiny", dst, seed=5)  # other seed: remade
    assert json.loads((dst / EDGEKIT_META_FILE).read_text())["seed"] == 5
    header_len = struct.unpack("<Q", (dst / WEIGHTS_FILE).read_bytes()[:8])[0]
    assert (dst / WEIGHTS_FILE).stat().st_size == 8 + header_len + random_checkpoint_bytes("tiny")


def test_bad_arguments_and_unwritable_output(tmp_path):
    import os

    from edgekit.errors import OutputNotWritable, UsageError

    with pytest.raises(UsageError):
        make_random_checkpoint("tiny", tmp_path / "x", dtype="int8")
    with pytest.raises(UsageError):
        make_random_checkpoint("tiny", tmp_path / "x", width_div=3)
    with pytest.raises(UsageError, match="known presets"):
        make_random_checkpoint("gemma-9b", tmp_path / "x")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("permissions not enforced for this user")
        with pytest.raises(OutputNotWritable):
            make_random_checkpoint("tiny", ro / "ck")
    finally:
        os.chmod(ro, 0o755)


def test_refuses_when_disk_too_small(tmp_path, monkeypatch):
    from collections import namedtuple

    from edgekit.errors import ResourceError
    from edgekit.models import checkpoint

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ResourceError, match=r"needs 0\.02 GB, 0\.00 GB free"):
        make_random_checkpoint("tiny", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_shipped_tiny_folder():
    """The committed tiny folder is a valid tiny checkpoint once trained weights are added."""
    p = get_preset("tiny")
    if p.shipped_weights is not None:
        info = load_checkpoint(p.shipped_weights, "tiny")
        assert info.width_div == 1 and info.tokenizer_files[0] == "tokenizer.json"
    else:
        _fails(p.shipped_checkpoint_dir, "tiny", r"no \*\.safetensors weight files")


def test_chunked_embedding_init(tmp_path, monkeypatch):
    """Big embedding tables are drawn in row blocks: deterministic, HF-like statistics, loadable."""
    import torch
    from safetensors import safe_open

    from edgekit.models import checkpoint

    monkeypatch.setattr(checkpoint, "CHUNKED_INIT_MIN_NUMEL", 100_000)  # tiny's tables take the chunked path
    a = make_random_checkpoint("tiny", tmp_path / "a", seed=0)
    b = make_random_checkpoint("tiny", tmp_path / "b", seed=0)
    assert sha256_file(a / WEIGHTS_FILE) == sha256_file(b / WEIGHTS_FILE)
    load_checkpoint(a, "tiny")
    with safe_open(str(a / WEIGHTS_FILE), "pt") as f:
        ple = f.get_tensor("model.language_model.embed_tokens_per_layer.weight")
        emb = f.get_tensor("model.language_model.embed_tokens.weight")
    assert ple.shape == (2048, 320) and torch.count_nonzero(ple[0]) == 0  # <pad> row zero, as transformers does
    assert abs(float(ple[1:].std()) - 0.02) < 0.001 and abs(float(ple.mean())) < 0.001
    assert not torch.equal(emb[1:5], ple[1:5, :128])  # per-tensor streams
    # blocks change nothing but memory: a different block size gives the same table
    small = checkpoint.ChunkedTensor((2048, 320), 0.02, 7, torch.float32, 0, rows_per_chunk=100)
    big = checkpoint.ChunkedTensor((2048, 320), 0.02, 7, torch.float32, 0, rows_per_chunk=2048)
    assert torch.equal(torch.cat(list(small.chunks())), torch.cat(list(big.chunks())))
