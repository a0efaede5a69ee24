"""Batched sampling: every row has its own parameters, all applied with per-row tensors each step.

Order (as vLLM): a grammar's token mask -> penalties on the raw logits -> temperature -> top-k ->
top-p -> min-p -> sample. Reported logprobs are the raw model's log-softmax, before any of that.
"""

from dataclasses import dataclass
from itertools import chain

import torch

from polyhead.engine.core.outputs import TokenLogprobs
from polyhead.engine.core.params import SamplingParams

# top-k/top-p first look for each row's cut-off among this many most likely tokens; only rows whose
# kept set may reach past them pay for a sort of the whole vocabulary.
NUM_CANDIDATES = 256


@dataclass(slots=True)
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # tokens generated so far (before this step)
    generator: torch.Generator | None  # the request's own RNG when params.seed is set, else None
    allowed_tokens: torch.Tensor | None = None  # [V] bool: what its grammar allows next; None: any token


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]  # one chosen token per row
    logprobs: list[TokenLogprobs | None]  # per row; None where the row asked for none


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        # logits: [B, V], one row per SamplingRow
        params = [r.params for r in rows]
        logprob_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        needs_penalties = any(p.needs_penalties for p in params)
        constrained = [i for i, r in enumerate(rows) if r.allowed_tokens is not None]
        if not logprob_rows and not needs_penalties and all(p.is_greedy for p in params):
            # on CPU, converting to float32 first is faster than argmax over bf16
            logits = logits.float()
            if constrained:
                logits = _mask_disallowed(logits.clone(), rows, constrained)
            return SamplerOutput(logits.argmax(dim=-1).tolist(), [None] * len(rows))
        # penalties and masks write in place, so they get their own copy, never the caller's tensor
        logits = logits.to(torch.float32, memory_format=torch.contiguous_format,
                           copy=needs_penalties or bool(constrained))
        raw_logprobs = None  # [L, V] for the rows in logprob_rows; taken before penalties change logits
        if logprob_rows:
            raw_logprobs = _take_rows(logits, logprob_rows).log_softmax(dim=-1)
        if constrained:
            _mask_disallowed(logits, rows, constrained)
        if needs_penalties:
            _apply_penalties(logits, rows)
        greedy = [i for i, p in enumerate(params) if p.is_greedy]
        sampled = [i for i, p in enumerate(params) if not p.is_greedy]
        if not sampled:
            chosen = logits.argmax(dim=-1)  # [B]
        elif not greedy:
            chosen = _sample(logits, rows)
        else:
            chosen = torch.empty(len(rows), dtype=torch.long)
            chosen[greedy] = logits[greedy].argmax(dim=-1)
            chosen[sampled] = _sample(logits[sampled], [rows[i] for i in sampled])
        return SamplerOutput(chosen.tolist(), _gather_logprobs(raw_logprobs, logprob_rows, chosen, rows))


def _mask_disallowed(logits: torch.Tensor, rows: list[SamplingRow], constrained: list[int]) -> torch.Tensor:
    # logits: [B, V], changed in place: -inf at the tokens a constrained row's grammar forbids
    allowed = torch.stack([rows[i].allowed_tokens for i in constrained])  # [R, V]
    if len(constrained) == len(rows):
        return logits.masked_fill_(~allowed, float("-inf"))
    logits[constrained] = logits[constrained].masked_fill(~allowed, float("-inf"))
    return logits


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    # logits: [B, V] contiguous, changed in place. Only the (row, token) pairs that occur are touched,
    # addressed as row * V + token, so the cost follows the number of tokens, not B * V.
    vocab = logits.shape[1]
    flat = logits.view(-1)  # [B * V]
    repetition = torch.tensor([r.params.repetition_penalty for r in rows])  # [B]
    seen = _flat_token_ids([(i, r.prompt_token_ids + r.output_token_ids)
                            for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0], vocab)
    if seen.numel():
        # a token seen twice gets the same new value written twice, so it is penalized once
        values, penalty = flat[seen], repetition[seen // vocab]
        flat[seen] = torch.where(values > 0, values / penalty, values * penalty)
    presence = torch.tensor([r.params.presence_penalty for r in rows])  # [B]
    frequency = torch.tensor([r.params.frequency_penalty for r in rows])  # [B]
    generated = _flat_token_ids([(i, r.output_token_ids) for i, r in enumerate(rows)
                                 if r.params.presence_penalty != 0.0 or r.params.frequency_penalty != 0.0], vocab)
    if generated.numel():
        row = generated // vocab
        flat[generated] = flat[generated] - presence[row]  # written, not added: once per distinct token
        flat.index_add_(0, generated, -frequency[row])  # added: once per occurrence


def _flat_token_ids(token_lists: list[tuple[int, list[int]]], vocab: int) -> torch.Tensor:
    # (row, token ids) pairs -> [N] row * vocab + token, one entry per occurrence
    tokens = torch.tensor(list(chain.from_iterable(ids for _, ids in token_lists)), dtype=torch.long)
    rows = torch.tensor([row for row, _ in token_lists], dtype=torch.long)
    lengths = torch.tensor([len(ids) for _, ids in token_lists], dtype=torch.long)
    return rows.repeat_interleave(lengths) * vocab + tokens


def _sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    # logits: [S, V] penalized, rows with temperature > 0 -> [S] token ids
    params = [r.params for r in rows]
    logits = logits / torch.tensor([p.temperature for p in params]).unsqueeze(1)  # a new tensor
    cutoff = None  # [S] smallest logit a row keeps
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        cutoff = _top_k_top_p_cutoff(logits, params)
    if any(p.min_p > 0.0 for p in params):
        # p >= min_p * p_max  <=>  logit >= max logit + log(min_p); the ratio does not change when
        # top-k/top-p renormalize, as they always keep the most likely token. log(0) = -inf: off.
        floor = logits.amax(dim=-1) + torch.tensor([p.min_p for p in params]).log()
        cutoff = floor if cutoff is None else torch.maximum(cutoff, floor)
    if cutoff is not None:
        logits.masked_fill_(logits < cutoff.unsqueeze(1), float("-inf"))
    return _exponential_race(logits.softmax(dim=-1), [r.generator for r in rows])


def _top_k_top_p_cutoff(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    # logits: [S, V] -> [S] smallest logit kept by top-k then top-p; -inf where both are off.
    # Ties with the cut-off logit are kept too (as vLLM's top-k).
    vocab = logits.shape[1]
    top_k = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params])  # [S]
    top_p = torch.tensor([p.top_p if p.top_p < 1.0 else float("inf") for p in params])  # [S]; inf: off
    is_off = (top_k == vocab) & (top_p == float("inf"))
    cutoff, is_exact = _cutoff_among(logits, top_k, top_p, min(NUM_CANDIDATES, vocab))
    redo = (~(is_exact | is_off)).nonzero().squeeze(1)
    if redo.numel():
        cutoff[redo] = _cutoff_among(logits[redo], top_k[redo], top_p[redo], vocab)[0]
    return cutoff.masked_fill(is_off, float("-inf"))


def _cutoff_among(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  num_candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The kept set is a prefix of the row sorted by logit, so its last logit describes it. Looks only
    # at the num_candidates largest; is_exact [S] says where that provably holds the whole kept set.
    vocab = logits.shape[1]
    values = logits.topk(num_candidates, dim=-1).values  # [S, n], most likely first
    in_top_k = torch.arange(num_candidates) < top_k.unsqueeze(1)  # [S, n]
    values = values.masked_fill(~in_top_k, float("-inf"))
    # top-p measures the top-k renormalized distribution; with top-k off that is the whole row
    norm = values.logsumexp(dim=-1)  # [S]
    if num_candidates < vocab and bool((top_k > num_candidates).any()):
        norm = torch.where(top_k > num_candidates, logits.logsumexp(dim=-1), norm)
    probs = (values - norm.unsqueeze(1)).exp()  # [S, n]
    cumulative = probs.cumsum(dim=-1)  # [S, n]
    in_top_p = cumulative - probs < top_p.unsqueeze(1)  # the more likely tokens still fall short of top_p
    num_kept = (in_top_k & in_top_p).sum(dim=-1)  # [S], >= 1: the top token is always kept
    cutoff = values.gather(1, (num_kept - 1).unsqueeze(1)).squeeze(1)  # [S]
    is_exact = (top_k <= num_candidates) | ((top_k == vocab) & (cumulative[:, -1] >= top_p))
    return cutoff, is_exact


def _exponential_race(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    # probs: [S, V] -> [S]. With E_j ~ Exp(1) independent, E_j / p_j are exponential arrival times with
    # rates p_j, and the first to arrive, argmax p_j / E_j, is token j with probability p_j.
    noise = torch.empty_like(probs)  # [S, V] U ~ Uniform[0, 1), then -log(U) ~ Exp(1)
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if len(unseeded) == len(generators):
        noise.uniform_()
    else:
        # a seeded row draws only from its own generator, so its token does not depend on the batch
        if unseeded:
            noise[unseeded] = torch.rand(len(unseeded), noise.shape[1])
        for i, generator in enumerate(generators):
            if generator is not None:
                noise[i].uniform_(generator=generator)
    return probs.div_(noise.log_().neg_()).argmax(dim=-1)


def _take_rows(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return t if len(idx) == t.shape[0] else t[idx]


def _gather_logprobs(raw_logprobs: torch.Tensor | None, logprob_rows: list[int], chosen: torch.Tensor,
                     rows: list[SamplingRow]) -> list[TokenLogprobs | None]:
    # raw_logprobs: [L, V] for the rows in logprob_rows; chosen: [B]
    out: list[TokenLogprobs | None] = [None] * len(rows)
    if raw_logprobs is None:
        return out
    chosen_logprobs = raw_logprobs.gather(1, _take_rows(chosen, logprob_rows).unsqueeze(1)).squeeze(1).tolist()
    max_k = max(rows[i].params.logprobs for i in logprob_rows)
    top_values, top_ids = raw_logprobs.topk(max_k, dim=-1)  # [L, max_k] each, most likely first
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for j, i in enumerate(logprob_rows):
        k = rows[i].params.logprobs
        out[i] = TokenLogprobs(chosen_logprobs[j], list(zip(top_ids[j][:k], top_values[j][:k])))
    return out
