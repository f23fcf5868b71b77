"""Which decoder layers tolerate 2-bit MLPs? One build per layer group, each measured against FP16.

The sweep starts from a scheme (default ``wNa8o8``) and derives:

- the **reference**: every text-decoder MLP at ``mlp_bits`` (default: the width the scheme
  gives the MLPs outside its 2-bit decode layers, 4 for wNa8o8), i.e. the scheme minus its
  decode-layer 2-bit rule; everything else (attention, embeddings, PLE, static int8
  activations, int8 outputs) exactly as the scheme says;
- one **variant per layer group**: the reference with that group's MLPs at 2 bits.

Variants are Scheme objects (two rules put in front of the scheme's own, first match wins),
built with the normal pipeline (:func:`edgekit.builder.pipeline.build`), so the float export
is done once and reused from the export cache by every build. Each bundle is scored with
:func:`edgekit.quality.evaluate` against the FP16 build of the same weights; a group
"tolerates" 2 bits when its perplexity rises by at most ``tolerance`` (relative) over the
reference's.

Builds already present in the output folder with the same scheme and weights are reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekit.errors import UsageError
from edgekit.results.evaluation import SweepResult, SweepRow

Progress = Callable[[str], None]

MLP_ANY = r"language_model\.layers\.\d+\.mlp\."
DEFAULT_TOLERANCE = 0.02


def layer_groups(num_layers: int, groups: int | None = None, group_size: int | None = None) -> list[tuple[int, ...]]:
    """Consecutive layer groups: ``groups`` nearly equal ones, or runs of ``group_size`` layers."""
    if groups is not None and group_size is not None:
        raise UsageError("--groups and --group-size exclude each other", hint="pass one of them")
    if group_size is not None:
        if group_size < 1 or group_size > num_layers:
            raise UsageError(f"--group-size must be between 1 and {num_layers} (the model's layers), got {group_size}")
        return [tuple(range(i, min(i + group_size, num_layers))) for i in range(0, num_layers, group_size)]
    k = groups if groups is not None else min(num_layers, 5)
    if k < 1 or k > num_layers:
        raise UsageError(f"--groups must be between 1 and {num_layers} (the model's layers), got {k}")
    base, extra = divmod(num_layers, k)
    out, start = [], 0
    for g in range(k):
        n = base + (1 if g < extra else 0)
        out.append(tuple(range(start, start + n)))
        start += n
    return out


def _label(layers: Sequence[int]) -> str:
    return f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}-{layers[-1]}"


def _row_label(kind: str, layers: Sequence[int], scheme_name: str, ref_bits: int | None) -> str:
    if kind == "reference":
        return f"none (all MLPs {ref_bits or 'float'}-bit)"
    if kind == "scheme":
        return f"{scheme_name} as shipped ({_label(layers) if layers else 'no decode layers'})"
    return _label(layers)


def _group_pattern(layers: Sequence[int]) -> str:
    return r"language_model\.layers\.(?:" + "|".join(str(i) for i in layers) + r")\.mlp\."


def variant_schemes(base, preset, groups: Sequence[Sequence[int]], mlp_bits: int | None = None):
    """(reference scheme, [(group, scheme), ...]) derived from ``base`` (resolved for ``preset``)."""
    from edgekit.schemes import Rule

    if mlp_bits is None:
        kv_layers = [i for i in range(preset.num_layers) if i not in preset.decode_layers] or [0]
        mlp_bits = base.bits_for(f"model.language_model.layers.{kv_layers[0]}.mlp.gate_proj")
    if mlp_bits not in (4, 8, None):
        raise UsageError(f"the sweep's reference MLP width must be 4, 8 or float, got {mlp_bits}")
    keep = Rule(MLP_ANY, mlp_bits, note="sweep reference: every decoder MLP at this width")
    ref = dataclasses.replace(
        base, name=f"{base.name}-mlp{mlp_bits or 'f'}",
        description=f"{base.name} with every decoder-layer MLP at {mlp_bits or 'float'} (sweep reference)",
        weight_rules=(keep,) + tuple(base.weight_rules))
    out = []
    for g in groups:
        two = Rule(_group_pattern(g), 2, note=f"sweep: layers {_label(g)} MLPs at 2 bits")
        s = dataclasses.replace(
            base, name=f"{base.name}-mlp2-{_label(g)}",
            description=f"{ref.description}, except layers {_label(g)} at 2 bits",
            weight_rules=(two, keep) + tuple(base.weight_rules))
        out.append((tuple(g), s))
    return ref, out, mlp_bits


def _reusable(out_root: Path, name: str, scheme, weights_sha256: dict[str, str] | None) -> Path | None:
    """The bundle of an earlier build of the same scheme and weights in ``out_root``, if any."""
    from edgekit.results import manifest as mf

    mpath = out_root / name / mf.MANIFEST_FILE
    if not mpath.is_file() or weights_sha256 is None:
        return None
    try:
        m = mf.read_manifest(mpath)
    except Exception:
        return None
    if m.scheme != scheme.to_dict() or m.weights_sha256 != weights_sha256 or m.bundle_file is None:
        return None
    b = out_root / name / m.bundle_file
    return b if b.is_file() else None


def _weights_sha256(preset, checkpoint) -> dict[str, str] | None:
    """Identity of the weights the builds will use (None: random weights, never reused)."""
    from edgekit.models.checkpoint import load_checkpoint

    d = Path(checkpoint) if checkpoint is not None else preset.shipped_checkpoint_dir
    if d is None or not d.is_dir() or not any(d.glob("*.safetensors")):
        return None
    return load_checkpoint(d, preset).weights_sha256


def run_sweep(
    model: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    scheme: Any = "wNa8o8",
    groups: int | None = None,
    group_size: int | None = None,
    mlp_bits: int | None = None,
    include_scheme: bool = True,
    text_only: bool = True,
    output: str | os.PathLike = "dist/sweep",
    cache_dir: str | os.PathLike | None = None,
    text: str | os.PathLike | None = None,
    max_tokens: int | None = 1024,
    seq_len: int = 128,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress | None = None,
) -> SweepResult:
    """Build the reference and one variant per layer group, score each against FP16; return the table."""
    from edgekit import quality
    from edgekit.builder.pipeline import build
    from edgekit.models.presets import get_preset
    from edgekit.results.evaluation import QualityResult
    from edgekit.results.manifest import bundle_name
    from edgekit.schemes import load_scheme

    say = progress or (lambda s: None)
    t0 = time.monotonic()
    preset = get_preset(model)
    base = load_scheme(scheme, preset)
    if base.is_float:
        raise UsageError(f"scheme {base.name} keeps everything float: nothing to sweep",
                         hint="sweep a quantized scheme such as wNa8o8")
    gs = layer_groups(preset.num_layers, groups, group_size)
    ref, variants, ref_bits = variant_schemes(base, preset, gs, mlp_bits)
    fp16 = load_scheme("fp16", preset)
    out_root = Path(output)
    sha = _weights_sha256(preset, checkpoint)

    def built(s) -> tuple[Path, bool, float]:
        name = bundle_name(preset.name, s.name, text_only)
        t = time.monotonic()
        old = _reusable(out_root, name, s, sha)
        if old is not None:
            say(f"sweep: {name}: reusing {old}")
            return old, True, 0.0
        say(f"sweep: building {name}")
        # The quantizer prints its own report to stdout: keep stdout for the sweep's data.
        with contextlib.redirect_stdout(sys.stderr):
            r = build(preset.name, checkpoint=checkpoint, scheme=s, text_only=text_only, output=out_root,
                      cache_dir=cache_dir, verify_engine=False, quality=False,
                      progress=lambda st, msg, dt: say(f"  {st}: {msg}" + (f" ({dt:.1f}s)" if dt is not None else "")))
        return r.bundle, False, round(time.monotonic() - t, 1)

    fp16_bundle, _, _ = built(fp16)
    runs = [("reference", (), ref)] + [("group", g, s) for g, s in variants]
    if include_scheme:
        runs.append(("scheme", tuple(preset.decode_layers), base))
    rows: list[SweepRow] = []
    ref = None  # the reference build's evaluation
    for kind, layers, s in runs:
        bundle, reused, secs = built(s)
        say(f"sweep: scoring {bundle.name} against {fp16_bundle.name}")
        q = QualityResult.from_dict(quality.evaluate(bundle, fp16_bundle, text=text, max_tokens=max_tokens,
                                                     seq_len=seq_len))
        rows.append(SweepRow(
            kind=kind, scheme=s.name, layers=tuple(layers), label=_row_label(kind, layers, base.name, ref_bits),
            layer_types=tuple(preset.layer_types[i] for i in layers),
            decode_layers=tuple(i for i in layers if i in preset.decode_layers),
            ppl_ratio=q.ppl_ratio, top1_agreement=q.top1_agreement, kl_mean=q.kl_mean, ppl_candidate=q.ppl_candidate,
            bundle=str(bundle), bundle_bytes=bundle.stat().st_size, build_seconds=secs, reused=reused,
        ))
        if kind == "reference":
            ref = q
    rows = [dataclasses.replace(r, ppl_increase_vs_reference=r.ppl_candidate / ref.ppl_candidate - 1.0) for r in rows]
    rows = [dataclasses.replace(r, tolerates_2bit=(r.ppl_increase_vs_reference <= tolerance) if r.kind == "group"
                                else None) for r in rows]
    return SweepResult(
        model=preset.name, scheme=base.name, reference_mlp_bits=ref_bits, groups=tuple(tuple(g) for g in gs),
        decode_layers=tuple(preset.decode_layers), tolerance=tolerance, fp16_bundle=str(fp16_bundle),
        ppl_fp16=ref.ppl_baseline, tokens=ref.tokens, eval_text_sha256=ref.eval_text_sha256, weights_sha256=sha,
        rows=tuple(rows), seconds=round(time.monotonic() - t0, 1),
    )
