"""Layers over quantized weights, swapped into a built model (the model code stays plain nn.Linear).

QuantizedLinear runs the native weight-only kernel (polyhead/kernels/quant_gemm.cpp): float32
activations times weights dequantized in registers, so it equals dequantize-then-F.linear up to
the order of the sums. That kernel wins while the step is memory-bound (few rows); from some
number of rows on, dequantizing the whole weight into a shared scratch buffer and running one
float32 (or bfloat16) matmul wins. Where that crossover lies depends on the layer's shape and the
CPU, so it is measured at load (polyhead/quant/tuning.py), not guessed. QuantizedEmbedding
dequantizes only the looked-up rows; a tied LM head and its embedding share one QuantizedWeight.
"""

import torch
import torch.nn.functional as F
from torch import nn

from polyhead.kernels import quant_dequantize_kernel, quant_gemm_kernel
from polyhead.quant.format import QuantizedWeight


class Scratch:
    """One buffer per dtype that the dequantizing path of every layer of a model reuses (a step runs
    its layers one at a time): at most one layer's dequantized weight exists beside the quantized
    model, grown to the largest layer that takes that path."""

    def __init__(self):
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def take(self, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        buffer = self.buffers.get(dtype)
        if buffer is None or buffer.numel() < rows * cols:
            buffer = self.buffers[dtype] = torch.empty(rows * cols, dtype=dtype)
        return buffer[: rows * cols].view(rows, cols)


def register_quantized(module: nn.Module, weight: QuantizedWeight) -> None:
    """The weight's tensors as the module's buffers (the same storage, not copies), so they count
    where a module's memory is counted; a tied weight's buffers share one storage."""
    module.register_buffer("qweight", weight.qweight)
    module.register_buffer("scales", weight.scales)
    module.register_buffer("mins", weight.mins)


class QuantizedLinear(nn.Module):
    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None = None, scratch: Scratch | None = None):
        super().__init__()
        self.weight_q = weight
        register_quantized(self, weight)
        self.out_features, self.in_features = weight.out_features, weight.in_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.kernel = quant_gemm_kernel()
        self.dequantize_kernels = {dtype: quant_dequantize_kernel(dtype) for dtype in (torch.float32, torch.bfloat16)}
        self.scratch = scratch or Scratch()
        self.dequantize_from_rows: int | None = None  # from this many rows on, dequantize + matmul (tuning.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in_features] (any float dtype) -> [T, out_features] in x's dtype
        if self.kernel is None:  # no compiler: the reference path, correct but slow
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.weight_q.dequantize().to(x.dtype), bias)
        if self.dequantize_from_rows is not None and x.shape[0] >= self.dequantize_from_rows:
            return self.forward_dequantized(x)
        return self.forward_kernel(x)

    def forward_dequantized(self, x: torch.Tensor) -> torch.Tensor:
        # bfloat16 activations multiply a bfloat16 weight (native bf16 matmuls, ~2.5x float32's speed)
        dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        w = self.weight_q
        weight = self.scratch.take(self.out_features, self.in_features, dtype)
        self.dequantize_kernels[dtype](w.qweight.data_ptr(), w.scales.data_ptr(),
                                       0 if w.mins is None else w.mins.data_ptr(), weight.data_ptr(),
                                       self.out_features, self.in_features, w.group_size, w.bits,
                                       torch.get_num_threads())
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), weight, bias).to(x.dtype)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float().contiguous()
        y = torch.empty(x32.shape[0], self.out_features, dtype=torch.float32)
        w = self.weight_q
        self.kernel(x32.data_ptr(), w.qweight.data_ptr(), w.scales.data_ptr(),
                    0 if w.mins is None else w.mins.data_ptr(), 0 if self.bias is None else self.bias.data_ptr(),
                    y.data_ptr(), x32.shape[0], self.out_features, self.in_features, w.group_size, w.bits,
                    torch.get_num_threads())
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        w = self.weight_q
        return (f"in_features={self.in_features}, out_features={self.out_features}, int{w.bits}, "
                f"group_size={w.group_size}, {'symmetric' if w.mins is None else 'asymmetric'}")


class QuantizedEmbedding(nn.Module):
    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype):
        super().__init__()
        self.weight_q = weight
        register_quantized(self, weight)
        self.dtype = dtype  # of the hidden states it returns
        self.num_embeddings, self.embedding_dim = weight.out_features, weight.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [T] -> [T, embedding_dim]
        return self.weight_q.rows(ids).dequantize().to(self.dtype)
