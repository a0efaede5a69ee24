"""Unstructured and N:M (semi-structured) sparsity: zeros inside the dense matrices, shapes kept.

For quality studies: the matrices stay dense, so nothing runs faster here. Scores are compared
within each output row (as Wanda does): `unstructured R` zeros the R lowest-scored fraction of
every row; `N:M` zeros the N lowest of every M consecutive input weights of a row (2:4 is what
sparse tensor cores run).
"""

import torch

from polyhead.compress.calibration import ActivationNorms
from polyhead.compress.scores import weight_scores
from polyhead.compress.spec import PruneSpec
from polyhead.models.config import ModelConfig

# Hugging Face linear -> the ActivationNorms field holding its input's norms
LINEAR_INPUTS = {"self_attn.q_proj": "qkv", "self_attn.k_proj": "qkv", "self_attn.v_proj": "qkv",
                 "self_attn.o_proj": "o", "mlp.gate_proj": "gate_up", "mlp.up_proj": "gate_up",
                 "mlp.down_proj": "down"}


def prune_mask(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    # scores: [out, in] -> bool [out, in], True = keep
    rows, cols = scores.shape
    if spec.n_m is None:
        num_zero = round(spec.unstructured * cols)
        keep = torch.ones_like(scores, dtype=torch.bool)
        if num_zero:
            keep.scatter_(1, torch.topk(scores, num_zero, dim=1, largest=False).indices, False)
        return keep
    n, m = spec.n_m
    groups = scores.view(rows, cols // m, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2, largest=False).indices, False)
    return keep.view(rows, cols)


def apply_sparse(state: dict[str, torch.Tensor], config: ModelConfig, spec: PruneSpec,
                 norms: ActivationNorms | None) -> dict[str, torch.Tensor]:
    out = dict(state)
    for i in range(config.num_layers):
        for linear, kind in LINEAR_INPUTS.items():
            name = f"model.layers.{i}.{linear}.weight"
            weight = state[name]
            if spec.n_m is not None and weight.shape[1] % spec.n_m[1]:
                raise ValueError(f"--semi-structured {spec.n_m[0]}:{spec.n_m[1]}: {name} has {weight.shape[1]} "
                                 f"inputs, not a multiple of {spec.n_m[1]}")
            scores = weight_scores(weight, norms and getattr(norms, kind)[i])
            out[name] = weight * prune_mask(scores, spec).to(weight.dtype)
    return out
