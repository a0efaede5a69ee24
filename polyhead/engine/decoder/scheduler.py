"""Iteration-level scheduling.

The rule it keeps: there is no prefill phase and no decode phase. Each request has
`num_computed_tokens` and `num_tokens`; a step gives each scheduled request some of the
difference, within one token budget. Running requests go first (a decode costs one token),
then waiting ones in the policy's order (engine/core/policy.py: fcfs, priority, fair), whose prompts
are cut into chunks when the budget runs short, so a long prompt never stalls everyone's decode.
When blocks run out, the policy picks a running request to preempt (fcfs: the newest): its
blocks are freed and it is recomputed later. Requests past their deadline are finished as timed
out before anything is scheduled; while pooling requests wait, part of the budget is kept for
them, so a short classify or embed request never waits behind a long prefill.
"""

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from polyhead.engine.core.policy import SchedulingPolicy
from polyhead.engine.core.request import Request, RequestStatus
from polyhead.engine.decoder.kv_cache import KVCacheManager


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[tuple[Request, int]]  # (request, tokens to compute this step), in batch order
    num_batched_tokens: int  # sum of the tokens above
    preempted: list[Request] = field(default_factory=list)  # sent back to waiting this step
    timed_out: list[Request] = field(default_factory=list)  # finished (FINISHED_TIMEOUT) before this step
    started: list[str] = field(default_factory=list)  # req_ids taken from waiting into this step (the newest rows)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    def without(self, req_ids: set[str]) -> "SchedulerOutput":
        """The same step less some rows (a new object: a SchedulerOutput is never changed)."""
        kept = [(r, n) for r, n in self.scheduled if r.req_id not in req_ids]
        return SchedulerOutput(kept, sum(n for _, n in kept), self.preempted, self.timed_out,
                               [i for i in self.started if i not in req_ids])


class Scheduler:
    def __init__(self, kv_cache: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, policy: SchedulingPolicy | None = None, pooling_token_budget: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 is_adapter_ready: Callable[[str | None], bool] = lambda adapter: True,
                 is_grammar_ready: Callable[[Request], bool] = lambda request: True):
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.policy = policy or SchedulingPolicy()
        # Tokens of each step kept for waiting pooling requests; at most half the budget, so
        # prefill always moves.
        self.pooling_token_budget = min(pooling_token_budget, max_num_batched_tokens // 2)
        self.clock = clock  # time.monotonic, or a simulated clock in tests; deadlines are on it
        # adapter name (None: base) -> can a request using it run now? (LoRAManager.is_ready); a
        # waiting request that cannot is skipped without holding up those behind it
        self.is_adapter_ready = is_adapter_ready
        # request -> has its structured output's grammar compiled? (GrammarManager.is_ready); skipped likewise
        self.is_grammar_ready = is_grammar_ready
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._deadlines: list[tuple[float, int, Request]] = []  # heap of (deadline, seq, request)
        self._num_added = 0
        self.num_preemptions = 0  # running total, for metrics
        self.num_timeouts = 0  # running total, for metrics
        self._num_waiting_pooling = 0  # pooling requests in `waiting`: the reserve is skipped at 0

    def add(self, request: Request) -> None:
        self.requests[request.req_id] = request
        self._enqueue(request)
        if request.deadline is not None:
            self._num_added += 1
            heapq.heappush(self._deadlines, (request.deadline, self._num_added, request))

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    def schedule(self) -> SchedulerOutput:
        timed_out = self._expire()
        budget = self.max_num_batched_tokens
        reserve = self._pooling_reserve()  # left for pooling requests by every other prefill chunk
        scheduled: list[tuple[Request, int]] = []
        preempted: list[Request] = []
        started: list[str] = []

        # Running requests, in the policy's order; when blocks run short the policy picks a victim
        # among those not scheduled yet (fcfs: the newest), possibly the request itself.
        self.policy.order_running(self.running)
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_left = request.num_tokens - request.num_computed_tokens
            num_new = min(num_left, budget if request.is_pooling or num_left == 1 else budget - reserve)
            if num_new <= 0:  # a prefill chunk when only the pooling reserve is left
                i += 1
                continue
            while not self.kv_cache.allocate(request, num_new):
                victim = self.policy.choose_victim(self.running[i:])
                self.running.remove(victim)
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                scheduled.append((request, num_new))
                self.policy.on_scheduled(request, num_new)
                budget -= num_new
                reserve -= min(reserve, num_new) if request.is_pooling else 0
                i += 1

        # Waiting requests, in the policy's order, only if nobody had to give blocks back this step.
        # The first that cannot get blocks stops the admissions (no overtaking by smaller ones).
        if not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            for request in self.policy.waiting_order(self.waiting):  # (ordering costs: only when one can go)
                if budget <= 0 or len(self.running) >= self.max_num_seqs:
                    break
                if not self.is_adapter_ready(request.adapter) or not self.is_grammar_ready(request):
                    continue
                limit = budget if request.is_pooling else budget - reserve
                if limit <= 0:
                    continue
                cached_blocks = self.kv_cache.find_cached_prefix(request) if request.num_computed_tokens == 0 else []
                num_cached = len(cached_blocks) * self.kv_cache.block_size
                num_new = min(request.num_tokens - request.num_computed_tokens - num_cached, limit)
                if not self.kv_cache.allocate(request, num_new, cached_blocks):
                    break
                self._dequeue(request, scheduled=True)
                request.status = RequestStatus.RUNNING
                self.running.append(request)
                started.append(request.req_id)
                scheduled.append((request, num_new))
                self.policy.on_scheduled(request, num_new)
                budget -= num_new
                reserve -= min(reserve, num_new) if request.is_pooling else 0

        # Decode rows (one token) first: the runner batches them into one attention call.
        scheduled.sort(key=lambda item: item[1] != 1)
        return SchedulerOutput(scheduled, self.max_num_batched_tokens - budget, preempted, timed_out, started)

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
            self._dequeue(request, scheduled=False)
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
        self._enqueue(request, front=True)

    def _enqueue(self, request: Request, front: bool = False) -> None:
        if front:
            self.waiting.appendleft(request)
        else:
            self.waiting.append(request)
        self._num_waiting_pooling += request.is_pooling
        self.policy.on_enqueue(request)

    def _dequeue(self, request: Request, scheduled: bool) -> None:
        self.waiting.remove(request)
        self._num_waiting_pooling -= request.is_pooling
        self.policy.on_dequeue(request, scheduled)

    def _expire(self) -> list[Request]:
        """Finish every request whose deadline has passed, waiting or running, freeing its blocks."""
        now, expired = self.clock(), []
        while self._deadlines and self._deadlines[0][0] <= now:
            request = heapq.heappop(self._deadlines)[2]
            if self.requests.get(request.req_id) is request:
                self.finish(request.req_id, RequestStatus.FINISHED_TIMEOUT)
                expired.append(request)
        self.num_timeouts += len(expired)
        if len(self._deadlines) > 2 * len(self.requests) + 64:  # drop entries of requests already gone
            self._deadlines = [e for e in self._deadlines if self.requests.get(e[2].req_id) is e[2]]
            heapq.heapify(self._deadlines)
        return expired

    def _pooling_reserve(self) -> int:
        """Tokens to keep this step for waiting pooling requests, up to the reserve. Their adapters'
        readiness is not asked here (asking may start a load or evict): while one loads, the
        reserve it holds is at most pooling_token_budget tokens a step."""
        if self.pooling_token_budget <= 0 or self._num_waiting_pooling == 0:
            return 0
        needed = 0
        for request in self.waiting:
            if request.is_pooling:
                needed += request.num_tokens - request.num_computed_tokens
                if needed >= self.pooling_token_budget:
                    return self.pooling_token_budget
        return needed
