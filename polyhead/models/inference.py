"""Swap a built model's layers for their CPU fast paths before serving: oneDNN-packed float
linears, the native RMSNorm, and each quantized layer's row threshold (measured). The model code
keeps one definition; these attach to it once."""

from torch import nn

from polyhead.kernels import rms_norm_kernel
from polyhead.models.llama import RMSNorm
from polyhead.models.packed_linear import can_pack, pack_linear_layers
from polyhead.quant.attach import quantized_layers
from polyhead.quant.tuning import tune_row_thresholds


def prepare_for_inference(model: nn.Module) -> nn.Module:
    weight = next(model.parameters())
    if can_pack(weight.device, weight.dtype):
        pack_linear_layers(model)
    tune_row_thresholds(quantized_layers(model), weight.dtype)
    kernel = rms_norm_kernel(weight.dtype) if weight.device.type == "cpu" else None
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.kernel = kernel
    return model
