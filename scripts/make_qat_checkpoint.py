#!/usr/bin/env python
"""Write Gemma 4 checkpoints in Google's mobile QAT format (``quant_method: gemma``).

Two kinds, both in exactly the layout transformers 5.17 loads (see edgekit/models/qat.py):

* ``--preset tiny`` (default): a short quantization-aware fine-tune of the tiny model
  (the trained weights shipped in edgekit/models/assets/tiny when present, else a seeded
  random init) with the preset's mobile bit map (decode-layer MLPs at 2 bits) and
  fake-quantized static int8 activations, then SRQ (input/output activation) scales and
  KV-cache scales calibrated on text, so the integers and scales mean something;
* ``--random`` (for ``e2b`` / ``e4b`` at any ``--width-div``): shape-exact random integers
  and scales, written tensor by tensor (memory holds one tensor at a time).

    python scripts/make_qat_checkpoint.py OUT_DIR [--preset tiny] [--steps 120]
    python scripts/make_qat_checkpoint.py OUT_DIR --preset e2b --width-div 4 --random
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.models import qat  # noqa: E402
from edgekit.models.presets import get_preset  # noqa: E402

# The training text of the QAT fine-tune, shipped so the checkpoint is the same on every machine:
# the train split of scripts/tiny_corpus.py as generated once (sha256 fa883c0e2af9...). Generating
# it anew reads the running interpreter's stdlib docstrings, which differ between Python builds and
# even with the installed setuptools (its distutils shim replaces the stdlib's docstrings; with
# SETUPTOOLS_USE_DISTUTILS=stdlib the same machine gives another train.txt, f16e755bd590...).
CORPUS = ROOT / "scripts" / "data" / "tiny_train.txt"
# held-out text for the loss figures in qat_info.json (they do not change the weights)
HELDOUT = ROOT / "edgekit" / "data" / "eval.txt"


def qat_config_for(preset, width_div: int = 1) -> qat.QatConfig:
    """The preset's mobile bit map as a ``quantization_config``."""
    rules = qat.default_module_quant_configs(preset.num_layers, preset.first_kv_shared_layer, family=preset.bit_map)
    return qat.QatConfig.from_dict(
        {
            "quant_method": "gemma",
            "num_bits": 4,
            "quantize_embeddings": True,
            "module_quant_configs": rules,
            "modules_to_not_convert": list(qat.E2B_NOT_CONVERTED),
        }
    )


def qat_config_json(preset, width_div: int, qconfig: qat.QatConfig) -> dict:
    cfg = preset.config(width_div).to_dict()
    cfg["tie_word_embeddings"] = False  # the mobile checkpoint has its own lm_head
    cfg["text_config"]["tie_word_embeddings"] = False
    cfg["quantization_config"] = qconfig.to_dict()
    cfg["dtype"] = "float32"
    return cfg


def _specs(layout: qat.QatLayout, float_dtype: str = "F32") -> list[tuple[str, str, tuple[int, ...]]]:
    specs = []
    for m in layout.modules.values():
        for key, (dtype, shape) in m.tensors().items():
            if key.endswith("embedding_scale"):
                shape = (m.rows, m.blocks)
            specs.append((key, dtype, shape))
    for name, shape in layout.float_params.items():
        specs.append((name, float_dtype, shape))
    for attn in layout.kv_layers:
        specs += [(f"{attn}.k_cache_scale", "F32", ()), (f"{attn}.v_cache_scale", "F32", ())]
    return sorted(specs)


def write_checkpoint(out_dir: Path, preset, width_div: int, qconfig, layout, *, quant, srq, floats, kv,
                     tokenizer_dir: Path | None) -> Path:
    """Stream every tensor into ``out_dir/model.safetensors`` and write config + tokenizer.

    ``quant(name) -> (ints, scales)``, ``srq(name) -> (in, out)``, ``floats(name, shape)``,
    ``kv(attn) -> (k, v)`` supply the values one tensor at a time.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = _specs(layout)
    w = qat.SafetensorsStreamWriter(out_dir / "model.safetensors.partial", specs,
                                    metadata={"format": "pt", "producer": "edgekit make_qat_checkpoint"})
    cache: dict[str, tuple] = {}
    for key, dtype, shape in specs:
        mod, _, leaf = key.rpartition(".")
        if mod in layout.modules:
            m = layout.modules[mod]
            if leaf in ("weight", "embedding_quantized"):
                ints, scales = quant(mod)
                cache[mod] = scales
                w.write(key, qat.pack(ints, m.bits))
            elif leaf in ("weight_scale", "embedding_scale"):
                scales = cache.pop(mod, None)
                if scales is None:
                    scales = quant(mod)[1]
                w.write(key, scales)
            elif leaf == "input_activation_scale":
                w.write(key, np.float32(srq(mod)[0]))
            elif leaf == "output_activation_scale":
                w.write(key, np.float32(srq(mod)[1]))
            else:
                w.write(key, floats(key, shape))
        elif leaf in ("k_cache_scale", "v_cache_scale"):
            k, v = kv(mod)
            w.write(key, np.float32(k if leaf == "k_cache_scale" else v))
        else:
            w.write(key, floats(key, shape))
    w.close()
    (out_dir / "model.safetensors.partial").replace(out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(qat_config_json(preset, width_div, qconfig), indent=2, sort_keys=True) + "\n")
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(f, out_dir / f.name)
    else:  # e2b / e4b: no real tokenizer here; the models engineer's synthetic one of the right size
        from edgekit.models.checkpoint import write_synthetic_tokenizer

        write_synthetic_tokenizer(out_dir, preset.vocab_size)
    return out_dir


# ------------------------------------------------------------------ random (e2b / e4b)


def make_random(out_dir: Path, preset, width_div: int, seed: int, tokenizer_dir: Path | None) -> Path:
    qconfig = qat_config_for(preset, width_div)
    layout = qat.quant_layout(_untied(preset.config(width_div)), qconfig)
    rng_of = lambda key: np.random.default_rng([seed, abs(hash_str(key))])  # noqa: E731

    def quant(name):
        m = layout.modules[name]
        rng = rng_of(name)
        qmin, qmax = qat.qrange(m.bits)
        ints = rng.integers(qmin, qmax + 1, size=(m.rows, m.width), dtype=np.int8)
        blocks = m.blocks if m.kind == "embedding" else 1
        scales = (0.02 / max(qmax, 1) * rng.uniform(0.5, 1.5, size=(m.rows, blocks))).astype(np.float32)
        return ints, scales

    def srq(name):
        if name == "lm_head" or "language_model" not in name:
            return 0.0, 0.0
        # an SRQ input scale belongs to the activation tensor: q/k/v read one tensor, gate/up another
        group = name.replace("k_proj", "q_proj").replace("v_proj", "q_proj").replace("up_proj", "gate_proj")
        s_in = float(np.float32(rng_of(group + "#srq_in").uniform(0.005, 0.05)))
        s_out = float(np.float32(rng_of(name + "#srq_out").uniform(0.005, 0.05)))
        return s_in, s_out

    def floats(key, shape):
        if key.endswith("norm.weight") or key.endswith("layer_scalar"):
            return np.ones(shape, np.float32)
        return (rng_of(key).standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    def kv(attn):
        rng = rng_of(attn + "#kv")
        return tuple(float(np.float32(x)) for x in rng.uniform(0.01, 0.1, size=2))

    return write_checkpoint(out_dir, preset, width_div, qconfig, layout, quant=quant, srq=srq, floats=floats,
                            kv=kv, tokenizer_dir=tokenizer_dir)


def hash_str(s: str) -> int:
    import zlib

    return zlib.crc32(s.encode())


def _untied(cfg):
    cfg.tie_word_embeddings = False
    cfg.text_config.tie_word_embeddings = False
    return cfg


# ------------------------------------------------------------------ QAT fine-tune (tiny)


def _token_batches(tokenizer_dir: Path, corpus: Path, seq: int, batch: int, n: int, seed: int, offset: int = 0):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    if not corpus.is_file():
        sys.exit(f"error: no training text at {corpus} (make one with scripts/tiny_corpus.py OUT_DIR)")
    text = corpus.read_text(encoding="utf-8", errors="replace")
    ids = np.array(tok.encode(text).ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        starts = rng.integers(offset, len(ids) - seq - 1, size=batch)
        yield np.stack([ids[s : s + seq] for s in starts])


def make_tiny_qat(out_dir: Path, preset, steps: int, seed: int, corpus: Path, calib_batches: int = 8,
                  log=print) -> dict:
    """QAT fine-tune of the tiny model with the mobile bit map, then calibrate SRQ + KV scales."""
    import torch
    import torch.nn.functional as F
    import transformers

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a tiny model: threads only contend (5x slower with 2 on a busy box)
    qconfig = qat_config_for(preset)
    cfg = _untied(preset.config())
    layout = qat.quant_layout(cfg, qconfig)
    model = transformers.Gemma4ForConditionalGeneration(cfg)
    shipped = preset.shipped_checkpoint_dir
    source = "random init (seed %d)" % seed
    if shipped is not None and any(Path(shipped).glob("*.safetensors")):
        from safetensors.torch import load_file

        state = {}
        for f in sorted(Path(shipped).glob("*.safetensors")):
            state.update(load_file(str(f)))
        if "lm_head.weight" not in state and "model.language_model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].clone()
        missing, unexpected = model.load_state_dict(state, strict=False)
        source = f"trained tiny model ({shipped})"
        log(f"loaded {source}; missing={len(missing)} unexpected={len(unexpected)}")
    model.float()
    modules = dict(model.named_modules())
    srq_scales: dict[str, list[float]] = {}  # name -> [in, out] (0 = off)

    ratios = torch.tensor(qat.CLIP_RATIOS, dtype=torch.float32)

    fq_on = [True]  # fake quantization switch (off: the float model)

    def fq_rows(w, bits, blocks=1):
        # fake quantization with the clipped (MSE-searched) step size quantize_rows uses
        if not fq_on[0]:
            return w
        qmin, qmax = qat.qrange(bits)
        qmin = -127 if bits == 8 else qmin  # narrow int8, as quantize_rows
        rows, width = w.shape
        wb = w.reshape(rows, blocks, width // blocks)
        with torch.no_grad():
            amax = wb.abs().amax(-1, keepdim=True).clamp_min(1e-8)
            cand = ratios.view(-1, 1, 1, 1) * amax / qmax  # (R, rows, blocks, 1)
            err = ((torch.clamp(torch.round(wb / cand), qmin, qmax) * cand - wb) ** 2).sum(-1, keepdim=True)
            s = torch.gather(cand, 0, err.argmin(0, keepdim=True))[0]
        q = torch.clamp(torch.round(wb / s), qmin, qmax) * s
        return (wb + (q - wb).detach()).reshape(rows, width)

    def fq_act(x, s):
        if not s or not fq_on[0]:
            return x
        q = torch.clamp(torch.round(x / s), -128, 127) * s
        return x + (q - x).detach()

    def patch_linear(name, mod, bits):
        def forward(x, _mod=mod, _name=name, _bits=bits):
            s_in, s_out = srq_scales.get(_name, (0.0, 0.0))
            y = F.linear(fq_act(x, s_in), fq_rows(_mod.weight, _bits), _mod.bias)
            return fq_act(y, s_out)

        mod.forward = forward

    def patch_embedding(name, mod, bits, blocks):
        def forward(ids, _mod=mod, _bits=bits, _blocks=blocks):
            table = fq_rows(_mod.weight, _bits, _blocks)
            out = F.embedding(ids, table, _mod.padding_idx)
            scale = getattr(_mod, "embed_scale", None)
            return out * scale.to(out.dtype) if scale is not None else out

        mod.forward = forward

    for name, m in layout.modules.items():
        if m.kind == "linear":
            patch_linear(name, modules[name], m.bits)
        else:
            patch_embedding(name, modules[name], m.bits, m.blocks)

    text_linears = [n for n, m in layout.modules.items() if m.kind == "linear" and "language_model" in n]

    def calibrate(batches) -> tuple[dict, dict]:
        amax: dict[str, list[float]] = {n: [0.0, 0.0] for n in text_linears}
        kv_amax: dict[str, list[float]] = {a: [0.0, 0.0] for a in layout.kv_layers}
        hooks = []
        for n in text_linears:
            def hook(mod, inp, out, _n=n):
                a = amax[_n]
                a[0] = max(a[0], float(inp[0].detach().abs().max()))
                a[1] = max(a[1], float(out.detach().abs().max()))
            hooks.append(modules[n].register_forward_hook(hook))
        for a in layout.kv_layers:
            for i, sub in enumerate(("k_norm", "v_norm")):
                def khook(mod, inp, out, _a=a, _i=i):
                    kv_amax[_a][_i] = max(kv_amax[_a][_i], float(out.detach().abs().max()))
                hooks.append(getattr(modules[a], sub).register_forward_hook(khook))
        saved = dict(srq_scales)
        srq_scales.clear()  # observe without activation rounding
        model.eval()
        with torch.no_grad():
            for b in batches:
                model(input_ids=torch.from_numpy(b))
        for h in hooks:
            h.remove()
        srq_scales.update(saved)
        scales = {n: [float(np.float32(a[0] / 127.0)), float(np.float32(a[1] / 127.0))] for n, a in amax.items()}
        kv_scales = {a: [float(np.float32(v[0] / 127.0)), float(np.float32(v[1] / 127.0))] for a, v in kv_amax.items()}
        return scales, kv_scales

    tok_dir = preset.tokenizer_dir
    t0 = time.time()
    scales, _ = calibrate(_token_batches(tok_dir, corpus, 64, 8, calib_batches, seed + 1))
    srq_scales.update(scales)
    # the published checkpoint leaves the head's activations float (scale 0)
    srq_scales["lm_head"] = [0.0, 0.0]
    heldout = corpus.with_name("heldout.txt")  # beside a generated corpus; else the shipped held-out slice
    eval_src = heldout if heldout.is_file() else HELDOUT
    eval_batches = list(_token_batches(tok_dir, eval_src, 64, 8, 4, seed + 9))

    def eval_loss(fake_quant: bool) -> float:
        fq_on[0] = fake_quant
        model.eval()
        with torch.no_grad():
            vals = [float(model(input_ids=torch.from_numpy(b), labels=torch.from_numpy(b)).loss) for b in eval_batches]
        fq_on[0] = True
        return float(np.mean(vals))

    loss_float = eval_loss(False)
    loss_ptq = eval_loss(True)
    log(f"held-out loss: float {loss_float:.3f}, quantized before QAT {loss_ptq:.3f}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3 if "random" in source else 3e-4, weight_decay=0.0)
    model.train()
    losses = []
    for step, b in enumerate(_token_batches(tok_dir, corpus, 64, 8, steps, seed + 2)):
        ids = torch.from_numpy(b)
        out = model(input_ids=ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
        if step % 20 == 0 or step == steps - 1:
            log(f"qat step {step}/{steps} loss {losses[-1]:.3f}")
    # final SRQ / KV scales, observed with the quantized weights in place
    scales, kv_scales = calibrate(_token_batches(tok_dir, corpus, 64, 8, calib_batches, seed + 3))
    scales["lm_head"] = [0.0, 0.0]
    srq_scales.clear()
    srq_scales.update(scales)
    loss_qat = eval_loss(True)
    log(f"held-out loss after QAT (quantized): {loss_qat:.3f}")
    train_s = time.time() - t0

    params = dict(model.state_dict())

    def quant(name):
        m = layout.modules[name]
        w = params[f"{name}.weight"].detach().float().numpy()
        return qat.quantize_rows(w, m.bits, m.blocks if m.kind == "embedding" else 1)

    def srq(name):
        return tuple(scales.get(name, (0.0, 0.0)))

    def floats(key, shape):
        return params[key].detach().float().numpy().reshape(shape)

    def kv(attn):
        return tuple(kv_scales[attn])

    write_checkpoint(out_dir, preset, 1, qconfig, layout, quant=quant, srq=srq, floats=floats, kv=kv,
                     tokenizer_dir=tok_dir)
    info = {"source": source, "steps": steps, "seed": seed, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "seconds": round(train_s, 1),
            "heldout_loss_float": loss_float, "heldout_loss_quantized_before_qat": loss_ptq,
            "heldout_loss_quantized_after_qat": loss_qat, "eval_text": str(eval_src)}
    (out_dir / "qat_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--width-div", type=int, default=1)
    ap.add_argument("--random", action="store_true", help="shape-exact random integers and scales (no training)")
    ap.add_argument("--steps", type=int, default=120, help="QAT fine-tune steps (tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder to copy (default: the preset's)")
    args = ap.parse_args(argv)
    preset = get_preset(args.preset)
    tok = args.tokenizer or preset.tokenizer_dir
    t0 = time.time()
    if args.random:
        make_random(args.out, preset, args.width_div, args.seed, tok)
        print(f"wrote random QAT checkpoint {args.out} ({preset.name}, width-div {args.width_div}) "
              f"in {time.time() - t0:.1f} s", file=sys.stderr)
    else:
        if args.width_div != 1:
            ap.error("the QAT fine-tune runs at full width; use --random for --width-div")
        info = make_tiny_qat(args.out, preset, args.steps, args.seed, args.corpus,
                             log=lambda m: print(m, file=sys.stderr))
        print(f"wrote QAT checkpoint {args.out} from {info['source']}: held-out loss float "
              f"{info['heldout_loss_float']:.3f}, quantized {info['heldout_loss_quantized_before_qat']:.3f} before / "
              f"{info['heldout_loss_quantized_after_qat']:.3f} after QAT ({info['steps']} steps, {info['seconds']} s)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
