#!/usr/bin/env python3
"""Train the tiny preset's byte-level BPE tokenizer on the offline corpus (deterministic).

    python scripts/make_tiny_tokenizer.py [CORPUS_DIR]

Writes edgekit/models/assets/tiny/{tokenizer.json,tokenizer_config.json,special_tokens_map.json}.
Special ids follow Gemma: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "edgekit" / "models" / "assets" / "tiny"
VOCAB = 2048
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def main(corpus_dir: str) -> None:
    corpus = Path(corpus_dir)
    if not (corpus / "train.txt").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_corpus.py"), str(corpus)], check=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus / "train.txt")], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    ASSETS.mkdir(parents=True, exist_ok=True)
    tok.save(str(ASSETS / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": 1024,
    }
    (ASSETS / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    smap = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (ASSETS / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n")
    print(f"wrote {ASSETS} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / ".cache" / "corpus"))
