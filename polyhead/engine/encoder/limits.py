"""What a request to an encoder backbone may ask for (its RequestRules, engine/core/backend.py):
embed, classify and tag, with prompts of at most max_seq_length tokens, [CLS] and [SEP] included."""

from dataclasses import dataclass, replace

from polyhead.engine.core.kinds import ENCODER_KINDS
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.core.pooling import resolve_pooling_params


@dataclass(frozen=True, slots=True)
class EncoderLimits:
    name: str  # the backbone's name, for errors
    vocab_size: int  # token ids must be in [0, vocab_size)
    max_model_len: int  # longest prompt, [CLS] and [SEP] included
    do_lower_case: bool  # sentence-transformers lowercases the text before tokenizing
    pooling: str  # the model's own sentence embedding: its sentence-transformers pooling
    normalize: bool  # ... and whether it L2-normalizes

    def tokenize(self, tokenizer, text: str, params: PoolingParams) -> list[int]:
        """[CLS] ... [SEP] as sentence-transformers adds them; cut to the limit when asked."""
        if not text:
            raise ValueError("prompt is empty: it must have at least 1 character")
        text = text.lower() if self.do_lower_case else text
        truncate = isinstance(params, PoolingParams) and params.truncate
        cut = {"truncation": True, "max_length": self.max_model_len} if truncate else {}
        return tokenizer(text, **cut)["input_ids"]

    def check(self, token_ids: list[int], params: PoolingParams | SamplingParams, task: str, adapter: str | None,
              heads: dict, adapters) -> tuple[list[int], PoolingParams]:
        """Token ids are taken as they are (a truncating request's cut to the limit). Raises ValueError."""
        if not isinstance(params, PoolingParams):  # a request the client got wrong: ValueError -> HTTP 400
            raise ValueError(  # noqa: TRY004
                f"{self.name} is an encoder backbone: it serves only embed, classify and tag requests "
                f"(PoolingParams), not {type(params).__name__}; send generation to a decoder backbone")
        if params.kind not in ENCODER_KINDS:
            raise ValueError(f"kind {params.kind!r} is not served by the encoder backbone {self.name}; "
                             f"it serves {', '.join(ENCODER_KINDS)}")
        if adapter is not None:
            raise ValueError(f"adapter {adapter!r}: the encoder backbone {self.name} serves no LoRA adapters")
        token_ids = list(token_ids)[: self.max_model_len] if params.truncate else list(token_ids)
        self.validate_prompt(token_ids)
        return token_ids, resolve_pooling_params(self._with_model_defaults(params, task, heads), task, heads,
                                                 len(token_ids))

    def validate_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("prompt is empty: it must have at least 1 token")
        if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {self.vocab_size}) (vocab_size)")
        if len(token_ids) > self.max_model_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens ([CLS] and [SEP] included), but this encoder's "
                             f"limit is {self.max_model_len} (max_model_len); PoolingParams(truncate=True) "
                             f"cuts it to the limit instead")

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """An encoder generates nothing: only the prompt must fit."""
        if num_prompt_tokens > self.max_model_len:
            raise ValueError(f"prompt ({num_prompt_tokens} tokens) exceeds max_model_len {self.max_model_len}")

    def _with_model_defaults(self, params: PoolingParams, task: str, heads: dict) -> PoolingParams:
        """Without a task head, an embedding is the model's own: its sentence-transformers pooling
        and normalization, where a decoder's default would be the last token, unnormalized."""
        head_task = params.task if params.task is not None else task
        if params.kind != "embed" or head_task in heads:
            return params
        normalize = self.normalize if params.normalize is None else params.normalize
        return replace(params, pooling=params.pooling or self.pooling, normalize=normalize)
