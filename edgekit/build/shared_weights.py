"""ai-edge-quantizer on a graph whose weights are read by many ops, without a copy per op.

The streamed route's stand-in (:mod:`edgekit.build.standin`) shares one weight among
every decoder Linear of the same role, shape and width: on full E2B a weight is read by
up to 40 FC ops per signature. ai-edge-quantizer caches a tensor's quantization
*parameters* per (buffer, config) (``common_utils.TensorQuantParamsCache``), but
``_materialize_tensors_with_quantized_data_update`` then calls
``uniform_quantize_tensor.uniform_quantize`` once per consuming op and keeps every
result until the model is written: the stand-in's 406 FC ops held the integers of the
whole model twice over (9.7 GiB measured on the E2B stand-in's 592 MB section).

:func:`one_copy_per_weight` memoizes that call for the same source array and the same
parameters, so every op holds the same array object. The quantizer's later
buffer-sharing check compares the arrays of ops that share a buffer; equal content gave
"same buffer" before and the same object gives it now, so the written graph is the
same bytes (``tests/test_streamed.py``). (The fp16 recipe's per-op ``astype(float16)``
copies in ``float_casting`` are not covered: that build's peak is elsewhere.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib

import numpy as np


def _array_key(a: np.ndarray) -> tuple:
    """Identity of a source array: its memory, shape, strides and dtype (the array is kept alive by the cache)."""
    a = np.asarray(a)
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)


def _value_key(v) -> object:
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        return (v.shape, v.dtype.str, hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())
    if dataclasses.is_dataclass(v):
        return tuple((f.name, _value_key(getattr(v, f.name))) for f in dataclasses.fields(v))
    if isinstance(v, (list, tuple)):
        return tuple(_value_key(x) for x in v)
    return repr(v)


def _params_key(params) -> tuple:
    """Every field of a quantization-params dataclass except the data it carries."""
    return tuple((f.name, _value_key(getattr(params, f.name)))
                 for f in dataclasses.fields(params) if f.name != "quantized_data")


@contextlib.contextmanager
def one_copy_per_weight():
    """Within: ai-edge-quantizer quantizes each shared weight once, not once per op.

    The module attributes are restored on exit; the memo lives only inside the block.
    """
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    orig_quantize = uqt.uniform_quantize
    stats = {"calls": 0, "computed": 0}

    def uniform_quantize(tensor_data, quantization_params, is_blockwise_quant: bool = False):
        stats["calls"] += 1
        key = ("q", _array_key(tensor_data), _params_key(quantization_params), bool(is_blockwise_quant))
        hit = memo.get(key)
        if hit is not None:
            return hit[1]
        stats["computed"] += 1
        out = orig_quantize(tensor_data, quantization_params, is_blockwise_quant)
        memo[key] = (tensor_data, out)  # the source stays referenced, so its address is not reused
        return out

    uqt.uniform_quantize = uniform_quantize
    try:
        yield stats
    finally:
        uqt.uniform_quantize = orig_quantize
        memo.clear()
