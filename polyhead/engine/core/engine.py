"""The synchronous engine: add requests, call `step()` until they finish.

One `Engine` serves every backbone: it owns each request's lifecycle (tokenize and check, admit,
park behind a shared prompt, deadlines, end, outputs, a failed step) and leaves what a step
computes to its backend (engine/core/backend.py): the paged-KV decoder or the whole-sequence
encoder. `LLM`, `AsyncEngine` and the engine process drive this class only.
"""

import logging
from dataclasses import dataclass

from polyhead.engine.core.backend import Backend, BackendStep, Params, Pooled, StepFailed
from polyhead.engine.core.detokenizer import IncrementalDetokenizer
from polyhead.engine.core.outputs import CacheDigest, EngineStats, RequestOutput, StepStats, TokenLogprobs
from polyhead.engine.core.params import PoolingParams
from polyhead.engine.core.request import PreparedRequest, Request, RequestStatus, Routing

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TrackedRequest:
    """An admitted request and what the engine keeps to build its outputs."""

    request: Request
    prompt: str | None  # the prompt text, when it was given as text
    detokenizer: IncrementalDetokenizer | None  # None for pooling requests (no text out)
    logprobs: list[TokenLogprobs] | None  # one per output token, when asked for
    after: str | None  # req_id of the request whose prompt this one waits for (shared prefill)
    num_sent_tokens: int = 0
    error: str | None = None
    pooled: Pooled | None = None  # a pooling request's result, once it finished

    @property
    def req_id(self) -> str:
        return self.request.req_id


class Engine:
    def __init__(self, backend: Backend):
        self.backend = backend
        self.info = backend.info
        self.tokenizer = backend.tokenizer
        self.rules = backend.rules
        self._states: dict[str, TrackedRequest] = {}
        self._pending: list[RequestOutput] = []  # outputs of requests ended between steps
        self._parked: dict[str, list[TrackedRequest]] = {}  # leader req_id -> requests waiting for its prompt
        self._next_id = 0
        self.last_step_stats = StepStats(0, {})  # what the last step computed, by row kind (for metrics)

    # --- what it serves ----------------------------------------------------------------------------
    def register_head(self, task: str, head) -> None:
        """Serve a task's ClassifyHead / TagHead / EmbedPooler on this backbone's hidden states;
        pooling requests name it by `task`. Raises ValueError when its hidden size does not match."""
        self.backend.register_head(task, head)

    def register_adapter(self, name: str, folder: str) -> None:
        """Make a PEFT LoRA adapter folder usable as `add_request(..., adapter=name)`. Its config
        and shapes are checked now (ValueError); its weights load in the background on first use."""
        self.backend.register_adapter(name, folder)

    @property
    def heads(self) -> dict:
        return self.backend.heads

    @property
    def adapter_names(self) -> list[str]:
        return self.backend.adapter_names

    # --- requests ----------------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: Params | None = None, req_id: str | None = None,
                    **routing) -> str:
        """Validate and queue a request; raises ValueError naming the bad parameter or limit.
        `routing`: task, adapter, priority, tenant, deadline (see Routing), and `after`: the req_id
        of a request whose prompt this one shares, so it starts once that prompt is in the prefix
        cache instead of computing it again beside it (fan-out, zero-shot labels)."""
        if req_id is None:
            req_id, self._next_id = f"req-{self._next_id}", self._next_id + 1
        return self.admit(self.prepare(prompt, params, req_id, **routing))

    def prepare(self, prompt: str | list[int], params: Params | None, req_id: str, **routing) -> PreparedRequest:
        """Tokenize and check, touching no engine state: safe from any thread."""
        return prepare_request(self.rules, self.tokenizer, self.heads, self.adapter_names, prompt,
                               params if params is not None else self.backend.default_params, req_id,
                               Routing(**routing))

    def admit(self, prepared: PreparedRequest) -> str:
        """Queue a prepared request (on the thread that steps the engine)."""
        req_id, params = prepared.req_id, prepared.params
        if req_id in self._states:
            raise ValueError(f"req_id {req_id!r} is already in use")
        routing = prepared.routing
        pooling = isinstance(params, PoolingParams)
        eos = frozenset() if pooling or params.ignore_eos else self.backend.eos_token_ids
        request = Request(req_id, prepared.token_ids, params, eos, task=routing.task, adapter=routing.adapter,
                          priority=routing.priority, tenant=routing.tenant, deadline=routing.deadline,
                          num_continued_tokens=prepared.num_continued_tokens)
        if not pooling and params.seed is not None:
            import torch  # here, not at the top: the HTTP process prepares requests and never needs torch

            request.generator = torch.Generator().manual_seed(params.seed)
        detokenizer = None if pooling else IncrementalDetokenizer(self.tokenizer, prepared.token_ids, params)
        logprobs = [] if not pooling and params.logprobs is not None else None
        # Waiting for a leader pays only where its prompt's blocks become prefix-cache hits.
        after = routing.after if self.info.has_prefix_cache else None
        tracked = self._states[req_id] = TrackedRequest(request, prepared.prompt, detokenizer, logprobs, after)
        if self._is_waiting_on_leader(tracked):
            self._parked.setdefault(tracked.after, []).append(tracked)
        else:
            self.backend.add(request)
        return req_id

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.rules.check_fits(num_prompt_tokens, max_tokens)

    def abort_request(self, req_id: str) -> bool:
        """Cancel a request; what it holds is freed now and its final output comes with the next step."""
        return self._end(req_id, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return bool(self._states)

    @property
    def last_step_num_tokens(self) -> int:
        return self.last_step_stats.num_tokens

    def stats(self) -> EngineStats:
        return self.backend.stats(len(self._states), self.last_step_stats)

    def cache_digest(self) -> CacheDigest:
        return self.backend.cache_digest()

    # --- steps -------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self._parked:
            self._start_parked()
        try:
            result = self.backend.step()
        except StepFailed as failure:  # one failed step fails its own rows, never the engine
            cause = failure.__cause__ or failure
            logger.error("engine step failed; failing the %d requests in it", len(failure.req_ids),
                         exc_info=cause)
            self.last_step_stats = StepStats(0, {})
            for req_id in failure.req_ids:
                self._end(req_id, RequestStatus.FINISHED_ERROR, f"{type(cause).__name__}: {cause}")
            return self._take_pending()
        self.last_step_stats = result.stats
        self._end_unrunnable(result)
        outputs = self._take_pending()
        for req_id, pooled in result.pooled.items():
            state = self._states.get(req_id)
            if state is not None:
                state.pooled = pooled
                outputs.append(self._make_output(state))
        for req_id, token in result.sampled.items():
            state = self._states.get(req_id)
            if state is None:
                continue
            if state.logprobs is not None:
                state.logprobs.append(result.logprobs[req_id])
            stop = state.detokenizer.update([token])
            if stop is not None and not state.request.is_finished:
                state.request.stop_reason = stop
                self.backend.finish(req_id, RequestStatus.FINISHED_STOPPED)
            outputs.append(self._make_output(state))
        return outputs

    def _end_unrunnable(self, result: BackendStep) -> None:
        for req_id in result.timed_out:  # finished by the backend: only their final outputs are due
            self._end(req_id, RequestStatus.FINISHED_TIMEOUT)
        for req_id, why in result.failed.items():
            self._end(req_id, RequestStatus.FINISHED_ERROR, why)

    def _is_waiting_on_leader(self, tracked: TrackedRequest) -> bool:
        leader = self._states.get(tracked.after) if tracked.after is not None else None
        return leader is not None and leader.request.num_computed_tokens < leader.request.num_prompt_tokens

    def _start_parked(self) -> None:
        """Queue the requests whose leader has computed its prompt (its full blocks are now prefix-
        cache hits for them) or has ended (they then compute the prompt themselves)."""
        for leader_id in list(self._parked):
            leader = self._states.get(leader_id)
            if leader is None or leader.request.num_computed_tokens >= leader.request.num_prompt_tokens:
                for tracked in self._parked.pop(leader_id):
                    if self._is_waiting_on_leader(tracked):
                        self._parked.setdefault(tracked.after, []).append(tracked)
                    else:
                        self.backend.add(tracked.request)

    def _end(self, req_id: str, status: RequestStatus, error: str | None = None) -> bool:
        state = self._states.get(req_id)
        if state is None:
            return False
        if not self.backend.finish(req_id, status) and state in self._parked.get(state.after, ()):
            self._parked[state.after].remove(state)  # still waiting for its leader's prompt
        if not state.request.is_finished:
            state.request.status = status
        state.error = error
        self._pending.append(self._make_output(state))
        return True

    def _take_pending(self) -> list[RequestOutput]:
        outputs, self._pending = self._pending, []
        return outputs

    def _make_output(self, state: TrackedRequest) -> RequestOutput:
        request = state.request
        finished = request.is_finished
        if finished:
            del self._states[request.req_id]
        if state.detokenizer is None:  # a pooling request: one output, its result
            return RequestOutput(
                req_id=request.req_id, prompt=state.prompt, prompt_token_ids=request.prompt_token_ids, text="",
                token_ids=[], finished=finished, finish_reason=request.status.finish_reason,
                num_cached_tokens=request.num_cached_tokens, error=state.error, pooled=state.pooled)
        token_ids = request.output_token_ids
        new_token_ids = token_ids[state.num_sent_tokens:]
        state.num_sent_tokens = len(token_ids)
        new_text = state.detokenizer.take_delta(finished=finished)  # first: finishing flushes held text
        return RequestOutput(
            req_id=request.req_id, prompt=state.prompt, prompt_token_ids=request.prompt_token_ids,
            text=state.detokenizer.text, token_ids=token_ids, new_text=new_text, new_token_ids=new_token_ids,
            finished=finished, finish_reason=request.status.finish_reason, stop_reason=request.stop_reason,
            logprobs=state.logprobs, num_cached_tokens=request.num_cached_tokens, error=state.error)


def prepare_request(rules, tokenizer, heads: dict, adapters, prompt: str | list[int], params: Params,
                    req_id: str, routing: Routing) -> PreparedRequest:
    """Tokenize (text) and check a request by a backbone's rules: what the engine does, and what the
    HTTP process does with the same rules before sending a request to the engine process."""
    text = prompt if isinstance(prompt, str) else None
    token_ids = rules.tokenize(tokenizer, text, params) if text is not None else list(prompt)
    token_ids, params = rules.check(token_ids, params, routing.task, routing.adapter, heads, adapters)
    return PreparedRequest(req_id, text, token_ids, params, routing)

