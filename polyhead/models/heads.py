"""Task heads on the backbone's final hidden states, shared by the trainer and the engine.

The backbone's output is the final-normed hidden state of every token (what Hugging Face
calls `last_hidden_state`). A classify head reads one pooled vector per sequence, a tag head
reads every token, an embed pooler turns the tokens into one (optionally normalized) vector.
On disk a head is `head.safetensors` with `weight` [out, hidden] and, for classify/tag, `bias`
[out] (the task-pack format in polyhead/tasks/spec.py).
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


def pool(hidden: torch.Tensor, method: str) -> torch.Tensor:
    """hidden: [T, H], one sequence's token states -> [H]."""
    if method == "last":
        return hidden[-1]
    if method == "mean":
        return hidden.float().mean(0).to(hidden.dtype)
    if method == "cls":
        return hidden[0]
    raise ValueError(f"pooling must be last, mean or cls, got {method!r}")


def pool_padded(hidden: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """hidden: [B, T, H], mask: [B, T] (1 = real token, right-padded) -> [B, H]; for training."""
    if method == "last":
        return hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
    if method == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if method == "cls":
        return hidden[:, 0]
    raise ValueError(f"pooling must be last, mean or cls, got {method!r}")


class ClassifyHead(nn.Module):
    """One pooled vector per sequence -> label logits."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "last"):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_labels)
        self.pooling = pooling

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # pooled: [N, H] -> [N, labels] float32
        return F.linear(pooled.float(), self.linear.weight.float(), self.linear.bias.float())


class TagHead(nn.Module):
    """Every token's state -> tag logits (BIO)."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [..., H] -> [..., labels] float32
        return F.linear(hidden.float(), self.linear.weight.float(), self.linear.bias.float())


class EmbedPooler(nn.Module):
    """Token states -> one vector: pool, optionally project, optionally L2-normalize."""

    def __init__(self, pooling: str = "mean", normalize: bool = True, projection: torch.Tensor | None = None):
        super().__init__()
        self.pooling = pooling
        self.normalize = normalize
        self.projection = None if projection is None else nn.Parameter(projection, requires_grad=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # pooled: [N, H] (already pooled per sequence) -> [N, D] float32
        out = pooled.float()
        if self.projection is not None:
            out = out @ self.projection.float().t()
        return F.normalize(out, dim=-1) if self.normalize else out


def save_head(head: ClassifyHead | TagHead, path: str | Path) -> Path:
    """Write head.safetensors atomically (temp file + rename)."""
    path = Path(path)
    tensors = {"weight": head.linear.weight.detach().float().contiguous(),
               "bias": head.linear.bias.detach().float().contiguous()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return path


def load_head(path: str | Path, kind: str, num_labels: int, hidden_size: int,
              pooling: str = "last") -> ClassifyHead | TagHead:
    """Read a classify or tag head, checking its shape against the task's labels and the backbone."""
    tensors = load_file(str(path))
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None:
        raise ValueError(f"head {str(path)!r} must hold `weight` and `bias`, has {sorted(tensors)}")
    if tuple(weight.shape) != (num_labels, hidden_size) or tuple(bias.shape) != (num_labels,):
        raise ValueError(f"head {str(path)!r} has weight {tuple(weight.shape)}, bias {tuple(bias.shape)}; "
                         f"the task needs ({num_labels}, {hidden_size}) for {num_labels} labels on a "
                         f"backbone of hidden size {hidden_size}")
    head = ClassifyHead(hidden_size, num_labels, pooling) if kind == "classify" else TagHead(hidden_size, num_labels)
    with torch.no_grad():
        head.linear.weight.copy_(weight)
        head.linear.bias.copy_(bias)
    return head.eval().requires_grad_(False)
