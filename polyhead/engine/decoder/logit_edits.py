"""Per-row edits of the raw logits before sampling: a request's logit_bias, and min_tokens, which
keeps the tokens that would end a request (EOS, stop_token_ids) out of reach until it has that many.

Both run on the raw logits, after the reported logprobs are taken and before penalties, as vLLM
orders its logits processors. Only the (row, token) pairs named are touched: the cost follows the
number of biased or banned tokens, not batch * vocab.
"""

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class LogitEdit:
    """What one sampling row asks to change: the input the sampler hands to edit_logits."""

    logit_bias: dict[int, float]  # token id -> added to its logit
    banned_token_ids: frozenset[int]  # set to -inf this step (the stop tokens while under min_tokens)


def edit_logits(logits: torch.Tensor, edits: list[LogitEdit | None]) -> None:
    # logits: [B, V] float32 contiguous, changed in place; edits: [B], None where a row changes nothing
    vocab = logits.shape[1]
    flat = logits.view(-1)  # [B * V]
    biased = [(row * vocab + token, bias) for row, edit in enumerate(edits) if edit is not None
              for token, bias in edit.logit_bias.items()]
    if biased:
        index = torch.tensor([i for i, _ in biased], dtype=torch.long)  # [N]
        flat.index_add_(0, index, torch.tensor([b for _, b in biased], dtype=flat.dtype))
    banned = [row * vocab + token for row, edit in enumerate(edits) if edit is not None
              for token in edit.banned_token_ids if token < vocab]
    if banned:
        flat[torch.tensor(banned, dtype=torch.long)] = float("-inf")


def logit_edit(params, num_output_tokens: int, stop_token_ids: frozenset[int]) -> LogitEdit | None:
    """The edit a row needs this step: its bias, and its stop tokens while it has fewer than
    min_tokens (None when neither applies)."""
    banned = stop_token_ids if num_output_tokens < params.min_tokens else frozenset()
    if not params.logit_bias and not banned:
        return None
    return LogitEdit(params.logit_bias, banned)
