"""Vision and audio encoder sections for a multimodal bundle.

litert-torch 0.10.0's own multimodal path (``export_hf`` with
``export_vision_encoder``) cannot run here: ``export_lib.load_model`` (line ~452)
calls ``transformers.AutoImageProcessor.from_pretrained``; transformers 5.17's lazy
top-level module marks ``models/auto/image_processing_auto.py`` as needing
torchvision (``utils/import_utils.py`` ``BASE_FILE_REQUIREMENTS``: an
``image_processing_*`` file whose text mentions ``TorchvisionBackend``), so that
attribute raises ImportError without torchvision, and the only torchvision wheel
for torch 2.13 does not load against the local CPU torch. The upstream Gemma 4
sample inputs also assume E2B sizes (audio adapter width 1536, 128 mel bins).

So the encoders are converted here with litert-torch's lower-level pieces, the
same ones its multimodal task calls: ``export_lib.load_model`` (task
``image_text_to_text`` with the encoder flags off, so no image processor is
loaded), the upstream exportable modules of
``model_ext/gemma4/{vision,audio}_exportable.py``, and
``litert_torch._convert.interface.Converter``. The image processor the vision
sample needs is transformers' PIL backend (``Gemma4ImageProcessorPil``), which
needs no torchvision. Sample shapes are derived from the checkpoint's config.

The end-of-image / end-of-audio sections embed the tokenizer's ``eoi_token`` /
``eoa_token``; a tokenizer without them (the tiny preset's) gets no such section,
and :func:`export_encoders` says so in its record.

Runs inside the export child (``python -m edgekit.builder.export --with-encoders``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from edgekit.bundle.tensor_names import ENCODER_SECTIONS  # section -> HF module prefix

VISION_SECTIONS = tuple(s for s in ENCODER_SECTIONS if "vision" in s)
AUDIO_SECTIONS = tuple(s for s in ENCODER_SECTIONS if "audio" in s)
VISION_SOFT_TOKENS = 140  # litert-torch's default (gemma4_vision_max_soft_tokens)
AUDIO_FRAMES = 816  # litert-torch's Gemma 4 audio signature: 816 mel frames -> 204 tokens


def is_encoder_section(section: str) -> bool:
    return section in ENCODER_SECTIONS


# ------------------------------------------------------------------ conversion
def _convert(module, samples: dict, path: Path) -> Path:
    from litert_torch._convert import interface as converter_utils

    conv = converter_utils.Converter()
    for sig, (inputs, _dims) in samples.items():
        conv.add_signature(sig, module.eval(), sample_kwargs=inputs)
    conv.convert(strict_export=False).export(str(path))
    return path


def export_encoders(model_dir: str | os.PathLike, work_dir: str | os.PathLike,
                    log: Callable[[str], None] = print,
                    towers: tuple[str, ...] = ("vision", "audio")) -> tuple[dict[str, Path], dict[str, Any]]:
    """Convert the checkpoint's vision and audio towers to float32 ``.tflite`` files.

    Returns ``({section name: path}, record)``; the record names the signatures,
    the sample shapes and the sections that were skipped, with why. ``towers``
    limits the conversion to some towers (the streamed route converts one per child).
    """
    import torch
    from litert_torch.generative.export_hf.core import export_lib
    from litert_torch.generative.export_hf.core import exportable_module_config as emc
    from litert_torch.generative.export_hf.model_ext import exportables as mx
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = emc.ExportableModuleConfig(
        model=str(model_dir), output_dir=str(work), work_dir=str(work), task="image_text_to_text",
        export_vision_encoder=False, export_audio_encoder=False, quantization_recipe=None,
    )
    src = export_lib.load_model(str(model_dir), cfg, task="image_text_to_text")
    model, mc, tok = src.model, src.model_config, src.tokenizer
    model.set_attn_implementation("eager")
    out: dict[str, Path] = {}
    rec: dict[str, Any] = {"route": "litert_torch Converter on the upstream Gemma 4 exportable modules",
                           "sections": {}, "skipped": {}}
    special = getattr(tok, "special_tokens_map", {}) or {}

    def run(section: str, module, samples: dict) -> None:
        t0 = time.monotonic()
        path = _convert(module, samples, work / f"{section}.tflite")
        out[section] = path
        rec["sections"][section] = {
            "signatures": {sig: {k: list(v.shape) for k, v in inp.items()} for sig, (inp, _) in samples.items()},
            "seconds": round(time.monotonic() - t0, 3),
        }
        log(f"[encoders] {section}: {path.stat().st_size} bytes in {time.monotonic() - t0:.1f}s")

    if "vision" in towers:
        _vision(model, mc, cfg, tok, special, run, rec, Gemma4ImageProcessorPil, torch, mx)
    if "audio" in towers:
        _audio(model, mc, cfg, tok, special, run, rec, torch, mx)
    return out, rec


def _vision(model, mc, cfg, tok, special, run, rec, Gemma4ImageProcessorPil, torch, mx) -> None:
    vc = mc.vision_config
    # vision: encoder (patches -> soft tokens), adapter (soft tokens -> text embedding space)
    enc_cls, ad_cls, eoi_cls = mx.get_vision_exportables(mc)
    processor = Gemma4ImageProcessorPil(patch_size=vc.patch_size, pooling_kernel_size=vc.pooling_kernel_size)
    enc = enc_cls(model, cfg)
    run("tf_lite_vision_encoder", enc,
        enc.get_sample_inputs(mc, image_processor=processor, gemma4_vision_max_soft_tokens=VISION_SOFT_TOKENS))
    n = VISION_SOFT_TOKENS
    run("tf_lite_vision_adapter", ad_cls(model, cfg, tok),
        {f"vision_adapter_{n}": ({"soft_tokens": torch.zeros((1, n, vc.hidden_size))}, {})})
    if "eoi_token" in special:
        m = eoi_cls(model, cfg, tok)
        run("tf_lite_end_of_vision", m, m.get_sample_inputs(mc))
    else:
        rec["skipped"]["tf_lite_end_of_vision"] = "the tokenizer has no eoi_token"


def _audio(model, mc, cfg, tok, special, run, rec, torch, mx) -> None:
    ac = mc.audio_config
    # audio: conformer encoder over mel frames, adapter into the text embedding space
    aenc_cls, aad_cls, eoa_cls = mx.get_audio_exportables(mc)
    # transformers sizes the subsampler's projection for mel bins == subsampling_conv_channels[0]
    # (128 for E2B/E4B: litert-torch's own sample), 816 frames -> 204 tokens after 4x subsampling.
    mels = int(ac.subsampling_conv_channels[0])
    frames, tokens = AUDIO_FRAMES, AUDIO_FRAMES // 4
    run("tf_lite_audio_encoder_hw", aenc_cls(model, cfg),
        {f"audio_{tokens}": ({"src_inputs": torch.zeros((1, frames, mels)),
                              "mask": torch.ones((1, 1, frames), dtype=torch.bool)}, {})})
    width = int(getattr(ac, "output_proj_dims", None) or ac.hidden_size)
    run("tf_lite_audio_adapter", aad_cls(model, cfg, tok),
        {f"audio_adapter_{tokens}": ({"features": torch.zeros((1, tokens, width)),
                                      "mask": torch.ones((1, tokens), dtype=torch.bool)}, {})})
    if "eoa_token" in special:
        m = eoa_cls(model, cfg, tok)
        run("tf_lite_end_of_audio", m, m.get_sample_inputs(mc))
    else:
        rec["skipped"]["tf_lite_end_of_audio"] = "the tokenizer has no eoa_token"


def add_sections(bundle: str | os.PathLike, sections: dict[str, Path], out_path: str | os.PathLike,
                 work_dir: str | os.PathLike) -> None:
    """Rebuild ``bundle`` with extra TFLite sections (litert-lm-builder unpack + build)."""
    from edgekit.builder import quantize as qz

    toml = qz.unpack(bundle, work_dir)
    text = toml.read_text()
    for name, path in sections.items():
        mt = name[len("tf_lite_"):]
        text += f'\n[[section]]\nmodel_type = "{mt}"\nsection_type = "TFLiteModel"\ndata_path = "{Path(path).resolve()}"\n'
    toml.write_text(text)
    qz.repack(toml, out_path, {})


# ------------------------------------------------------------------ quantization
def plan_section(tflite_path: str | os.PathLike, section: str, bits_for) -> list:
    """Every FULLY_CONNECTED of an encoder section with its HF module and bits (quantize.OpPlan).

    Module names come from ``edgekit.bundle.tensor_names.encoder_module_name``.
    """
    from edgekit.builder import quantize as qz

    return [p for p in qz.plan_section(tflite_path, section, bits_for) if p.kind == "fc"]


_ACT_NOTE = ("float activations (dynamic-range): static int8 calibration of the encoders needs image/audio "
             "calibration data the package does not ship")


def quantize_encoders(secs: dict[str, Path], scheme, work: Path, run) -> tuple[dict[str, Path], dict[str, Any]]:
    """Quantize the encoder sections' weights channel-wise to the scheme's bits.

    Returns ``({section: quantized path}, record)``; ``run(stage, label, fn, *args)``
    is the pipeline's stage runner. Float schemes get float16 weights.
    """
    from edgekit.builder import quantize as qz

    replaced: dict[str, Path] = {}
    rec: dict[str, Any] = {}
    for sec, path in secs.items():
        if not is_encoder_section(sec):
            continue
        dst = work / f"{sec}.tflite"
        if scheme.is_float:
            if scheme.float_dtype == "float16":
                run("quantize", f"{sec}: float16 weights", qz.quantize_weights, path, dst, qz.fp16_recipe())
                replaced[sec] = dst
            rec[sec] = {"weights": scheme.float_dtype, "activations": "float"}
            continue
        plans = plan_section(path, sec, scheme.bits_for)
        bits: dict[str, int] = {}
        for p in plans:
            key = "float" if p.bits is None else f"int{p.bits}"
            bits[key] = bits.get(key, 0) + 1
        recipe = qz.dynamic_recipe(plans)
        if recipe:
            run("quantize", f"{sec}: channel-wise weights", qz.quantize_weights, path, dst, recipe)
            replaced[sec] = dst
        rec[sec] = {"fully_connected": bits, "activations": _ACT_NOTE if recipe else "float"}
    return replaced, rec



# ------------------------------------------------------------------ streamed route: towers only
# The streamed route never loads the whole checkpoint: each tower is converted in its own
# child process (its memory returns to the system between towers) from a model built on the
# meta device in which only that tower's tensors are real, read tensor by tensor.
TOWER_PREFIXES = {
    "vision": ("model.vision_tower.", "model.embed_vision."),
    "audio": ("model.audio_tower.", "model.embed_audio."),
}
EMBED_TOKENS = "model.language_model.embed_tokens."  # read only for an end-of-image/audio section
TOWER_EOS = {"vision": "eoi_token", "audio": "eoa_token"}


def materialize_towers(model, model_dir: str | os.PathLike, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """Make real the parameters and persistent buffers of ``model`` under ``prefixes``; drop the rest.

    ``model`` was built with its parameters on the meta device. Tensors under ``prefixes``
    are read from the safetensors one at a time; every other meta parameter or buffer is
    set to None, so an export of a wrapper that holds the whole model lifts nothing it
    cannot read. Returns the record of what was loaded.
    """
    import numpy as np
    import torch
    from torch import nn

    from edgekit.models.qat import read_safetensors_headers, read_tensor

    entries = read_safetensors_headers(Path(model_dir))
    loaded: list[str] = []
    seen: set[str] = set()
    nbytes = dropped = 0
    for mname, mod in model.named_modules():
        for attr in ("_parameters", "_buffers"):
            table = getattr(mod, attr)
            for pname, p in list(table.items()):
                if p is None:
                    continue
                full = f"{mname}.{pname}" if mname else pname
                e = entries.get(full) if full.startswith(prefixes) else None
                if e is not None and full not in seen and (p.is_meta or attr == "_buffers"):
                    if tuple(e.shape) != tuple(p.shape):
                        raise ValueError(f"{full}: checkpoint shape {tuple(e.shape)}, model {tuple(p.shape)}")
                    t = torch.from_numpy(np.ascontiguousarray(read_tensor(e), dtype=np.float32))
                    if attr == "_parameters":
                        table[pname] = nn.Parameter(t, requires_grad=False)
                    else:
                        table[pname] = t.to(p.dtype)
                    loaded.append(full)
                    seen.add(full)
                    nbytes += t.nbytes
                elif full.startswith(prefixes) and attr == "_parameters" and p.is_meta:
                    raise ValueError(f"{full} is not in the checkpoint")
                elif p.is_meta:
                    table[pname] = None
                    dropped += 1
    missing = sorted(k for k in entries if k.startswith(prefixes) and k not in seen)
    if missing:
        raise ValueError(f"{len(missing)} checkpoint tensor(s) under {prefixes} have no place in the model, "
                         f"e.g. {missing[:3]}")
    return {"prefixes": list(prefixes), "tensors": len(loaded), "bytes": nbytes,
            "checkpoint_tensors": len(entries), "dropped_meta": dropped,
            "loaded_outside_prefixes": sorted(k for k in loaded if not k.startswith(prefixes))}


def _towers_only_loader(prefixes: tuple[str, ...], record: dict):
    """A stand-in for ``AutoModelForImageTextToText.from_pretrained``: meta model + only ``prefixes`` real."""

    def from_pretrained(model_path, *args, config=None, torch_dtype=None, trust_remote_code=False, **kwargs):
        import transformers
        from litert_torch.generative.export_hf.core import weights_loader as wl

        with wl.init_params_on_meta():
            model = transformers.AutoModelForImageTextToText.from_config(
                config=config, torch_dtype=torch_dtype, trust_remote_code=trust_remote_code)
        record.update(materialize_towers(model, model_path, prefixes))
        return model

    return from_pretrained


def export_tower(model_dir: str | os.PathLike, tower: str, work_dir: str | os.PathLike,
                 log: Callable[[str], None] = print) -> tuple[dict[str, Path], dict[str, Any]]:
    """Child side: convert one tower with only its own weights in memory (plus the main
    embedding table when the tokenizer has the tower's end token, for that section)."""
    import contextlib

    import transformers

    prefixes = TOWER_PREFIXES[tower]
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    if TOWER_EOS[tower] in (getattr(tok, "special_tokens_map", {}) or {}):
        prefixes = prefixes + (EMBED_TOKENS,)
    loaded: dict[str, Any] = {}
    auto = transformers.AutoModelForImageTextToText
    with contextlib.ExitStack() as stack:
        # only the class the image_text_to_text task loads with; restored on exit
        if "from_pretrained" in auto.__dict__:
            stack.callback(setattr, auto, "from_pretrained", auto.__dict__["from_pretrained"])
        else:
            stack.callback(delattr, auto, "from_pretrained")
        auto.from_pretrained = staticmethod(_towers_only_loader(prefixes, loaded))
        files, rec = export_encoders(model_dir, work_dir, log, towers=(tower,))
    rec["loaded"] = loaded
    return files, rec


def convert_towers(model_dir: str | os.PathLike, work_dir: str | os.PathLike,
                   towers: tuple[str, ...] = ("vision", "audio"),
                   log: Callable[[str], None] | None = None,
                   failed_log_dir: str | os.PathLike | None = None) -> tuple[dict[str, Path], dict[str, Any]]:
    """Parent side: one ``python -m edgekit.builder.encoders`` child per tower.

    A failed child's log is copied to ``failed_log_dir`` (when given) and named in the error.

    Returns ``({section: float32 .tflite}, record)``; the record has each child's
    sections, what it loaded, its wall time and its peak RSS (``ru_maxrss`` of the child).
    """
    import json
    import sys

    from edgekit.builder.export import child_failure, run_conversion_child
    from edgekit.errors import BuildError

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rec: dict[str, Any] = {"route": "streamed: one child per tower, only the tower's weights loaded",
                           "sections": {}, "skipped": {}, "towers": {}}
    for tower in towers:
        out = work / tower
        logf = work / f"{tower}.log"
        cmd = [sys.executable, "-m", "edgekit.builder.encoders", "--model", str(Path(model_dir).resolve()),
               "--tower", tower, "--output-dir", str(out)]
        code, seconds, peak = run_conversion_child(cmd, logf)
        result = out / "encoders.json"
        if code != 0 or not result.is_file():
            why = child_failure(code, logf)
            if failed_log_dir is not None:
                import shutil

                kept = Path(failed_log_dir) / f"failed-{tower}-{os.getpid()}.log"
                shutil.copyfile(logf, kept)
                logf = kept
            raise BuildError(f"{tower} encoder conversion failed: {why} (log: {logf})")
        child = json.loads(result.read_text())
        for sec, path in child["files"].items():
            files[sec] = Path(path)
        rec["sections"].update(child["record"]["sections"])
        rec["skipped"].update(child["record"]["skipped"])
        rec["towers"][tower] = {"seconds": round(seconds, 3), "peak_rss_bytes": peak,
                                "loaded": child["record"].get("loaded")}
        if log is not None:
            log(f"{tower}: {len(child['files'])} section(s) in {seconds:.0f} s, "
                f"child peak RSS {peak / 2**30:.2f} GiB")
    return files, rec


TOWERS_CODE_VERSION = 1  # bump when the tower conversion's output changes


def towers_key(source_identity: dict[str, Any], towers: tuple[str, ...]) -> str:
    """Cache key of the towers' float sections: the weights, the towers, the toolchain, this code."""
    import hashlib
    import json

    from edgekit.builder.export import toolchain_versions

    blob = json.dumps({"source": source_identity, "towers": list(towers), "toolchain": toolchain_versions(),
                       "code": TOWERS_CODE_VERSION, "vision_soft_tokens": VISION_SOFT_TOKENS,
                       "audio_frames": AUDIO_FRAMES}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_towers(model_dir: str | os.PathLike, source_identity: dict[str, Any], cache_dir: str | os.PathLike,
                  towers: tuple[str, ...] = ("vision", "audio"),
                  log: Callable[[str], None] | None = None) -> tuple[dict[str, Path], dict[str, Any]]:
    """:func:`convert_towers` through the cache, one entry per tower (``<cache>/encoders/<key>/``).

    The record merges the towers'; a tower taken from the cache keeps the record its
    conversion wrote (seconds, peak RSS) with ``cached: true``.
    """
    files: dict[str, Path] = {}
    rec: dict[str, Any] = {"route": "streamed: one child per tower, only the tower's weights loaded",
                           "sections": {}, "skipped": {}, "towers": {}}
    for tower in towers:
        f, r = _cached_tower(model_dir, source_identity, Path(cache_dir) / "encoders", tower, log)
        files.update(f)
        rec["sections"].update(r["sections"])
        rec["skipped"].update(r["skipped"])
        rec["towers"].update(r["towers"])
    return files, rec


def _cached_tower(model_dir, source_identity: dict[str, Any], root: Path, tower: str,
                  log) -> tuple[dict[str, Path], dict[str, Any]]:
    import fcntl
    import json
    import shutil

    from edgekit.fsutil import atomic_write_json, partial_dir

    root.mkdir(parents=True, exist_ok=True)
    key = towers_key(source_identity, (tower,))
    entry = root / key
    with open(root / f".{key}.lock", "w") as lock:  # one conversion per key at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (entry / "towers.json").is_file():
            saved = json.loads((entry / "towers.json").read_text())
            files = {sec: entry / name for sec, name in saved["files"].items()}
            if all(f.is_file() for f in files.values()):
                rec = saved["record"]
                for t in rec["towers"].values():
                    t.update(cached=True, key=key)
                return files, rec
        work = partial_dir(root, key)
        try:
            files, rec = convert_towers(model_dir, work / "convert", (tower,), log, failed_log_dir=root)
            for sec, f in files.items():
                os.replace(f, work / f"{sec}.tflite")
            shutil.rmtree(work / "convert", ignore_errors=True)
            for t in rec["towers"].values():
                t.update(source=source_identity)
            atomic_write_json(work / "towers.json", {"files": {sec: f"{sec}.tflite" for sec in files},
                                                     "record": rec})
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(work, entry)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        for t in rec["towers"].values():
            t.update(cached=False, key=key)
        return {sec: entry / f"{sec}.tflite" for sec in files}, rec


def append_sections(toml: str | os.PathLike, sections: dict[str, Path]) -> None:
    """Add TFLite sections to an unpacked bundle's ``model.toml`` (litert-lm-builder layout)."""
    from edgekit.fsutil import atomic_write_text

    toml = Path(toml)
    text = toml.read_text()
    for name, path in sections.items():
        mt = name[len("tf_lite_"):]
        text += f'\n[[section]]\nmodel_type = "{mt}"\nsection_type = "TFLiteModel"\ndata_path = "{Path(path).resolve()}"\n'
    atomic_write_text(toml, text)


def _child(argv: list[str] | None = None) -> int:
    import argparse

    from edgekit.fsutil import atomic_write_json

    ap = argparse.ArgumentParser(prog="python -m edgekit.builder.encoders")
    ap.add_argument("--model", required=True)
    ap.add_argument("--tower", required=True, choices=sorted(TOWER_PREFIXES))
    ap.add_argument("--output-dir", required=True)
    a = ap.parse_args(argv)
    out = Path(a.output_dir)
    files, rec = export_tower(a.model, a.tower, out)
    atomic_write_json(out / "encoders.json", {"files": {k: str(v) for k, v in files.items()}, "record": rec})
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_child())
