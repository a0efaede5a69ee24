"""The contract between the `Engine` (a request's lifecycle: validate, admit, park, end, outputs)
and a backbone's backend (what it computes in a step). Two backends keep it: the paged-KV decoder
(engine/decoder/backend.py: scheduler, KV cache, runner, LoRA) and the whole-sequence encoder
(engine/encoder/backend.py).

The rule it keeps: the engine owns every request's state and its outputs; a backend owns only
how requests are batched and computed. A backend reports what a step produced (tokens, pooled
results, requests it timed out or could not run); the engine turns that into RequestOutputs.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from polyhead.config import EngineConfig
from polyhead.engine.core.outputs import CacheDigest, EngineStats, StepStats, TokenLogprobs
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.core.request import Request, RequestStatus

Params = SamplingParams | PoolingParams
Pooled = list[float] | list[list[float]] | float  # see RequestOutput.pooled


@dataclass(frozen=True, slots=True)
class BackboneInfo:
    """What callers know of a backbone, the same in every process (it crosses to the HTTP process)."""

    name: str  # the model's name (its folder's)
    folder: str  # the model folder
    tokenizer_folder: str  # where its tokenizer is (the HTTP process loads it from there)
    is_generative: bool  # a causal LM (generate, zero-shot scoring) or an encoder (pooling only)
    hidden_size: int  # width of the final hidden states (task heads read them)
    has_prefix_cache: bool  # requests sharing a prompt prefix reuse its computed KV blocks
    kv_cache_summary: str | None  # the KV cache's size and why (KVCachePlan.describe); None: no KV cache


class RequestRules(Protocol):
    """How a backbone turns a prompt into checked token ids: plain data, so the HTTP process checks
    a request exactly as the engine would before anything crosses to it (process mode)."""

    max_model_len: int  # longest sequence the backbone takes

    def tokenize(self, tokenizer, text: str, params: Params) -> list[int]:
        """The prompt's token ids, as the backbone expects them (special tokens, casing, truncation)."""

    def check(self, token_ids: list[int], params: Params, task: str, adapter: str | None, heads: dict,
              adapters: set[str] | list[str]) -> tuple[list[int], Params]:
        """Raise ValueError naming the field or limit; return the prompt (cut where the request asked
        to be truncated) and the params with the task head's defaults filled in."""

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """For APIs that refuse rather than truncate: ValueError unless prompt + max_tokens fits."""


class StepFailed(Exception):
    """A step's forward failed; `req_ids` were in it. The cause is chained (`raise ... from err`)."""

    def __init__(self, req_ids: list[str]):
        super().__init__(f"a step of {len(req_ids)} requests failed")
        self.req_ids = req_ids


@dataclass(slots=True)
class BackendStep:
    """What one step of a backend produced."""

    stats: StepStats  # tokens and rows by kind it computed (metrics)
    timed_out: list[str] = field(default_factory=list)  # req_ids it finished (FINISHED_TIMEOUT) before the step
    failed: dict[str, str] = field(default_factory=dict)  # req_id -> why it cannot run (e.g. its adapter)
    sampled: dict[str, int] = field(default_factory=dict)  # req_id -> its new token
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)  # req_id -> that token's, where asked
    pooled: dict[str, Pooled] = field(default_factory=dict)  # req_id -> result: pooling requests it finished


class Backend(Protocol):
    info: BackboneInfo
    tokenizer: object  # the model's tokenizer (transformers)
    rules: RequestRules
    eos_token_ids: frozenset[int]  # tokens that end a generation (empty for an encoder)
    default_params: Params  # what a request without params gets

    @property
    def heads(self) -> dict:
        """task -> the head registered for it (RequestRules.check reads them)."""

    @property
    def adapter_names(self) -> list[str]:
        """LoRA adapters registered (RequestRules.check reads them)."""

    def register_head(self, task: str, head) -> None:
        """ValueError (TypeError for a non-head) when this backbone cannot serve it."""

    def register_adapter(self, name: str, folder: str) -> None:
        """ValueError when the adapter does not fit, or this backbone serves none."""

    def add(self, request: Request) -> None:
        """Queue a checked request for scheduling."""

    def finish(self, req_id: str, status: RequestStatus) -> bool:
        """Stop scheduling a request and free what it holds; False if the backend no longer had it."""

    def step(self) -> BackendStep:
        """Schedule and compute one step; raises StepFailed when its forward failed."""

    def stats(self, num_unfinished: int, last_step: StepStats) -> EngineStats: ...

    def cache_digest(self) -> CacheDigest:
        """The KV blocks and adapters it holds, for a router in front of several engines."""


def apply_runtime(config: EngineConfig) -> None:
    """Threads and the default RNG of the process that steps the engine, before its model loads."""
    import torch  # here, not at the top: the HTTP process imports this module and never needs torch

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)


def model_name(folder: Path) -> str:
    """A model folder's name, or its parent's for a package's inner `model` folder."""
    return folder.name if folder.name != "model" else folder.parent.name
