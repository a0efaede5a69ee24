"""Swap a built encoder's layers for their CPU fast paths before serving: every linear packed
in oneDNN's blocked layout (polyhead.models.packed_linear), and each layer's MLP up-projection
fused with its GELU in one oneDNN call, which saves a pass over the widest activation
([T, intermediate]): ~10% of that call measured on this CPU. polyhead's trainer never builds these
modules: it trains through transformers' own model (polyhead/train/model.py)."""

import torch
from torch import nn

from polyhead.models.bert import EncoderLayer, EncoderModel
from polyhead.models.packed_linear import can_pack, pack_linear_layers


class PackedGeluLinear(nn.Module):
    """gelu(x @ W.T + b) with W pre-packed; `approximate` as F.gelu's ("none" = erf, "tanh")."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 32))
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in_features] -> [T, out_features], activated
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "gelu", [], self.approximate)


def prepare_encoder_for_inference(model: EncoderModel) -> EncoderModel:
    weight = next(model.parameters())
    if not can_pack(weight.device, weight.dtype):
        return model
    for layer in model.modules():
        if isinstance(layer, EncoderLayer):
            layer.up_proj = PackedGeluLinear(layer.up_proj.weight, layer.up_proj.bias, layer.approximate)
            layer.is_activation_fused = True
    return pack_linear_layers(model)
