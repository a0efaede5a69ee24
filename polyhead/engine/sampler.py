"""Batched sampling: every row has its own parameters, all applied in tensor ops per step.

Order (as vLLM): penalties on the raw logits -> temperature -> top-k -> top-p -> min-p ->
sample. Reported logprobs are the raw model's log-softmax, before any of that.
"""

from dataclasses import dataclass

import torch

from polyhead.engine.params import SamplingParams


@dataclass(slots=True)
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # tokens generated so far (before this step)
    generator: torch.Generator | None  # the request's own RNG when params.seed is set


@dataclass(slots=True)
class TokenLogprobs:
    logprob: float  # log-prob of the chosen token
    top: list[tuple[int, float]]  # top-k (token_id, logprob), most likely first; [] when k == 0


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]  # one chosen token per row
    logprobs: list[TokenLogprobs | None]  # per row; None where the row asked for none


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        # logits: [B, V]
        logits = logits.float()
        raw_logprobs = None
        if any(r.params.logprobs is not None for r in rows):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        if any(r.params.needs_penalties for r in rows):
            logits = apply_penalties(logits.clone(), rows)
        if all(r.params.is_greedy for r in rows):
            chosen = logits.argmax(dim=-1)
        else:
            chosen = self._sample(logits, rows)
        token_ids = chosen.tolist()
        return SamplerOutput(token_ids, _gather_logprobs(raw_logprobs, chosen, rows))

    def _sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        greedy = logits.argmax(dim=-1)
        is_greedy = torch.tensor([r.params.is_greedy for r in rows])
        temperature = torch.tensor([r.params.temperature if r.params.temperature > 0 else 1.0 for r in rows])
        logits = logits / temperature.unsqueeze(1)
        if any(r.params.top_k > 0 or r.params.top_p < 1.0 for r in rows):
            logits = apply_top_k_top_p(logits, rows)
        probs = torch.softmax(logits, dim=-1)
        if any(r.params.min_p > 0 for r in rows):
            min_p = torch.tensor([r.params.min_p for r in rows]).unsqueeze(1)
            probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        # Exponential race: argmax(p / E), E ~ Exp(1), draws from p. Seeded rows draw their noise from
        # their own generator, so their output does not depend on what else shares the batch.
        noise = torch.empty_like(probs).exponential_()
        for i, row in enumerate(rows):
            if row.generator is not None:
                noise[i].exponential_(generator=row.generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(is_greedy, greedy, sampled)


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    # logits: [B, V], modified in place. Counts come from one scatter_add over all rows' tokens.
    batch, vocab = logits.shape
    output_counts = torch.zeros(batch, vocab)
    seen = torch.zeros(batch, vocab, dtype=torch.bool)
    for i, row in enumerate(rows):
        if row.params.needs_penalties and row.output_token_ids:
            ids = torch.tensor(row.output_token_ids)
            output_counts[i].scatter_add_(0, ids, torch.ones(len(ids)))
        if row.params.repetition_penalty != 1.0 and row.prompt_token_ids:
            seen[i, torch.tensor(row.prompt_token_ids)] = True
    seen |= output_counts > 0
    repetition = torch.tensor([r.params.repetition_penalty for r in rows]).unsqueeze(1)
    presence = torch.tensor([r.params.presence_penalty for r in rows]).unsqueeze(1)
    frequency = torch.tensor([r.params.frequency_penalty for r in rows]).unsqueeze(1)
    penalized = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen, penalized, logits)
    logits -= frequency * output_counts + presence * (output_counts > 0).float()
    return logits


def apply_top_k_top_p(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    # logits: [B, V]. Sorted ascending, so the tokens to drop are a prefix of each row.
    vocab = logits.shape[1]
    top_k = torch.tensor([r.params.top_k if r.params.top_k > 0 else vocab for r in rows])
    top_p = torch.tensor([r.params.top_p for r in rows])
    sorted_logits, order = logits.sort(dim=-1)
    drop = torch.arange(vocab).unsqueeze(0) < (vocab - top_k.clamp(max=vocab)).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - top_p).unsqueeze(1)
    drop[:, -1] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _gather_logprobs(raw: torch.Tensor | None, chosen: torch.Tensor, rows: list[SamplingRow]):
    if raw is None:
        return [None] * len(rows)
    chosen_logprobs = raw.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    max_k = max(r.params.logprobs or 0 for r in rows)
    top_values, top_ids = (raw.topk(max_k, dim=-1) if max_k else (None, None))
    out = []
    for i, row in enumerate(rows):
        k = row.params.logprobs
        if k is None:
            out.append(None)
            continue
        top = list(zip(top_ids[i, :k].tolist(), top_values[i, :k].tolist())) if k else []
        out.append(TokenLogprobs(chosen_logprobs[i], top))
    return out
