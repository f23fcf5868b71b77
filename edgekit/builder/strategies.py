"""How the text sections of a build are quantized: one function per kind, picked from a registry.

The build (:mod:`edgekit.builder.pipeline`) unpacks the exported float (or stand-in)
bundle, then hands its text sections to the strategy of its kind:

=============  ===========================================================================
kind           what it does
=============  ===========================================================================
``streamed``   full-size route: ranges from the checkpoint's torch forward (or a QAT
               checkpoint's SRQ scales), quantize the stand-in, fill the real weights
``float16``    ai-edge-quantizer's fp16 recipe on every section
``float32``    nothing: the export is the bundle
``qat_exact``  a QAT checkpoint's integers and SRQ scales, carried exactly
``static``     calibrate through the float signatures, static int8 activations + N-bit weights
``dynamic``    N-bit weights, dynamic activations
=============  ===========================================================================

A strategy takes a :class:`QuantizeJob` and returns the sections it replaced and the
calibration record (None when it calibrated nothing). A new kind is one function added
to :data:`STRATEGIES` and a line in :func:`kind_of`; each can be called without an
export (tests/toolchain/test_strategies.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

PD = "tf_lite_prefill_decode"


@dataclasses.dataclass
class QuantizeJob:
    """What a strategy may read. ``run(stage, what, fn, *args)`` runs and times one step."""

    secs: dict[str, Path]  # text section -> float (or stand-in) .tflite
    scheme: Any
    work: Path
    run: Callable
    float_bundle: Path | None = None  # the export the sections came from (tokenizer, calibration signatures)
    ckpt_dir: Path | None = None
    vocab: int = 0
    prefill: int = 0
    cache_length: int = 0
    decode_steps: int = 8
    calibration_samples: int = 64
    calib_texts: list[str] = dataclasses.field(default_factory=list)
    calib_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    qat_build: Any = None
    tokenize: Callable | None = None  # (bundle, texts, limit) -> token id lists
    progress: Callable | None = None  # (stage, message, fraction) like the build's progress


Result = tuple[dict[str, Path], "dict[str, Any] | None"]


def kind_of(scheme, qat_build, streamed: bool) -> str:
    """The strategy a build uses."""
    if streamed:
        return "streamed"
    if scheme.is_float:
        return "float16" if scheme.float_dtype == "float16" else "float32"
    if qat_build is not None and qat_build.exact:
        return "qat_exact"
    return "static" if scheme.static_activations else "dynamic"


def _streamed(job: QuantizeJob) -> Result:
    from edgekit.builder import streamed as sm

    sch, calib_rec, chunks = job.scheme, None, None
    if not sch.is_float and sch.static_activations and job.qat_build is None:  # QAT: SRQ scales instead
        calib_rec = dict(job.calib_info)
        ids = job.tokenize(job.float_bundle, job.calib_texts, 1 << 20)
        chunks = sm.calibration_chunks(ids, min(128, job.prefill * 4))
    progress = (lambda msg: job.progress("fill", msg, None)) if job.progress else None
    filled, rec = sm.build_sections(job.secs, job.ckpt_dir, sch, job.work, job.vocab, job.run, chunks,
                                    progress=progress, qat=job.qat_build)
    if calib_rec is not None:
        calib_rec.update(rec.get("calibration", {}))
    return dict(filled), calib_rec


def _float16(job: QuantizeJob) -> Result:
    from edgekit.builder import quantize as qz

    out, recipe = {}, qz.fp16_recipe()
    for sec, path in job.secs.items():
        dst = job.work / f"{sec}.tflite"
        job.run("quantize", f"{sec}: float16 weights", qz.quantize_weights, path, dst, recipe)
        out[sec] = dst
    return out, None


def _float32(job: QuantizeJob) -> Result:
    return {}, None


def _plans(job: QuantizeJob) -> dict[str, list]:
    from edgekit.builder import quantize as qz

    return {sec: qz.plan_section(path, sec, job.scheme.bits_for) for sec, path in job.secs.items()}


def _qat_exact(job: QuantizeJob) -> Result:
    return dict(job.qat_build.quantize(job.secs, _plans(job), job.work, job.run)), None


def _embedders(job: QuantizeJob, plans: dict[str, list], out: dict[str, Path]) -> None:
    """Every section but prefill/decode: channel-wise weights (lookup tables and FCs)."""
    from edgekit.builder import quantize as qz

    for sec in job.secs:
        if sec == PD:
            continue
        rec = qz.embedding_recipe(plans[sec]) + qz.dynamic_recipe(plans[sec])
        if rec:
            dst = job.work / f"{sec}.tflite"
            job.run("quantize", f"{sec}: channel-wise weights", qz.quantize_weights, job.secs[sec], dst, rec)
            out[sec] = dst


def _static(job: QuantizeJob) -> Result:
    from edgekit.builder import quantize as qz

    plans = _plans(job)
    calib_rec = dict(job.calib_info)
    ids = job.tokenize(job.float_bundle, job.calib_texts, job.cache_length - job.decode_steps - 1)
    feeds = job.run("calibrate", f"{len(ids)} prompts through the float signatures", qz.record_calibration,
                    job.float_bundle, ids, job.decode_steps, max_samples=job.calibration_samples)
    calib_rec["samples"] = {k: len(v) for k, v in feeds.items()}
    calib_rec["decode_steps"] = job.decode_steps
    calib_rec["max_samples_per_signature"] = job.calibration_samples
    calib_rec["activations"] = {"granularity": "per-tensor", "symmetric": True, "range": "min/max"}
    dst = job.work / f"{PD}.tflite"
    kv_int8 = job.scheme.kv_cache == "int8"
    job.run("quantize", "prefill/decode: static int8 activations, N-bit weights"
            + (", int8 KV cache" if kv_int8 else ""), qz.quantize_static,
            job.secs[PD], dst, plans[PD], feeds, kv_int8=kv_int8)
    del feeds
    out = {PD: dst}
    _embedders(job, plans, out)
    return out, calib_rec


def _dynamic(job: QuantizeJob) -> Result:
    from edgekit.builder import quantize as qz

    plans = _plans(job)
    dst = job.work / f"{PD}.tflite"
    job.run("quantize", "prefill/decode: N-bit weights (dynamic activations)", qz.quantize_weights,
            job.secs[PD], dst, qz.dynamic_recipe(plans[PD]))
    out = {PD: dst}
    _embedders(job, plans, out)
    return out, None


STRATEGIES: dict[str, Callable[[QuantizeJob], Result]] = {
    "streamed": _streamed,
    "float16": _float16,
    "float32": _float32,
    "qat_exact": _qat_exact,
    "static": _static,
    "dynamic": _dynamic,
}


def quantize_text(kind: str, job: QuantizeJob) -> Result:
    """Run the strategy ``kind`` on ``job``: (section -> replaced .tflite, calibration record or None)."""
    return STRATEGIES[kind](job)
