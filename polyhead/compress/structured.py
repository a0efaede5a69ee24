"""Structured pruning: remove whole MLP channels and query heads, so every matrix gets smaller.

Key/value heads are never removed. The paged KV cache is one [layers, 2, kv_heads, slots, head_dim]
tensor that the native decode kernel reads in place; per-layer KV heads would need a cache tensor
and byte accounting per layer. Query heads are removed in equal numbers from every GQA group of a
layer (each group keeps its best heads), so a layer keeps Hq / Hkv query heads per key/value head
and attention runs unchanged. KV heads are also the cheaper part (SmolLM2: 3 of 9 heads).

Allocation: `uniform` (the default) removes the same fraction in every layer. Raw scores do not
compare across layers (activation norms grow with depth), uniform layers are a plain Hugging Face
config that transformers, PEFT and every other tool load, and equal shapes keep each layer's cost
equal. `global` lets the scores decide how much each layer keeps: each layer's scores are divided
by their mean, then the lowest across all layers go, each layer keeping at least MIN_KEEP_FRACTION
of its channels and one query head per group.
"""

from dataclasses import dataclass

import torch

from polyhead.compress.calibration import ActivationNorms
from polyhead.compress.scores import channel_scores, head_scores
from polyhead.compress.spec import PruneSpec
from polyhead.models.config import ModelConfig

MIN_KEEP_FRACTION = 0.1  # global allocation: channels a layer keeps at least


@dataclass
class StructuredPlan:
    channels: list[torch.Tensor]  # per layer: kept MLP channel indices, ascending
    heads: list[torch.Tensor]  # per layer: kept query head indices, ascending (equal count per group)


def round_half_up(x: float) -> int:
    return int(x + 0.5)


def plan_structured(state: dict[str, torch.Tensor], config: ModelConfig, spec: PruneSpec,
                    norms: ActivationNorms | None) -> StructuredPlan:
    channel, head = [], []
    for i in range(config.num_layers):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        channel.append(channel_scores(state[mlp + "down_proj.weight"], norms and norms.down[i]))
        head.append(head_scores(state[attn + "o_proj.weight"], norms and norms.o[i], config.head_dim))
    group = [config.layer_num_heads[i] // config.num_kv_heads for i in range(config.num_layers)]
    if spec.allocation == "uniform":
        keep_channels = [len(s) - min(round_half_up(spec.mlp * len(s)), len(s) - 1) for s in channel]
        keep_per_group = [g - min(round_half_up(spec.heads * g), g - 1) for g in group]
    else:
        keep_channels = _global_channel_counts(channel, spec.mlp)
        keep_per_group = _global_head_counts(head, group, config.num_kv_heads, spec.heads)
    return StructuredPlan(
        [torch.topk(s, k).indices.sort().values for s, k in zip(channel, keep_channels)],
        [_top_heads_per_group(s, config.num_kv_heads, k) for s, k in zip(head, keep_per_group)])


def _top_heads_per_group(scores: torch.Tensor, num_kv_heads: int, keep: int) -> torch.Tensor:
    # scores: [Hq], group g holds heads [g * G, (g + 1) * G) -> kept heads, ascending
    grouped = scores.view(num_kv_heads, -1)  # [Hkv, G]
    best = torch.topk(grouped, keep, dim=1).indices.sort(dim=1).values  # [Hkv, keep]
    return (best + torch.arange(num_kv_heads).unsqueeze(1) * grouped.shape[1]).flatten()


def _global_channel_counts(scores: list[torch.Tensor], ratio: float) -> list[int]:
    total = sum(len(s) for s in scores)
    candidates = []  # (normalized score, layer) of every channel a layer may lose
    for i, s in enumerate(scores):
        floor = max(1, round_half_up(MIN_KEEP_FRACTION * len(s)))
        normalized = (s / s.mean().clamp_min(1e-12)).sort().values[: len(s) - floor]
        candidates += [(v, i) for v in normalized.tolist()]
    candidates.sort()
    removed = [0] * len(scores)
    for _, i in candidates[: round_half_up(ratio * total)]:
        removed[i] += 1
    return [len(s) - r for s, r in zip(scores, removed)]


def _global_head_counts(scores: list[torch.Tensor], groups: list[int], num_kv_heads: int, ratio: float) -> list[int]:
    # A unit is one query head in every group of a layer; its score is the mean over groups of the
    # r-th lowest head, so a layer's units are removed lowest first.
    total = sum(groups)
    units = []
    for i, (s, g) in enumerate(zip(scores, groups)):
        ranked = (s / s.mean().clamp_min(1e-12)).view(num_kv_heads, g).sort(dim=1).values.mean(0)  # [G]
        units += [(v, i) for v in ranked[: g - 1].tolist()]
    units.sort()
    removed = [0] * len(scores)
    for _, i in units[: round_half_up(ratio * total)]:
        removed[i] += 1
    return [g - r for g, r in zip(groups, removed)]


def apply_structured(state: dict[str, torch.Tensor], config: ModelConfig,
                     plan: StructuredPlan) -> dict[str, torch.Tensor]:
    """Slice a Hugging Face state dict: q_proj rows and o_proj columns of the removed heads, gate/up
    rows and down_proj columns of the removed channels. Returns a new dict (others shared)."""
    out = dict(state)
    dim = config.head_dim
    for i, (channels, heads) in enumerate(zip(plan.channels, plan.heads)):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        rows = (heads.unsqueeze(1) * dim + torch.arange(dim)).flatten()  # [kept heads * D]
        out[attn + "q_proj.weight"] = state[attn + "q_proj.weight"][rows].contiguous()
        if attn + "q_proj.bias" in state:
            out[attn + "q_proj.bias"] = state[attn + "q_proj.bias"][rows].contiguous()
        out[attn + "o_proj.weight"] = state[attn + "o_proj.weight"][:, rows].contiguous()
        for name in ("gate_proj", "up_proj"):
            out[mlp + f"{name}.weight"] = state[mlp + f"{name}.weight"][channels].contiguous()
        out[mlp + "down_proj.weight"] = state[mlp + "down_proj.weight"][:, channels].contiguous()
    return out


def mask_structured(state: dict[str, torch.Tensor], config: ModelConfig,
                    plan: StructuredPlan) -> dict[str, torch.Tensor]:
    """The same model at its full shapes, the removed channels' and heads' outputs zeroed (the
    reference a pruned model must equal): the o_proj / down_proj columns that read them."""
    out = dict(state)
    dim = config.head_dim
    for i, (channels, heads) in enumerate(zip(plan.channels, plan.heads)):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        o = state[attn + "o_proj.weight"].clone()
        keep = torch.zeros(o.shape[1] // dim, dtype=torch.bool)
        keep[heads] = True
        o[:, ~keep.repeat_interleave(dim)] = 0
        out[attn + "o_proj.weight"] = o
        down = state[mlp + "down_proj.weight"].clone()
        keep = torch.zeros(down.shape[1], dtype=torch.bool)
        keep[channels] = True
        down[:, ~keep] = 0
        out[mlp + "down_proj.weight"] = down
    return out
