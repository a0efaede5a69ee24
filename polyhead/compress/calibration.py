"""Calibration: run text through polyhead's own forward and keep, for every linear of every layer,
the L2 norm of each input feature over all calibration tokens (what Wanda weighs weights by)."""

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from polyhead.models.attention import AttentionMetadata, PrefillChunk
from polyhead.models.llama import LlamaForCausalLM

DEFAULT_CALIBRATION = "calibration.txt"  # shipped beside this file
HELD_OUT_FRACTION = 0.2  # the default text's last fifth is kept out of calibration, for held-out loss


@dataclass
class ActivationNorms:
    qkv: list[torch.Tensor]  # per layer [hidden]: input of q/k/v (the input-normed states)
    o: list[torch.Tensor]  # per layer [Hq * D]: the attention output entering o_proj
    gate_up: list[torch.Tensor]  # per layer [hidden]: input of gate/up
    down: list[torch.Tensor]  # per layer [I]: silu(gate) * up, entering down_proj
    num_tokens: int  # calibration tokens seen


def read_calibration_text(path: str | Path | None) -> str:
    """The user's file, or the calibration part of the shipped text (its held-out tail excluded)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--calibration {str(path)!r} is not a file")
        text = path.read_text()
        if not text.strip():
            raise ValueError(f"--calibration {str(path)!r} is empty")
        return text
    return split_default_text()[0]


def split_default_text() -> tuple[str, str]:
    """The shipped text as (calibration, held out), split at a paragraph boundary."""
    text = resources.files("polyhead.compress").joinpath(DEFAULT_CALIBRATION).read_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    cut = max(1, round(len(paragraphs) * (1 - HELD_OUT_FRACTION)))
    return "\n\n".join(paragraphs[:cut]), "\n\n".join(paragraphs[cut:])


def token_sequences(tokenizer, text: str, seq_len: int, max_tokens: int) -> list[list[int]]:
    ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
    return [ids[i:i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) > 1]


def forward_sequence(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    """One sequence through the backbone as a single prefill chunk with a private cache: [T, hidden]."""
    config, num = model.config, len(ids)
    caches = [torch.zeros(2, config.num_kv_heads, num, config.head_dim, dtype=model.lm_head.weight.dtype)
              for _ in range(config.num_layers)]
    meta = AttentionMetadata(torch.arange(num), num, 0, None, None, None, [PrefillChunk(0, num, num, None, None)],
                             config.sliding_window)
    return model(torch.tensor(ids), torch.arange(num), caches, meta)


@torch.inference_mode()
def collect_activation_norms(model: LlamaForCausalLM, sequences: list[list[int]]) -> ActivationNorms:
    """model: plain modules (not prepared for inference), so the hooks see every linear's input."""
    layers = model.model.layers
    sums = {kind: [None] * len(layers) for kind in ("qkv", "o", "gate_up", "down")}

    def hook(kind, i):
        def record(_module, inputs):
            sq = inputs[0].float().pow(2).sum(0)  # [in]
            sums[kind][i] = sq if sums[kind][i] is None else sums[kind][i] + sq
        return record

    handles = []
    for i, layer in enumerate(layers):
        for kind, module in (("qkv", layer.self_attn.qkv_proj), ("o", layer.self_attn.o_proj),
                             ("gate_up", layer.mlp.gate_up_proj), ("down", layer.mlp.down_proj)):
            handles.append(module.register_forward_pre_hook(hook(kind, i)))
    try:
        for ids in sequences:
            forward_sequence(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    if not sequences:
        raise ValueError("calibration text gave no token sequences (it needs at least 2 tokens)")
    norms = {kind: [s.sqrt() for s in values] for kind, values in sums.items()}
    return ActivationNorms(**norms, num_tokens=sum(len(s) for s in sequences))
