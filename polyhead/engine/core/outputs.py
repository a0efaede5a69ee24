"""What the engine hands back for a request after a step."""

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprobs:
    """A sampled token's log-prob, and the most likely tokens' beside it."""

    logprob: float  # log-prob of the chosen token
    top: list[tuple[int, float]]  # top-k (token_id, logprob), most likely first; [] when k == 0


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
    # (with next_token_ids: one log-prob per candidate)
    pooled: list[float] | list[list[float]] | float | None = None


@dataclass(slots=True)
class StepStats:
    """What one engine step computed, for metrics (polyhead_batch_rows{kind}, mixed steps)."""

    num_tokens: int  # tokens through the backbone
    rows: dict[str, int]  # kind (generate | classify | tag | embed | score) -> rows in the step

    @property
    def is_mixed(self) -> bool:
        """Generate rows and pooling rows shared the step's one forward."""
        return self.rows.get("generate", 0) > 0 and len(self.rows) > 1


@dataclass(slots=True)
class CacheDigest:
    """What a router in front of several engines needs to know of this one's caches (polyhead/deploy):
    the hashes naming the full KV blocks it holds (engine/core/block_hash.py), and the LoRA adapters
    whose weights are resident. Empty for an encoder, which keeps no KV cache."""

    block_size: int = 0
    cached_block_hashes: list[int] = field(default_factory=list)
    resident_adapters: list[str] = field(default_factory=list)


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
    last_step_rows: dict[str, int]  # the last step's rows by kind (generate | classify | tag | embed | score)

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks if self.num_blocks else 0.0
