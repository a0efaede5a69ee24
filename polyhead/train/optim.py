"""AdamW over the trainable parameters and the LR schedule: linear warmup, then constant, linear
decay or cosine decay to 0 at the last optimizer step."""

import math

import torch


def build_optimizer(params: list[torch.nn.Parameter], settings,
                    no_decay: list[torch.nn.Parameter] = ()) -> torch.optim.AdamW:
    """settings: the config's train.optimizer (lr, weight_decay, betas); `no_decay` (learned loss
    weights) get no weight decay."""
    if not params:
        raise ValueError("nothing to train: no trainable parameters (train.mode heads with only generate tasks?)")
    groups = [{"params": list(params)}]
    if no_decay:
        groups.append({"params": list(no_decay), "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=settings.lr, betas=tuple(settings.betas),
                             weight_decay=settings.weight_decay)


def lr_factor(step: int, total_steps: int, name: str, warmup_steps: int) -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if name == "linear":
        return 1.0 - progress
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"train.schedule.name must be constant, linear or cosine, got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """schedule: the config's train.schedule (name, warmup_steps)."""
    name, warmup = schedule.name, schedule.warmup_steps
    lr_factor(0, total_steps, name, warmup)  # a bad name fails here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, name, warmup))
