"""Model presets: exact Gemma 4 shapes (counted on the meta device), tiny's structure, width_div."""

from __future__ import annotations

import json

import pytest

from edgekit.errors import UsageError
from edgekit.models import presets
from edgekit.models.presets import get_preset

# ../shared/notes/gemma4.md, "Parameter counts (exact, counted on the meta device)".
# These are the published reference; the model below recomputes every figure.
GEMMA4_TABLE = {
    "e2b": {
        "total": 5_104_297_504, "embedding": 402_653_184, "ple": 2_348_810_240,
        "decoder": 1_863_343_104, "vision": 168_544_256, "audio": 307_183_904, "towers": 475_728_160,
    },
    "e4b": {
        "total": 7_941_100_832, "embedding": 671_088_640, "ple": 2_818_572_288,
        "decoder": 3_945_827_072, "vision": 169_330_688, "audio": 308_756_768, "towers": 478_087_456,
    },
}


@pytest.mark.parametrize("name", ["e2b", "e4b"])
def test_param_counts_match_published_table(name):
    model = get_preset(name).meta_model()
    lm = model.model.language_model

    def n(mod):
        return sum(p.numel() for p in mod.parameters())

    measured = {
        "total": n(model),
        "embedding": lm.embed_tokens.weight.numel(),
        "ple": lm.embed_tokens_per_layer.weight.numel(),
        "decoder": n(lm.layers) + n(lm.norm),
        "vision": n(model.model.vision_tower) + n(model.model.embed_vision),
        "audio": n(model.model.audio_tower) + n(model.model.embed_audio),
    }
    measured["towers"] = measured["vision"] + measured["audio"]
    assert measured == GEMMA4_TABLE[name]
    counts = get_preset(name).param_counts()
    assert {k: counts[k] for k in GEMMA4_TABLE[name]} == GEMMA4_TABLE[name]
    assert model.lm_head.weight is lm.embed_tokens.weight  # tied
    # the components add up to the whole
    assert counts["embedding"] + counts["ple"] + counts["decoder"] + counts["ple_projection"] + counts["towers"] \
        == counts["total"]


@pytest.mark.parametrize(
    "name,layers,full_every,shared,hidden,inter,double",
    [("e2b", 35, 5, 20, 1536, 6144, True), ("e4b", 42, 6, 18, 2560, 10240, False)],
)
def test_published_architecture(name, layers, full_every, shared, hidden, inter, double):
    cfg = get_preset(name).config()
    t = cfg.text_config
    assert cfg.model_type == "gemma4" and cfg.architectures == ["Gemma4ForConditionalGeneration"]
    assert (t.num_hidden_layers, t.hidden_size, t.intermediate_size) == (layers, hidden, inter)
    assert t.num_kv_shared_layers == shared and t.use_double_wide_mlp is double
    assert t.final_logit_softcapping == 30.0 and t.tie_word_embeddings
    assert t.vocab_size == t.vocab_size_per_layer_input == 262_144
    assert t.hidden_size_per_layer_input == 256 and t.sliding_window == 512
    assert [i for i, lt in enumerate(t.layer_types) if lt == "full_attention"] == list(
        range(full_every - 1, layers, full_every))
    assert t.rope_parameters["full_attention"]["rope_type"] == "proportional"
    assert t.rope_parameters["full_attention"]["partial_rotary_factor"] == 0.25
    assert t.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    model = get_preset(name).meta_model()
    layers_ = model.model.language_model.layers
    full = full_every - 1
    assert layers_[full].self_attn.head_dim == 512 and layers_[0].self_attn.head_dim == 256  # global_head_dim
    first_shared = layers - shared
    assert get_preset(name).decode_layers == tuple(range(first_shared, layers))
    # KV-shared layers own no k/v projections in transformers 5.x
    assert not hasattr(layers_[first_shared].self_attn, "k_proj")
    assert hasattr(layers_[first_shared - 1].self_attn, "k_proj")
    wide = layers_[first_shared].mlp.gate_proj.out_features
    assert wide == inter * (2 if double else 1)
    assert layers_[0].mlp.gate_proj.out_features == inter


def test_tiny_has_the_family_structure():
    p = get_preset("tiny")
    model = p.meta_model()
    lm = model.model.language_model
    t = p.config().text_config
    assert t.vocab_size == 2048 and t.vocab_size_per_layer_input == 2048
    assert t.final_logit_softcapping == 30.0 and t.max_position_embeddings >= 1024
    assert t.layer_types[4] == "full_attention" and t.layer_types[:4] == ["sliding_attention"] * 4
    assert p.decode_layers and p.decode_layers[-1] == t.num_hidden_layers - 1
    for i in p.decode_layers:
        assert lm.layers[i].self_attn.is_kv_shared_layer
        assert lm.layers[i].mlp.gate_proj.out_features == 2 * t.intermediate_size
    assert not lm.layers[0].self_attn.is_kv_shared_layer
    assert lm.embed_tokens_per_layer.weight.shape == (2048, t.num_hidden_layers * t.hidden_size_per_layer_input)
    assert model.model.vision_tower is not None and model.model.audio_tower is not None
    counts = p.param_counts()
    assert 1_000_000 < counts["total"] < 10_000_000
    assert counts["vision"] > 0 and counts["audio"] > 0 and counts["ple"] > 0


def test_tiny_tokenizer_ids_and_committed_config():
    from tokenizers import Tokenizer

    p = get_preset("tiny")
    tok = Tokenizer.from_file(str(p.tokenizer_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == p.vocab_size
    assert [tok.token_to_id(s) for s in ("<pad>", "<eos>", "<bos>")] == [0, 1, 2]
    t = p.text
    assert (t["pad_token_id"], t["eos_token_id"], t["bos_token_id"]) == (0, 1, 2)
    from transformers import Gemma4Config

    committed = json.loads((p.shipped_checkpoint_dir / "config.json").read_text())
    assert committed["model_type"] == "gemma4"
    # semantically equal to the preset (whoever rewrote it, e.g. save_pretrained after training)
    reloaded = Gemma4Config.from_dict(committed).to_dict()
    expected = p.config().to_dict()
    for volatile in ("transformers_version", "dtype", "_name_or_path"):
        reloaded.pop(volatile, None)
        expected.pop(volatile, None)
    assert reloaded == expected, "edgekit/models/assets/tiny/config.json is stale: run presets.write_tiny_config()"


def test_width_div_keeps_structure():
    p = get_preset("e2b")
    full, quarter = p.config(1).text_config, p.config(4).text_config
    assert quarter.hidden_size * 4 == full.hidden_size
    assert quarter.intermediate_size * 4 == full.intermediate_size
    # config.head_dim raises (per-layer attribute in transformers 5.17): read the kwargs
    assert p.text_kwargs(4)["head_dim"] * 4 == p.text_kwargs(1)["head_dim"]
    for key in ("vocab_size", "num_hidden_layers", "layer_types", "num_kv_shared_layers", "use_double_wide_mlp",
                "num_attention_heads", "num_key_value_heads"):
        assert getattr(quarter, key) == getattr(full, key), key
    counts = p.param_counts(4)
    # vocabulary unchanged, width / 4: main embedding shrinks exactly 4x
    assert counts["embedding"] * 4 == p.param_counts(1)["embedding"]
    assert counts["text"] == sum(p.text_param_counts(4)[k] for k in ("embedding", "ple", "decoder", "ple_projection"))
    model = p.meta_model(4)
    assert model.model.language_model.layers[4].self_attn.head_dim == 128  # global head dim / 4


def test_bad_width_div_and_unknown_preset():
    with pytest.raises(UsageError, match="e2b, e4b, tiny"):
        get_preset("gemma-7b")
    with pytest.raises(UsageError):
        get_preset("tiny").config(3)
    with pytest.raises(UsageError):
        get_preset("tiny").config(0)
    assert get_preset("E2B").name == "e2b"


def test_preset_for_config_tells_sizes_apart():
    for name in ("e2b", "e4b", "tiny"):
        p = get_preset(name)
        assert presets.preset_for_config(p.config_dict(2 if name != "tiny" else 1)).name == name
    assert presets.preset_for_config({"text_config": {"num_hidden_layers": 3}}) is None


def test_text_only_configs_match_text_counts():
    import torch
    from transformers import Gemma4ForCausalLM

    p = get_preset("tiny")
    counts = p.param_counts()
    stripped = p.meta_model(text_only=True)
    assert stripped.model.vision_tower is None and stripped.model.audio_tower is None
    assert sum(x.numel() for x in stripped.parameters()) == counts["text"] == counts["total"] - counts["towers"]
    cfg = p.text_config()
    assert cfg.model_type == "gemma4_text" and cfg._experts_implementation == "eager"
    with torch.device("meta"):
        causal = Gemma4ForCausalLM(cfg)
    assert sum(x.numel() for x in causal.parameters()) == counts["text"]
