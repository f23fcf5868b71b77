"""Quantization schemes: data round trips, first-match-wins, built-in bit maps, malformed files, calibration."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgekit.errors import ConfigError, UsageError
from edgekit.models.presets import get_preset
from edgekit.schemes import Rule, Scheme, dump_scheme_toml, list_schemes, load_scheme, load_scheme_file
from edgekit.schemes.calibration import (
    DEFAULT_CALIBRATION,
    load_calibration,
    parse_calibration,
    select_calibration_prompts,
)
from edgekit.schemes.scheme import (
    expand_placeholders,
    parse_scheme_toml,
    quantizable_modules,
    scheme_from_quantization_config,
)

ROOT = Path(__file__).resolve().parents[2]

# The E2B mobile checkpoint's map as published (../shared/notes/gemma4.md), written the
# way transformers reads it (quantization_config of a quant_method "gemma" checkpoint).
PUBLISHED_E2B = {
    "quant_method": "gemma",
    "num_bits": 4,
    "quantize_embeddings": True,
    "module_quant_configs": {
        r"^lm_head$": {"num_bits": 2},
        r"language_model\.embed_tokens$": {"num_bits": 2},
        r"language_model\.embed_tokens_per_layer$": {"num_bits": 4},
        r"language_model\.layers\.(\d|1[0-4])\.mlp\.": {"num_bits": 4},
        r"language_model\.layers\.\d+\.mlp\.": {"num_bits": 2},
        r"language_model\.layers\.\d+\.per_layer_input_gate$": {"num_bits": 8},
        r"language_model\.layers\.\d+\.per_layer_projection$": {"num_bits": 8},
        r"language_model\.layers\.\d+\.self_attn\.": {"num_bits": 4},
        r"vision_tower": {"num_bits": 8},
        r"audio_tower(?!.*lconv1d\.linear_start)": {"num_bits": 2},
        r"audio_tower\.layers\.\d+\.lconv1d\.linear_start\.": {"num_bits": 4},
    },
    "modules_to_not_convert": [
        "model.vision_tower.patch_embedder", "model.audio_tower.subsample_conv_projection",
        "model.audio_tower.output_proj", "relative_k_proj", "model.embed_audio", "model.embed_vision",
        "per_layer_model_projection",
    ],
}

L = "model.language_model.layers.{}.{}"


def _published_bits(module: str) -> int | None:
    """transformers' own reading of PUBLISHED_E2B (quantizers_utils + gemma_quant), on one name."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    if not should_convert_module(module, PUBLISHED_E2B["modules_to_not_convert"]):
        return None
    mqc = PUBLISHED_E2B["module_quant_configs"]
    joined = re.compile("|".join(f"(?P<g{i}>{p})" for i, p in enumerate(mqc)))
    hit = joined.search(module)
    if hit is None:
        return PUBLISHED_E2B["num_bits"]
    i = next(int(g[1:]) for g, v in hit.groupdict().items() if v is not None)
    return list(mqc.values())[i]["num_bits"]


# --------------------------------------------------------------- built-in maps
def test_e2b_builtin_map():
    s = load_scheme("wNa8o8", "e2b")
    assert s.name == "wNa8o8" and s.resolved_for == "e2b"
    assert s.activations == "int8_static" and s.outputs == "int8" and s.weight_granularity == "channel"
    assert s.bits_for(L.format(20, "mlp.gate_proj")) == 2
    assert s.bits_for(L.format(34, "mlp.down_proj")) == 2
    assert s.bits_for(L.format(15, "mlp.up_proj")) == 2
    assert s.bits_for(L.format(14, "mlp.up_proj")) == 4
    assert s.bits_for(L.format(3, "mlp.gate_proj")) == 4
    assert s.bits_for(L.format(20, "self_attn.q_proj")) == 4
    assert s.bits_for(L.format(3, "self_attn.k_proj")) == 4
    assert s.bits_for(L.format(7, "per_layer_input_gate")) == 8
    assert s.bits_for("lm_head") == 2
    assert s.bits_for("model.language_model.embed_tokens") == 2
    assert s.bits_for("model.language_model.embed_tokens_per_layer") == 4
    assert s.bits_for("model.language_model.per_layer_model_projection") is None
    assert s.bits_for("model.vision_tower.encoder.layers.0.mlp.up_proj.linear") == 8
    assert s.bits_for("model.vision_tower.patch_embedder.input_proj") is None
    assert s.bits_for("model.audio_tower.layers.3.lconv1d.linear_start.linear") == 4
    assert s.bits_for("model.audio_tower.layers.3.lconv1d.linear_end.linear") == 2
    assert s.bits_for("model.audio_tower.layers.3.self_attn.relative_k_proj") is None


def test_e2b_builtin_equals_published_map_on_every_module():
    """Recomputed with transformers' own matching of the published quantization_config."""
    s = load_scheme("wNa8o8", "e2b")
    modules = quantizable_modules("e2b")
    assert len(modules) > 500
    diffs = [(m, s.bits_for(m), _published_bits(m)) for m in modules if s.bits_for(m) != _published_bits(m)]
    assert diffs == []
    qat = scheme_from_quantization_config(PUBLISHED_E2B, preset="e2b")
    assert all(qat.bits_for(m) == _published_bits(m) for m in modules)


def test_tiny_decode_layers_are_2bit():
    p = get_preset("tiny")
    s = load_scheme("wNa8o8", p)
    assert p.decode_layers == (6, 7, 8, 9)
    for i in range(p.num_layers):
        want = 2 if i in p.decode_layers else 4
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert s.bits_for(L.format(i, f"mlp.{proj}")) == want, (i, proj)
        assert s.bits_for(L.format(i, "self_attn.o_proj")) == 4


def test_e4b_map():
    s = load_scheme("wNa8o8", "e4b")
    assert s.bits_for(L.format(30, "mlp.gate_proj")) == 4  # E4B: all MLPs 4-bit
    assert s.bits_for(L.format(30, "self_attn.q_proj")) == 4
    assert s.bits_for("model.language_model.embed_tokens_per_layer") == 2
    assert s.bits_for("model.language_model.embed_tokens") == 2
    assert s.bits_for(L.format(1, "per_layer_projection")) == 8


def test_fp16_keeps_everything_float():
    s = load_scheme("fp16", "tiny")
    assert s.is_float and s.float_dtype == "float16" and not s.static_activations
    assert {b for _, b in s.module_bits("tiny").items()} == {None}


def test_describe_for_groups():
    groups = dict(load_scheme("wNa8o8", "e2b").describe_for("e2b"))
    assert groups["model.language_model.layers.[15-34].mlp"] == 2
    assert groups["model.language_model.layers.[0-14].mlp"] == 4
    assert groups["model.language_model.layers.[0-34].self_attn"] == 4
    assert groups["lm_head"] == 2
    tiny = dict(load_scheme("wNa8o8", "tiny").describe_for("tiny", text_only=True))
    assert tiny["model.language_model.layers.[6-9].mlp"] == 2
    assert not any("vision" in g or "audio" in g for g in tiny)


def test_unknown_scheme_and_missing_file():
    with pytest.raises(UsageError, match="wNa8o8, fp16"):
        load_scheme("int3-magic", "tiny")
    with pytest.raises(UsageError, match="does not exist"):
        load_scheme("nope/scheme.toml", "tiny")
    assert set(list_schemes()) == {"wNa8o8", "fp16"}
    assert load_scheme("WNA8O8", "tiny").name == "wNa8o8"


# --------------------------------------------------------------- semantics
def _scheme(rules, default=4, **kw) -> Scheme:
    return Scheme(name="t", description="", version=1, weight_rules=tuple(rules), default_weight_bits=default,
                  activations=kw.get("activations", "int8_static"), outputs=kw.get("outputs", "int8"))


def test_first_match_wins_and_keep_float():
    s = _scheme([Rule(r"mlp\.down_proj", None), Rule(r"mlp\.", 2), Rule(r"down_proj", 8)])
    assert s.bits_for("layers.1.mlp.down_proj") is None  # first rule, although two later ones match too
    assert s.bits_for("layers.1.mlp.up_proj") == 2
    assert s.bits_for("layers.1.attn.down_proj") == 8
    assert s.bits_for("layers.1.attn.q_proj") == 4  # default
    assert s.rule_for("layers.1.attn.q_proj") is None
    swapped = _scheme([Rule(r"mlp\.", 2), Rule(r"mlp\.down_proj", None)])
    assert swapped.bits_for("layers.1.mlp.down_proj") == 2


def test_placeholders_need_resolving():
    raw = load_scheme("wNa8o8")  # no preset: placeholders stay
    assert raw.has_placeholders
    with pytest.raises(ValueError):
        raw.bits_for(L.format(20, "mlp.gate_proj"))
    assert expand_placeholders(r"layers\.{decode_layers}\.", {"decode_layers": (1, 12)}) == r"layers\.(?:12|1)\."
    assert expand_placeholders(r"x{decode_layers}", {"decode_layers": ()}) == "x(?!)"
    assert expand_placeholders(r"\d{2}", {"decode_layers": (1,)}) == r"\d{2}"


@pytest.mark.parametrize("name", ["wNa8o8", "fp16"])
@pytest.mark.parametrize("preset", [None, "e2b", "e4b", "tiny"])
def test_round_trips(name, preset):
    s = load_scheme(name, preset)
    assert Scheme.from_dict(s.to_dict()) == s
    text = dump_scheme_toml(s)
    assert parse_scheme_toml(text) == s
    assert dump_scheme_toml(parse_scheme_toml(text)) == text
    assert s.to_dict()["format"] == 1


def test_toml_emitter_escapes(tmp_path):
    s = _scheme([Rule("it's \"quoted\"\\d\ttab", 8, note="a\nb"), Rule(r"^lm_head$", None)], default=None,
                activations="float", outputs="float")
    path = tmp_path / "s.toml"
    path.write_text(dump_scheme_toml(s), encoding="utf-8")
    assert load_scheme_file(path) == s
    assert load_scheme(str(path), "tiny").resolved_for == "tiny"


# --------------------------------------------------------------- malformed files
GOOD = """
name = "mine"
default_weight_bits = 4
activations = "int8_static"
outputs = "int8"
[[rules]]
pattern = 'mlp\\.'
bits = 2
"""


@pytest.mark.parametrize(
    "text,needle",
    [
        (GOOD.replace("bits = 2", "bits = 3"), r"rules\[0\]\.bits: 3 bits"),
        (GOOD.replace("bits = 2", "bits = true"), r"rules\[0\]\.bits"),
        (GOOD.replace("bits = 2", "bits = 'half'"), r"rules\[0\]\.bits"),
        (GOOD.replace("mlp\\.", "mlp(["), r"rules\[0\]\.pattern: invalid regular expression"),
        (GOOD.replace("mlp\\.", "layers.{middle_layers}"), r"unknown placeholder \{middle_layers\}"),
        (GOOD.replace('name = "mine"\n', ""), r"name: missing"),
        (GOOD.replace('outputs = "int8"\n', ""), r"outputs: missing"),
        (GOOD + "colour = 'red'\n", r"colour: unknown key"),
        (GOOD.replace("bits = 2", "bits = 2\nbitz = 4"), r"rules\[0\]\.bitz: unknown key"),
        (GOOD.replace("default_weight_bits = 4", "default_weight_bits = 16"), r"default_weight_bits"),
        (GOOD.replace('activations = "int8_static"', 'activations = "int4"'), r"activations: 'int4'"),
        (GOOD.replace('activations = "int8_static"', "activations = 8"), r"activations: must be a string"),
        (GOOD.replace('activations = "int8_static"', 'activations = "float"'), r"outputs: int8 outputs"),
        ("format = 9\n" + GOOD, r"format: format 9"),
        (GOOD.replace("[[rules]]\npattern = 'mlp\\.'\nbits = 2\n", "rules = 'all'\n"), r"rules: must be a list"),
        (GOOD.replace("pattern = 'mlp\\.'\n", ""), r"rules\[0\]\.pattern: missing"),
        ("name = 'x\n", r"not valid TOML"),
        (GOOD.replace('name = "mine"', 'name = "has space"'), r"name: 'has space'"),
    ],
)
def test_malformed_scheme_files(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle) as ei:
        load_scheme(str(path), "tiny")
    assert str(path) in str(ei.value)  # the message names the file
    assert ei.value.exit_code == 5


def test_good_custom_file_and_non_utf8(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD, encoding="utf-8")
    s = load_scheme(str(path), "tiny")
    assert s.bits_for(L.format(0, "mlp.up_proj")) == 2 and s.bits_for("lm_head") == 4
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(GOOD.replace("mine", "m\xe9ine").encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_scheme_file(bad)


def test_qat_config_conversion_detects_order_conflict():
    conflicting = {
        "quant_method": "gemma", "num_bits": 4, "quantize_embeddings": False,
        # transformers' joined alternation picks the leftmost match ("language_model" starts
        # earlier than "mlp"), first-rule-wins would pick the mlp rule.
        "module_quant_configs": {r"mlp\.": {"num_bits": 2}, r"language_model\.layers": {"num_bits": 8}},
    }
    with pytest.raises(ConfigError, match="first-match-wins"):
        scheme_from_quantization_config(conflicting, preset="tiny")
    s = scheme_from_quantization_config(conflicting)
    assert s.bits_for("model.language_model.embed_tokens") is None  # quantize_embeddings false


# --------------------------------------------------------------- calibration
def test_shipped_calibration_is_training_text():
    prompts = load_calibration()
    assert 30 <= len(prompts) <= 100
    assert all(len(p) > 100 for p in prompts)
    corpus = ROOT / ".cache" / "corpus"
    if not (corpus / "train.txt").exists():
        import subprocess
        import sys

        subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_corpus.py"), str(corpus)], check=True)
    train = (corpus / "train.txt").read_text(encoding="utf-8")
    heldout = (corpus / "heldout.txt").read_text(encoding="utf-8")
    assert prompts == select_calibration_prompts(train, heldout, n=len(prompts))
    for p in prompts:
        assert p in train and p not in heldout


def test_calibration_file_errors(tmp_path):
    assert parse_calibration("# c\none\nline two\n\n\n  \nthree\r\n") == ["one\nline two", "three"]
    good = tmp_path / "c.txt"
    good.write_text("\ufeffa prompt\n\nanother\n", encoding="utf-8")
    assert load_calibration(good) == ["a prompt", "another"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no prompts"):
        load_calibration(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_calibration(latin)
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibration(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="folder"):
        load_calibration(tmp_path)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\x00def")
    with pytest.raises(ConfigError, match="NUL"):
        load_calibration(binary)
    assert DEFAULT_CALIBRATION.is_file()


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match="3 bits"):
        Rule("mlp", 3)
    with pytest.raises(ConfigError, match="invalid regular expression"):
        Rule("mlp(", 4)
    with pytest.raises(ConfigError, match="activations 'int4'"):
        _scheme([], activations="int4")
    s = _scheme([Rule("a", 2)])
    assert isinstance(s.weight_rules, tuple)
