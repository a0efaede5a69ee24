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


@dataclass(slots=True)
class EngineStats:
    """The engine's own figures, for /metrics and tests; the process mode sends one with each step."""

    num_unfinished: int  # requests admitted and not yet finished (waiting or running)
    num_running: int  # sequences the scheduler is running
    num_free_blocks: int  # KV blocks free (a free block may still hold a cached prefix)
    num_blocks: int  # KV blocks in all
    num_prefix_hit_tokens: int  # running total of prompt tokens served from the prefix cache
    num_preemptions: int  # running total of sequences preempted for lack of KV blocks
    last_step_num_tokens: int  # tokens the last step computed

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks
