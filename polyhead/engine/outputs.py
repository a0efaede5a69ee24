"""What the engine hands back for a request after a step."""

from dataclasses import dataclass, field

from polyhead.engine.sampler import TokenLogprobs


@dataclass(slots=True)
class RequestOutput:
    req_id: str
    prompt: str | None  # the prompt text, when it was given as text
    prompt_token_ids: list[int]
    text: str  # the whole output text so far (stop strings cut off)
    token_ids: list[int]  # the whole output so far
    new_text: str = ""  # text added since this request's previous output (for streaming)
    new_token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"; None while running
    stop_reason: int | str | None = None  # the stop token id or stop string, when one ended it
    logprobs: list[TokenLogprobs] | None = None  # one per output token, when asked for
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    error: str | None = None  # why the request failed, when finish_reason == "error"
    # pooling requests: classify -> label probabilities [labels]; tag -> per-token probabilities
    # [prompt tokens][labels]; embed -> the vector [dim]; score -> summed log-prob of the scored tokens
    pooled: list[float] | list[list[float]] | float | None = None
