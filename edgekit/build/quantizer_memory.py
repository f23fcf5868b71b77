"""ai-edge-quantizer with less memory on large graphs, the same bytes out.

``Quantizer.quantize(calibration_result)`` first runs ``_ensure_model_qsv_sufficient``:
it builds a TFLite interpreter on the whole float model (XNNPack packs every weight of
every op) only to list tensor names, and it can only fail when the calibration result
holds an *empty* entry. The streamed route gives fixed ranges for every FC input and
output (:func:`edgekit.build.streamed.ranges_to_qsv`), never an empty one; the classic
route's calibration writes min/max for every tensor it saw. On the full E2B stand-in's
prefill/decode section (592 MB) that interpreter took the quantization to 9.65 GiB peak
RSS, while every later phase (parameters, transformations, serialization) stayed under
1 GiB (measured phase by phase, docs/build-memory.md).

:func:`lean_qsv_check` skips the interpreter when no entry is empty, which is exactly
when the upstream check cannot raise; with an empty entry it runs the upstream check.

(Checked and not needed: ai-edge-quantizer computes a shared weight's quantized data
once per buffer, not once per consuming op: 17 ``uniform_quantize`` calls for the 17
weight buffers of that section.)
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def lean_qsv_check():
    """Within: ``Quantizer.quantize`` checks a calibration result without an interpreter
    when none of its entries is empty. The method is restored on exit."""
    from ai_edge_quantizer import quantizer

    cls = quantizer.Quantizer
    orig = cls._ensure_model_qsv_sufficient  # noqa: SLF001
    skipped = {"checks": 0, "skipped": 0}

    def check(self, calibration_result):
        skipped["checks"] += 1
        if any(not v for v in calibration_result.values()):
            return orig(self, calibration_result)
        skipped["skipped"] += 1
        return None

    cls._ensure_model_qsv_sufficient = check  # noqa: SLF001
    try:
        yield skipped
    finally:
        cls._ensure_model_qsv_sufficient = orig  # noqa: SLF001
