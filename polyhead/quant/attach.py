"""Swap a built model's float layers for quantized ones (gpt-fast's handler pattern: the model
code stays plain nn.Linear / nn.Embedding).

Every linear is quantized, the LM head included. The token embedding, and so a tied LM head,
stays 8-bit under int4 (per group of 32, as llama.cpp's Q8_0): it is the layer most sensitive to
rounding, and llama.cpp's 4-bit files keep it at 6-8 bits too (the default model's Q4_1 GGUF
stores it as Q8_0).
"""

from dataclasses import dataclass

import torch
from torch import nn

from polyhead.quant.format import QuantizedWeight, quantize
from polyhead.quant.linear import QuantizedEmbedding, QuantizedLinear, Scratch

EMBEDDING_GROUP = 32  # the embedding / tied LM head under int4: int8 per 32, as Q8_0


@dataclass(frozen=True, slots=True)
class QuantizationSpec:
    bits: int  # 8 | 4
    group_size: int | None  # weights per scale; None: per output channel (int8)
    symmetric: bool = True  # int4: False stores a min per group (as Q4_1)

    @property
    def name(self) -> str:
        if self.bits == 8:
            return "int8" if self.group_size is None else f"int8-g{self.group_size}"
        return f"int4-g{self.group_size}" + ("" if self.symmetric else "-asym")


def quantize_model(model: nn.Module, spec: QuantizationSpec) -> nn.Module:
    """Quantize every nn.Linear and nn.Embedding of `model` (in place); returns it. A tied weight
    (embedding = LM head) is quantized once and shared."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    done: dict[int, QuantizedWeight] = {}  # by the float tensor's id
    by_name = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Embedding):
            continue
        weight = module.weight
        if id(weight) not in done:
            if id(weight) in embedding_weights and spec.bits == 4:
                done[id(weight)] = quantize(weight, 8, EMBEDDING_GROUP)
            else:
                done[id(weight)] = quantize(weight, spec.bits, spec.group_size, spec.symmetric)
        by_name[f"{name}.weight"] = done[id(weight)]
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return attach_quantized(model, by_name, dtype)


def attach_quantized(model: nn.Module, weights: dict[str, QuantizedWeight], dtype: torch.dtype) -> nn.Module:
    """Replace the modules whose `<module>.weight` is in `weights` by their quantized versions
    (linears keep their float bias; embeddings return `dtype`, the model's activations); one
    Scratch buffer is shared by the whole model."""
    scratch = Scratch()
    for name, weight in weights.items():
        module_name = name.removesuffix(".weight")
        parent_name, _, child_name = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child_name)
        if isinstance(old, nn.Embedding):
            new = QuantizedEmbedding(weight, dtype)
        else:
            bias = getattr(old, "bias", None)
            new = QuantizedLinear(weight, None if bias is None or bias.is_meta else bias, scratch)
        if (new.out_features if isinstance(new, QuantizedLinear) else new.num_embeddings) != weight.out_features:
            raise ValueError(f"quantized weight {name!r} has {weight.out_features} rows for a module of another size")
        setattr(parent, child_name, new)
    return model


def quantized_layers(model: nn.Module) -> list[QuantizedLinear]:
    return [m for m in model.modules() if isinstance(m, QuantizedLinear)]


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of every distinct quantized weight of `model` (a tied one counted once)."""
    seen = {id(m.weight_q): m.weight_q for m in model.modules() if isinstance(m, QuantizedLinear | QuantizedEmbedding)}
    return sum(w.nbytes for w in seen.values())
