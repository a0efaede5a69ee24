"""A request as the scheduler and runner see it: its tokens, how many are computed, its blocks."""

import enum
import time
from dataclasses import dataclass, field

import torch

from polyhead.engine.core.params import PoolingParams, SamplingParams


class RequestStatus(enum.IntEnum):
    """Ordered, so `status >= FINISHED_STOPPED` means finished."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # waiting again: its blocks were taken and it will be recomputed
    FINISHED_STOPPED = 3  # EOS, a stop token or a stop string
    FINISHED_LENGTH = 4  # max_tokens or the context limit
    FINISHED_ABORTED = 5  # the caller cancelled it
    FINISHED_ERROR = 6  # a step failed while it was in the batch
    FINISHED_TIMEOUT = 7  # its deadline passed before it finished (waiting or running)

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length",
                   RequestStatus.FINISHED_ABORTED: "abort", RequestStatus.FINISHED_ERROR: "error",
                   RequestStatus.FINISHED_TIMEOUT: "timeout"}


@dataclass(eq=False)
class Request:
    req_id: str
    prompt_token_ids: list[int]
    params: SamplingParams | PoolingParams  # pooling: prefill-only, its hidden states go to a head
    eos_token_ids: frozenset[int]  # empty when params.ignore_eos
    task: str = ""  # the task it belongs to (metrics, fair share)
    adapter: str | None = None  # the LoRA adapter its rows use; None: the base weights
    priority: int = 0  # lower runs first under the priority policy (vLLM's convention)
    tenant: str = ""  # who sent it (API key or `user`), for fair share
    deadline: float | None = None  # time.monotonic() after which it is aborted as timed out
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    all_token_ids: list[int] = field(default_factory=list)  # prompt then output, grows each step
    num_computed_tokens: int = 0  # tokens whose keys/values are in the cache
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at first schedule
    block_ids: list[int] = field(default_factory=list)  # the block table: block i holds tokens [i*B, (i+1)*B)
    block_hashes: list[int] = field(default_factory=list)  # chained hash of each full block of all_token_ids
    generator: torch.Generator | None = None  # the request's own RNG when params.seed is set
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    # the prompt's last tokens that are its own output from an engine that died (a continuation):
    # its grammar, if it has one, has already read them
    num_continued_tokens: int = 0

    def __post_init__(self):
        self.all_token_ids = list(self.prompt_token_ids)
        # a plain attribute, not a property: the runner reads it for every row of every step
        self.is_pooling = isinstance(self.params, PoolingParams)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def max_prefix_hit_tokens(self) -> int:
        """How many leading tokens a prefix-cache hit may skip. Generation always computes its last
        token (its logits give the first sample); a pooling request also every token its head reads."""
        if self.is_pooling:
            return self.params.first_needed_position(self.num_tokens)
        return self.num_tokens - 1


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a request goes and how it is scheduled; none of it changes what it computes."""

    task: str = ""  # the task it belongs to (metrics, fair share; a pooling request's default head)
    adapter: str | None = None  # the LoRA adapter its rows use; None: the base weights
    priority: int = 0  # lower runs first under the priority policy
    tenant: str = ""  # who sent it (API key or `user`), for fair share
    deadline: float | None = None  # time.monotonic() after which it ends as timed out
    after: str | None = None  # req_id of a request whose prompt it shares: it starts once that is cached


@dataclass(slots=True)
class PreparedRequest:
    """A tokenized, checked request, not yet admitted: what crosses to the engine process."""

    req_id: str
    prompt: str | None  # the prompt text, when it was given as text (never sent to the engine process)
    token_ids: list[int]
    params: SamplingParams | PoolingParams  # checked, with the task head's defaults filled in
    routing: Routing
    num_continued_tokens: int = 0  # the last prompt tokens that are output from before a restart

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.token_ids)
