"""Log-likelihood of a whole token sequence through the serving model (for perplexity and quality
checks): one sequence, one prefill forward over a private KV cache, so the engine's own cache and
requests are untouched and the weights are exactly those the runner serves (packed, quantized)."""

import torch

from polyhead.engine.decoder.runner import ModelRunner
from polyhead.models.attention import AttentionMetadata, PrefillChunk, build_prefill_mask


@torch.inference_mode()
def next_token_logprobs(runner: ModelRunner, token_ids: list[int], first: int = 0) -> torch.Tensor:
    """log p(token_ids[i + 1] | token_ids[: i + 1]) for i in [first, len(token_ids) - 1): [len - 1 - first] float32."""
    model, num_tokens = runner.model, len(token_ids)
    config = model.config
    if num_tokens < 2 or not 0 <= first < num_tokens - 1:
        raise ValueError(f"need at least 2 tokens and 0 <= first < {num_tokens - 1}; got {num_tokens} tokens, "
                         f"first={first}")
    if num_tokens > config.max_position_embeddings:
        raise ValueError(f"{num_tokens} tokens exceed the model's context ({config.max_position_embeddings})")
    # one block holding the whole sequence: [2, Hkv, T, D] per layer
    kv_caches = [torch.zeros(2, config.num_kv_heads, num_tokens, config.head_dim, dtype=runner.dtype)
                 for _ in range(config.num_layers)]
    chunk = PrefillChunk(0, num_tokens, num_tokens, None, build_prefill_mask(0, num_tokens, runner.sliding_window))
    meta = AttentionMetadata(torch.arange(num_tokens), num_tokens, 0, None, None, None, [chunk],
                             runner.sliding_window, None, torch.get_num_threads())
    ids = torch.tensor(token_ids)
    hidden = model(ids, torch.arange(num_tokens), kv_caches, meta)  # [T, hidden]
    logits = model.compute_logits(hidden[first:num_tokens - 1])  # [T - 1 - first, vocab] float32
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(1, ids[first + 1:].unsqueeze(1)).squeeze(1)
