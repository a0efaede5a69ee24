"""transformers' causal LM for a pruned folder, so `polyhead train` (e.g. distillation) can take a
pruned student. A folder whose layers all have the same sizes is a plain Hugging Face config and
loads as is; per-layer sizes (--allocation global) are built here: the model is made from its
config, each layer's q_proj / o_proj / gate / up / down replaced by linears of that layer's size
(transformers' attention reads the head count from the projection's shape, and its GQA repeat from
num_key_value_groups, set per layer), then the weights are loaded. `save_pretrained` of the result
writes the same layout back (config.json keeps its polyhead_pruning block)."""

from pathlib import Path

import torch
from torch import nn


def load_causal_lm(folder: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM

    from polyhead.models.config import ModelConfig
    from polyhead.models.loader import read_float_weights

    hf_config = AutoConfig.from_pretrained(folder)
    pruning = getattr(hf_config, "polyhead_pruning", None)
    if not pruning or ModelConfig.from_hf(hf_config).is_uniform:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    config = ModelConfig.from_hf(hf_config)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    for layer, size, heads in zip(model.model.layers, config.intermediate_sizes, config.layer_num_heads):
        resize_layer(layer, config, size, heads, dtype)
    state = read_float_weights(Path(folder))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"weights in {str(folder)!r} do not fit its polyhead_pruning sizes: missing {missing}, "
                         f"unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def resize_layer(layer: nn.Module, config, intermediate_size: int, num_heads: int, dtype: torch.dtype) -> None:
    attn, mlp = layer.self_attn, layer.mlp
    hidden, q_size = config.hidden_size, num_heads * config.head_dim
    attn.q_proj = nn.Linear(hidden, q_size, bias=attn.q_proj.bias is not None, dtype=dtype)
    attn.o_proj = nn.Linear(q_size, hidden, bias=attn.o_proj.bias is not None, dtype=dtype)
    attn.num_key_value_groups = num_heads // config.num_kv_heads
    mlp.gate_proj = nn.Linear(hidden, intermediate_size, bias=False, dtype=dtype)
    mlp.up_proj = nn.Linear(hidden, intermediate_size, bias=False, dtype=dtype)
    mlp.down_proj = nn.Linear(intermediate_size, hidden, bias=False, dtype=dtype)
    mlp.intermediate_size = intermediate_size
