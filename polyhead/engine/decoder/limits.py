"""What a request to a decoder backbone may ask for (its RequestRules, engine/core/backend.py):
plain data, so the process mode checks a request in the HTTP process and bad input is refused
before anything is queued."""

from dataclasses import dataclass

from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.core.pooling import resolve_pooling_params
from polyhead.engine.decoder.grammar_source import check_structured


@dataclass(frozen=True, slots=True)
class RequestLimits:
    vocab_size: int  # token ids must be in [0, vocab_size)
    context_len: int  # the model's max_position_embeddings
    kv_capacity_tokens: int  # tokens the paged KV cache can hold
    max_model_len: int  # longest prompt + output: min(configured, context, KV capacity)

    def tokenize(self, tokenizer, text: str, params: SamplingParams | PoolingParams) -> list[int]:
        """The text as it continues a sequence: no special tokens (a chat template adds its own)."""
        return tokenizer.encode(text, add_special_tokens=False)

    def check(self, token_ids: list[int], params: SamplingParams | PoolingParams, task: str, adapter: str | None,
              heads: dict, adapters) -> tuple[list[int], SamplingParams | PoolingParams]:
        """Everything a decoder backbone checks before queueing a request. Returns the prompt (a pooling
        prompt that asked for truncation cut to fit, keeping its start as sentence-transformers does)
        and the params with the head's defaults filled in. Raises ValueError naming the field or limit."""
        if isinstance(params, PoolingParams) and params.truncate and params.kind != "score":
            token_ids = token_ids[: self.max_model_len - 1]
        self.validate_prompt(token_ids)
        if isinstance(params, PoolingParams) and not all(0 <= t < self.vocab_size for t in params.next_token_ids):
            raise ValueError(f"next_token_ids must be token ids in [0, {self.vocab_size}) (vocab_size)")
        if adapter is not None and adapter not in adapters:
            known = ", ".join(sorted(adapters)) or "none"
            raise ValueError(f"adapter {adapter!r} is not registered (registered adapters: {known})")
        if isinstance(params, PoolingParams):
            params = resolve_pooling_params(params, task, heads, len(token_ids))
        elif params.structured is not None:
            check_structured(params.structured)
        return token_ids, params

    def validate_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("prompt is empty: it must have at least 1 token")
        if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {self.vocab_size}) (vocab_size)")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(token_ids)} tokens, but the limit is {self.max_model_len - 1} "
                f"(max_model_len {self.max_model_len} = min(model context {self.context_len}, "
                f"KV cache capacity {self.kv_capacity_tokens} tokens), leaving room for 1 new token)")

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """For APIs that refuse rather than truncate: prompt + max_tokens within max_model_len."""
        if num_prompt_tokens + max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
                f"{num_prompt_tokens + max_tokens} exceeds max_model_len {self.max_model_len} "
                f"(model context {self.context_len}, KV cache capacity {self.kv_capacity_tokens} tokens)")
