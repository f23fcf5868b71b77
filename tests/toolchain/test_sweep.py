"""edgekit sweep: layer grouping and the per-group schemes (pure), and the CLI's option errors."""

from __future__ import annotations

import pytest

from edgekit.builder.sweep import layer_groups, variant_schemes
from edgekit.cli.main import main
from edgekit.errors import UsageError
from edgekit.models.presets import get_preset
from edgekit.schemes import load_scheme


@pytest.mark.parametrize("n,groups,size", [(10, 3, None), (10, None, 4), (35, 7, None), (10, 10, None), (10, None, 10)])
def test_layer_groups_cover_every_layer_once_in_order(n, groups, size):
    gs = layer_groups(n, groups, size)
    assert [i for g in gs for i in g] == list(range(n))
    if groups:
        assert len(gs) == groups
        assert max(map(len, gs)) - min(map(len, gs)) <= 1
    else:
        assert all(len(g) == size for g in gs[:-1]) and 1 <= len(gs[-1]) <= size


@pytest.mark.parametrize("groups,size", [(0, None), (11, None), (None, 0), (None, 11), (2, 3)])
def test_layer_groups_bad_options(groups, size):
    with pytest.raises(UsageError):
        layer_groups(10, groups, size)


def test_variant_schemes_put_exactly_one_group_at_two_bits():
    p = get_preset("tiny")
    base = load_scheme("wNa8o8", p)
    groups = layer_groups(p.num_layers, 3)
    ref, variants, bits = variant_schemes(base, p, groups)
    # the reference drops the decode-layer 2-bit rule: every MLP at the scheme's other MLP width
    assert bits == base.bits_for("model.language_model.layers.0.mlp.gate_proj") == 4
    assert p.decode_layers and base.bits_for(f"model.language_model.layers.{p.decode_layers[0]}.mlp.down_proj") == 2
    for i in range(p.num_layers):
        for m in ("gate_proj", "up_proj", "down_proj"):
            assert ref.bits_for(f"model.language_model.layers.{i}.mlp.{m}") == 4
    names = set()
    for g, s in variants:
        names.add(s.name)
        for i in range(p.num_layers):
            want = 2 if i in g else 4
            assert s.bits_for(f"model.language_model.layers.{i}.mlp.up_proj") == want, (s.name, i)
        # everything but the decoder MLPs is the scheme's own choice
        for mod in ("model.language_model.layers.3.self_attn.q_proj", "model.language_model.embed_tokens",
                    "model.language_model.embed_tokens_per_layer", "lm_head",
                    "model.language_model.layers.2.per_layer_input_gate", "model.vision_tower.encoder.layers.0.mlp.up_proj"):
            assert s.bits_for(mod) == base.bits_for(mod), mod
        assert s.activations == base.activations and s.outputs == base.outputs
        # a variant survives the scheme round trip (it is written into the manifest)
        assert type(s).from_dict(s.to_dict()).bits_for("model.language_model.layers.0.mlp.up_proj") == (
            2 if 0 in g else 4)
    assert len(names) == len(variants)


def test_variant_schemes_with_eight_bit_reference():
    p = get_preset("tiny")
    ref, variants, bits = variant_schemes(load_scheme("wNa8o8", p), p, [(0, 1)], mlp_bits=8)
    assert bits == 8
    assert ref.bits_for("model.language_model.layers.5.mlp.gate_proj") == 8
    assert variants[0][1].bits_for("model.language_model.layers.1.mlp.gate_proj") == 2


def test_cli_sweep_rejects_bad_options(capsys):
    assert main(["sweep", "tiny", "--groups", "2", "--group-size", "3"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["sweep", "nosuchmodel"]) == 2
    assert main(["sweep", "tiny", "--scheme", "fp16"]) == 2


@pytest.mark.slow
def test_sweep_runs_on_tiny(tiny_bundles, capsys):
    """Two layer groups on the trained tiny model; fp16 is reused from the tiny_bundles build."""
    import json

    out_root = tiny_bundles["fp16"].parent.parent  # the fixture's build folder: its fp16 build is reused
    code = main(["sweep", "tiny", "--groups", "2", "--max-tokens", "254", "--no-scheme-row",
                 "--output", str(out_root), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = json.loads(captured.out)
    p = get_preset("tiny")
    assert res["groups"] == [list(g) for g in layer_groups(p.num_layers, 2)]
    assert [r["kind"] for r in res["rows"]] == ["reference", "group", "group"]
    assert res["fp16_bundle"] == str(tiny_bundles["fp16"])  # reused, not rebuilt
    assert res["tokens"] == 254
    ref = res["rows"][0]
    assert ref["ppl_increase_vs_reference"] == 0.0 and ref["tolerates_2bit"] is None
    for r in res["rows"]:
        assert r["ppl_ratio"] > 0 and 0.0 <= r["top1_agreement"] <= 1.0 and r["kl_mean"] >= 0.0
    for r in res["rows"][1:]:
        assert isinstance(r["tolerates_2bit"], bool)
        assert r["tolerates_2bit"] == (r["ppl_increase_vs_reference"] <= res["tolerance"])
        # 2-bit MLPs make a smaller bundle than the 4-bit reference
        assert r["bundle_bytes"] < ref["bundle_bytes"]
    # a second run reuses every build
    code = main(["sweep", "tiny", "--groups", "2", "--max-tokens", "127", "--no-scheme-row",
                 "--output", str(out_root), "--json"])
    again = json.loads(capsys.readouterr().out)
    assert code == 0 and all(r["reused"] for r in again["rows"])
