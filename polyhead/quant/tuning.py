"""Where a quantized layer switches from the weight-streaming kernel to dequantize + float32 matmul.

The kernel reads each 4/8-bit weight once and wins while a step is memory-bound (few rows); with
many rows, one float32 matmul over the dequantized weight (oneDNN/MKL's blocked GEMM) wins. The
crossover differs per layer shape and per CPU (AVX-512 or AVX2, its caches), so it is measured
once per distinct shape when the engine prepares the model: the smallest candidate row count at
which the dequantizing path is faster, best of a few runs each.
"""

import logging
import os
import time

import torch

from polyhead.quant.linear import QuantizedLinear

logger = logging.getLogger(__name__)

CANDIDATE_ROWS = (4, 8, 16, 32, 64, 128)
REPEATS = 3


def tune_row_thresholds(layers: list[QuantizedLinear], dtype: torch.dtype = torch.float32) -> dict[tuple, int | None]:
    """Set `dequantize_from_rows` on every layer for activations of `dtype`; returns it per
    (out, in, bits, group, asymmetric).
    POLYHEAD_QUANT_TUNING=0 skips the measurement (the kernel then serves every row count)."""
    if os.environ.get("POLYHEAD_QUANT_TUNING", "1") == "0":
        return {}
    by_shape: dict[tuple, list[QuantizedLinear]] = {}
    for layer in layers:
        if layer.kernel is not None and layer.dequantize_kernels[dtype] is not None:
            w = layer.weight_q
            key = (layer.out_features, layer.in_features, w.bits, w.group_size, w.mins is not None)
            by_shape.setdefault(key, []).append(layer)
    thresholds = {}
    with torch.inference_mode():
        for key, group in by_shape.items():
            threshold = _crossover(group[0], dtype)
            for layer in group:
                layer.dequantize_from_rows = threshold
            thresholds[key] = threshold
    logger.info("quantized layers switch to dequantize + matmul at rows: %s",
                {f"{k[1]}->{k[0]} int{k[2]}": v for k, v in thresholds.items()})
    return thresholds


def _crossover(layer: QuantizedLinear, dtype: torch.dtype) -> int | None:
    for rows in CANDIDATE_ROWS:
        x = torch.randn(rows, layer.in_features, dtype=dtype)
        if _best_time(layer.forward_dequantized, x) < _best_time(layer.forward_kernel, x):
            return rows
    return None


def _best_time(fn, x: torch.Tensor) -> float:
    fn(x)  # warm: first-touch of the scratch buffer, caches
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return best
