"""Importance scores. A structure's score sums the scores of the weights that read it:

    magnitude: |W_ij|                     wanda: |W_ij| * ||X_j||_2 (X_j: input feature j over the calibration tokens)

An MLP channel j is read by column j of down_proj; a query head by its head_dim columns of o_proj,
so removing it removes exactly those products from the layer's output (Wanda, Sun et al. 2023,
applied to whole input columns as in FLAP / LLM-Pruner's channel scores).
"""

import torch


def weight_scores(weight: torch.Tensor, input_norm: torch.Tensor | None) -> torch.Tensor:
    # weight: [out, in]; input_norm: [in] or None (magnitude) -> [out, in] float32
    scores = weight.float().abs()
    return scores if input_norm is None else scores * input_norm.float()


def channel_scores(down_weight: torch.Tensor, down_input_norm: torch.Tensor | None) -> torch.Tensor:
    # down_weight: [hidden, I] -> [I]
    return weight_scores(down_weight, down_input_norm).sum(0)


def head_scores(o_weight: torch.Tensor, o_input_norm: torch.Tensor | None, head_dim: int) -> torch.Tensor:
    # o_weight: [hidden, Hq * D] -> [Hq]
    return weight_scores(o_weight, o_input_norm).sum(0).view(-1, head_dim).sum(-1)
