"""Iteration-level scheduling.

The rule it keeps: there is no prefill phase and no decode phase. Each request has
`num_computed_tokens` and `num_tokens`; a step gives each scheduled request some of the
difference, within one token budget. Running requests go first (a decode costs one token),
then waiting ones in arrival order, whose prompts are cut into chunks when the budget runs
short, so a long prompt never stalls everyone's decode. When blocks run out, the newest
running request is preempted: its blocks are freed and it is recomputed later.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from polyhead.engine.kv_cache import KVCacheManager
from polyhead.engine.request import Request, RequestStatus


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[tuple[Request, int]]  # (request, tokens to compute this step), in batch order
    num_batched_tokens: int  # sum of the tokens above
    preempted: list[Request] = field(default_factory=list)  # sent back to waiting this step

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, kv_cache: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int):
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0  # running total, for metrics
        # adapter name (None: base) -> can a request using it run now? (LoRAManager.is_ready)
        self.is_adapter_ready: Callable[[str | None], bool] = lambda adapter: True

    def add(self, request: Request) -> None:
        self.requests[request.req_id] = request
        self.waiting.append(request)

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted: list[Request] = []

        # Running requests, oldest first; the newest are the ones preempted when blocks run short.
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while not self.kv_cache.allocate(request, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                scheduled.append((request, num_new))
                budget -= num_new
                i += 1

        # Waiting requests, in arrival order, only if nobody had to give blocks back this step.
        # Those whose adapter is still loading keep their place and are skipped.
        skipped = 0
        while len(self.waiting) > skipped and budget > 0 and not preempted and len(self.running) < self.max_num_seqs:
            request = self.waiting[skipped]
            if not self.is_adapter_ready(request.adapter):
                skipped += 1
                continue
            cached_blocks = self.kv_cache.find_cached_prefix(request) if request.num_computed_tokens == 0 else []
            num_cached = len(cached_blocks) * self.kv_cache.block_size
            num_new = min(request.num_tokens - request.num_computed_tokens - num_cached, budget)
            if not self.kv_cache.allocate(request, num_new, cached_blocks):
                break
            del self.waiting[skipped]
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append((request, num_new))
            budget -= num_new

        # Decode rows (one token) first: the runner batches them into one attention call.
        scheduled.sort(key=lambda item: item[1] != 1)
        return SchedulerOutput(scheduled, self.max_num_batched_tokens - budget, preempted)

    def update(self, output: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance computed counts, append sampled tokens and finish requests that are done.
        `sampled` maps req_id -> the token sampled for it this step (only rows that sampled).
        A pooling request finishes ("stop") in the step that computes its last prompt token; its
        full blocks stay in the prefix cache for the requests that share its prompt."""
        finished = []
        for request, num_new in output.scheduled:
            if request.is_finished:  # aborted while the step ran
                continue
            request.num_computed_tokens += num_new
            self.kv_cache.register_full_blocks(request)
            token = sampled.get(request.req_id)
            if token is None:  # a prompt chunk, or a pooling request (never a decode row)
                if request.is_pooling and request.num_computed_tokens == request.num_tokens:
                    self.finish(request.req_id, RequestStatus.FINISHED_STOPPED)
                    finished.append(request)
                continue
            request.all_token_ids.append(token)
            status = self._check_stop(request, token)
            if status is not None:
                self.finish(request.req_id, status)
                finished.append(request)
        return finished

    def finish(self, req_id: str, status: RequestStatus) -> Request | None:
        """Finish a request (done, aborted or failed) and free its blocks now."""
        request = self.requests.pop(req_id, None)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        request.status = status
        self.kv_cache.free(request)
        return request

    def _check_stop(self, request: Request, token: int) -> RequestStatus | None:
        params = request.params
        if token in request.eos_token_ids or token in params.stop_token_ids:
            request.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= params.max_tokens or request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _preempt(self, request: Request) -> None:
        self.num_preemptions += 1
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        self.waiting.appendleft(request)
