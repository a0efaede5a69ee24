"""Swap a built model's layers for their CPU fast paths before serving. Training keeps the
plain modules; serving attaches these once, so the model code has one definition."""

from torch import nn

from polyhead.kernels import rms_norm_kernel
from polyhead.models.llama import RMSNorm
from polyhead.models.packed_linear import can_pack, pack_linear_layers


def prepare_for_inference(model: nn.Module) -> nn.Module:
    weight = next(model.parameters())
    if can_pack(weight.device):
        pack_linear_layers(model)
    kernel = rms_norm_kernel(weight.dtype) if weight.device.type == "cpu" else None
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.kernel = kernel
    return model
