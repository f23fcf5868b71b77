"""The committed trained tiny checkpoint knows something; the eval text is held out; the script runs.

Perplexities are recomputed here with transformers on the held-out text, never copied.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "edgekit" / "models" / "assets" / "tiny"
EVAL_TEXT = ROOT / "edgekit" / "data" / "eval.txt"
SEQ_LEN = 128


def _windows(ids, bos, seq_len):
    n = seq_len - 1
    return [[bos] + ids[i: i + n] for i in range(0, len(ids) - n + 1, n)]


def _perplexity(model, wins) -> float:
    import torch

    x = torch.tensor(wins, dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits.double()
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
    return math.exp(float(nll.mean()))


@pytest.fixture(scope="module")
def heldout_windows():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    ids = tok.encode(EVAL_TEXT.read_text(), add_special_tokens=False).ids
    return _windows(ids, tok.token_to_id("<bos>"), SEQ_LEN)


def test_committed_weights_are_small_and_match_the_preset():
    from edgekit.models.checkpoint import read_safetensors_header
    from edgekit.models.presets import get_preset

    st = ASSETS / "model.safetensors"
    assert st.is_file(), "scripts/train_tiny.py output is not committed"
    assert st.stat().st_size < 12e6
    header = read_safetensors_header(st)
    expected = get_preset("tiny").expected_shapes()
    assert {k: tuple(v) for k, v in expected.items()} == {k: tuple(e.shape) for k, e in header.items()}


def test_heldout_perplexity_far_below_uniform(heldout_windows):
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    torch.set_num_threads(2)
    assert len(heldout_windows) >= 8
    trained = Gemma4ForConditionalGeneration.from_pretrained(str(ASSETS), dtype=torch.float32).eval()
    vocab = trained.config.get_text_config().vocab_size
    ppl = _perplexity(trained, heldout_windows)
    torch.manual_seed(0)
    untrained = Gemma4ForConditionalGeneration(Gemma4Config.from_pretrained(str(ASSETS))).eval()
    ppl_random = _perplexity(untrained, heldout_windows)
    print(f"held-out perplexity: trained {ppl:.2f}, untrained {ppl_random:.1f}, uniform {vocab}")
    assert vocab == 2048
    assert ppl_random > vocab / 2  # an untrained model of this shape is about uniform
    assert ppl < vocab / 10  # the trained one is more than 10x better than guessing


def test_eval_text_comes_from_the_heldout_split(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_corpus.py"), str(tmp_path)], check=True,
                   capture_output=True)
    train = (tmp_path / "train.txt").read_text()
    held = (tmp_path / "heldout.txt").read_text()
    paras = [p for p in EVAL_TEXT.read_text().strip().split("\n\n") if len(p) > 80]
    assert len(paras) >= 5
    for p in paras:
        assert p in held
        assert p not in train


@pytest.mark.slow
def test_train_script_runs_and_writes_a_loadable_checkpoint(tmp_path):
    import torch
    from safetensors import safe_open

    out = tmp_path / "ckpt"
    figures = tmp_path / "figures.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_tiny.py"), "--steps", "4", "--warmup", "1", "--seq-len", "32",
         "--batch", "4", "--eval-every", "0", "--heldout-windows", "8", "--no-eval-text", "--out", str(out),
         "--json", str(figures)],
        check=True, capture_output=True, timeout=900,
    )
    f = json.loads(figures.read_text())
    assert f["steps"] == 4 and f["heldout_tokens"] == 8 * 31
    assert 1.0 < f["heldout_ppl"] < f["uniform_ppl"] * 1.5
    assert (out / "config.json").is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("model.language_model.embed_tokens.weight").dtype == torch.bfloat16
    with safe_open(str(ASSETS / "model.safetensors"), "pt") as fh:
        assert keys == set(fh.keys())
