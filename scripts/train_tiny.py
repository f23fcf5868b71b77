#!/usr/bin/env python3
"""Train the `tiny` preset (a real Gemma4ForConditionalGeneration) on the offline corpus.

The corpus is the docstrings of Python's standard library (scripts/tiny_corpus.py),
split into train / held-out by module. The text path of the model is trained
(embeddings, per-layer embeddings, decoder layers, lm_head tied to the embedding);
vision/audio towers, if the preset has them, keep their seeded initialisation.

    .venv/bin/python scripts/train_tiny.py [--steps N] [--seq-len L] [--out DIR]

Deterministic for a given seed, torch version and thread count. Writes
``model.safetensors`` (bfloat16 by default, Hugging Face layout) into ``--out`` (default
edgekit/models/assets/tiny/), and ``config.json`` only when that folder has none
(the preset owns it). Also refreshes edgekit/data/eval.txt, the shipped evaluation
text (a slice of the HELD-OUT split) unless --no-eval-text.

Prints train loss along the way and, at the end, held-out perplexity against the
uniform guess (= vocabulary size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "edgekit" / "models" / "assets" / "tiny"
EVAL_TEXT = ROOT / "edgekit" / "data" / "eval.txt"
CORPUS = ROOT / ".cache" / "corpus"
BOS_ID = 2
EVAL_TEXT_CHARS = 7000  # size of the shipped evaluation slice of the held-out split

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_config(out_dir: Path):
    """The checkpoint folder's config.json (the preset's, written by the models engineer), else the preset."""
    from transformers import Gemma4Config

    from edgekit.models.presets import get_preset

    for d in (out_dir, ASSETS):
        p = d / "config.json"
        if p.exists():
            log(f"config: {p}")
            return Gemma4Config.from_pretrained(str(d)), d != out_dir  # copy it beside new weights
    log("config: edgekit.models.presets tiny")
    return get_preset("tiny").config(), True


def load_corpus(corpus_dir: Path) -> tuple[str, str]:
    if not (corpus_dir / "train.txt").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_corpus.py"), str(corpus_dir)], check=True)
    return (corpus_dir / "train.txt").read_text(), (corpus_dir / "heldout.txt").read_text()


def encode(text: str) -> list[int]:
    """Token ids of ``text`` without the BOS the tokenizer's template adds."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    return tok.encode(text, add_special_tokens=False).ids


def windows(ids: list[int], seq_len: int):
    """Non-overlapping windows ``[BOS] + ids[i : i + seq_len - 1]`` (the last partial one dropped)."""
    import torch

    n = seq_len - 1
    k = len(ids) // n
    t = torch.tensor(ids[: k * n], dtype=torch.long).view(k, n)
    return torch.cat([torch.full((k, 1), BOS_ID, dtype=torch.long), t], dim=1)


def text_logits(model, input_ids):
    return model(input_ids=input_ids, use_cache=False).logits


def heldout_nll(model, data, batch: int = 32) -> tuple[float, int]:
    """Mean next-token NLL (nats) over every position of every window, float64 sums."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, data.shape[0], batch):
            x = data[i : i + batch]
            logits = text_logits(model, x).double()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
            total += float(nll.sum())
            count += nll.numel()
    model.train()
    return total / count, count


def write_eval_text(heldout: str, path: Path, chars: int = EVAL_TEXT_CHARS) -> None:
    """The shipped evaluation text: the first whole docstrings of the held-out split, ~``chars`` long."""
    out, n = [], 0
    for doc in heldout.split("\n\n"):
        if n >= chars:
            break
        out.append(doc)
        n += len(doc) + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(out).strip() + "\n"
    tmp = path.with_suffix(".part")
    tmp.write_text(text)
    os.replace(tmp, path)
    log(f"wrote {path} ({len(text)} chars, held-out split)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: steady 0.4 s/step while other jobs share the 2 cores; 2 thrashed)")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, default=ASSETS)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="dtype of the written weights (held-out figures are measured on them)")
    ap.add_argument("--no-eval-text", action="store_true", help="do not rewrite edgekit/data/eval.txt")
    ap.add_argument("--heldout-windows", type=int, default=None,
                    help="measure the final held-out perplexity on the first N windows only (default: all)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--measure-only", action="store_true",
                    help="do not train: measure the checkpoint in --out (and refresh eval.txt)")
    args = ap.parse_args(argv)

    import torch
    from transformers import Gemma4ForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    config, write_config = load_config(args.out)
    vocab = config.get_text_config().vocab_size
    train_text, held_text = load_corpus(args.corpus)
    t0 = time.time()
    train_ids, held_ids = encode(train_text), encode(held_text)
    train = windows(train_ids, args.seq_len)
    held = windows(held_ids, args.seq_len)
    if args.heldout_windows:
        held = held[: args.heldout_windows]
    log(f"tokens: train {len(train_ids)} ({train.shape[0]} windows), held-out {len(held_ids)} "
        f"({held.shape[0]} windows of {args.seq_len}), tokenized in {time.time() - t0:.1f}s")

    if args.measure_only:  # figures of the checkpoint already in --out, no training
        model = Gemma4ForConditionalGeneration.from_pretrained(str(args.out), dtype=torch.float32)
        nll, count = heldout_nll(model, held)
        train_nll, _ = heldout_nll(model, train[: args.heldout_windows or 256])
        figures = {"checkpoint": str(args.out), "heldout_tokens": count, "heldout_nll": round(nll, 5),
                   "heldout_ppl": round(math.exp(nll), 3), "train_ppl_first_windows": round(math.exp(train_nll), 3),
                   "uniform_ppl": vocab}
        log(f"held-out perplexity {math.exp(nll):.2f} over {count} tokens vs uniform {vocab}")
        if not args.no_eval_text:
            write_eval_text(held_text, EVAL_TEXT)
        print(json.dumps(figures, indent=2))
        return 0

    model = Gemma4ForConditionalGeneration(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters, vocab {vocab}")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "norm" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(train.shape[0], generator=gen)
    pos = 0
    t_train = time.time()
    ema = None
    for step in range(args.steps):
        if pos + args.batch > len(order):
            order, pos = torch.randperm(train.shape[0], generator=gen), 0
        x = train[order[pos : pos + args.batch]]
        pos += args.batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = text_logits(model, x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = float(loss) if ema is None else 0.95 * ema + 0.05 * float(loss)
        if (step + 1) % 50 == 0 or step == 0:
            log(f"step {step + 1}/{args.steps} loss {float(loss):.3f} (ema {ema:.3f}) lr {lr_at(step):.2e} "
                f"{time.time() - t_train:.0f}s")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            nll, _ = heldout_nll(model, held[:64])
            log(f"  held-out (first 64 windows) ppl {math.exp(nll):.1f}")
    train_s = time.time() - t_train

    # Measure what is shipped: the weights rounded to the saved dtype.
    dtype = getattr(torch, args.dtype)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(prm.to(dtype).float())
    nll, count = heldout_nll(model, held)
    ppl = math.exp(nll)
    train_nll, _ = heldout_nll(model, train[: args.heldout_windows or 256])
    figures = {
        "params": n_params,
        "steps": args.steps,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "seed": args.seed,
        "dtype": args.dtype,
        "train_seconds": round(train_s, 1),
        "final_train_loss_ema": round(ema, 4),
        "train_ppl_first_windows": round(math.exp(train_nll), 3),
        "heldout_tokens": count,
        "heldout_nll": round(nll, 5),
        "heldout_ppl": round(ppl, 3),
        "uniform_ppl": vocab,
    }
    log(f"held-out perplexity {ppl:.2f} over {count} tokens vs uniform {vocab} "
        f"(train ppl {math.exp(train_nll):.2f}); trained {args.steps} steps in {train_s:.0f}s")

    # Hugging Face layout: model.safetensors (+ config.json only when none exists yet).
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        shutil.move(os.path.join(tmp, "model.safetensors"), args.out / "model.safetensors")
        if write_config and not (args.out / "config.json").exists():
            (args.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
            log(f"wrote {args.out / 'config.json'} from the preset")
    size = (args.out / "model.safetensors").stat().st_size
    figures["safetensors_bytes"] = size
    log(f"wrote {args.out / 'model.safetensors'} ({size / 1e6:.2f} MB)")
    if not args.no_eval_text:
        write_eval_text(held_text, EVAL_TEXT)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
