"""The synchronous engine: add requests, call `step()` until they finish."""

import logging
from dataclasses import dataclass

import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.detokenizer import IncrementalDetokenizer
from polyhead.engine.core.heap import trim_heap
from polyhead.engine.core.limits import RequestLimits, check_request
from polyhead.engine.core.outputs import EngineStats, RequestOutput, StepStats
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.core.policy import make_policy
from polyhead.engine.core.request import Request, RequestStatus
from polyhead.engine.decoder.kv_cache import KVCacheManager
from polyhead.engine.decoder.kv_memory import plan_kv_cache
from polyhead.engine.decoder.pooler import Pooled
from polyhead.engine.decoder.runner import ModelRunner
from polyhead.engine.decoder.sampler import TokenLogprobs, make_generator
from polyhead.engine.decoder.scheduler import Scheduler
from polyhead.lora.manager import LoRAManager
from polyhead.models.loader import LoadedModel, load_model

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TrackedRequest:
    """A validated request and what the engine keeps to build its outputs."""

    request: Request
    prompt: str | None
    detokenizer: IncrementalDetokenizer | None  # None for pooling requests (no text out)
    logprobs: list[TokenLogprobs] | None
    num_sent_tokens: int = 0
    error: str | None = None
    after: str | None = None  # req_id of the request whose prompt this one waits for (shared prefill)
    pooled: Pooled | None = None  # a pooling request's result, once it finished

    @property
    def req_id(self) -> str:
        return self.request.req_id

    @property
    def num_prompt_tokens(self) -> int:
        return self.request.num_prompt_tokens


class LLMEngine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None):
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        self.config = config
        loaded = loaded or load_model(config.model, config.torch_dtype, config.quantization,
                                       config.quantization_group_size)
        self.model, self.tokenizer, self.model_config = loaded.model, loaded.tokenizer, loaded.config
        self.model_folder = loaded.folder
        dtype = next(self.model.parameters()).dtype

        context = self.model_config.max_position_embeddings
        if config.max_model_len is not None and config.max_model_len > context:
            raise ValueError(f"max_model_len ({config.max_model_len}) exceeds the model's context ({context})")
        bytes_per_block = ModelRunner.cache_bytes_per_block(self.model, config.block_size, dtype)
        self.kv_cache_plan = plan_kv_cache(config.kv_cache_memory, bytes_per_block, config.block_size,
                                           config.max_num_seqs, config.max_model_len or context)
        logger.info("%s", self.kv_cache_plan.describe())
        num_blocks = self.kv_cache_plan.num_blocks
        self.kv_capacity_tokens = num_blocks * config.block_size
        self.max_model_len = min(config.max_model_len or context, self.kv_capacity_tokens)
        self.limits = RequestLimits(self.model_config.vocab_size, context, self.kv_capacity_tokens,
                                    self.max_model_len)

        self.kv_cache = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv_cache, config.max_num_seqs, config.max_num_batched_tokens,
                                   self.max_model_len, make_policy(config.policy, config.tenant_weights,
                                                                   config.task_weights),
                                   config.pooling_token_budget)
        self.runner = ModelRunner(self.model, num_blocks, config.block_size, dtype)
        self.lora = LoRAManager(self.model, self.model_config, dtype, config.max_loras, config.max_lora_rank)
        self.lora.in_use = lambda: {r.adapter for r in self.scheduler.running if r.adapter is not None}
        self.scheduler.is_adapter_ready = self.lora.is_ready
        self.runner.lora = self.lora
        for name, folder in config.adapters.items():
            self.register_adapter(name, folder)
        self._states: dict[str, TrackedRequest] = {}
        self._pending: list[RequestOutput] = []  # outputs of requests ended between steps
        self._parked: dict[str, list[TrackedRequest]] = {}  # leader req_id -> requests waiting for its prompt
        self._next_id = 0
        self.last_step_num_tokens = 0  # tokens the last step computed (for metrics)
        self.last_step_stats = StepStats(0, {})  # what the last step computed, by row kind (for metrics)
        trim_heap()  # the loader's and the packing's freed temporaries

    def register_head(self, task: str, head) -> None:
        """Serve a task's ClassifyHead / TagHead / EmbedPooler on this backbone's hidden states;
        pooling requests name it by `task`. Raises ValueError when its hidden size does not match."""
        self.runner.pooler.register(task, head)

    @property
    def heads(self) -> dict:
        return self.runner.pooler.heads

    def add_request(self, prompt: str | list[int], params: SamplingParams | PoolingParams | None = None,
                    req_id: str | None = None, **routing) -> str:
        """Validate and queue a request; raises ValueError naming the bad parameter or limit.
        `routing`: task, adapter, priority, tenant, deadline (see Request), and `after`: the req_id
        of a request whose prompt this one shares, so it starts once that prompt is in the prefix
        cache instead of computing it again beside it (fan-out, zero-shot labels)."""
        if req_id is None:
            req_id, self._next_id = f"req-{self._next_id}", self._next_id + 1
        return self.admit(self.new_request(prompt, params, req_id, **routing))

    def register_adapter(self, name: str, folder: str) -> None:
        """Make a PEFT LoRA adapter folder usable as `add_request(..., adapter=name)`. Its config
        and shapes are checked now (ValueError); its weights load in the background on first use."""
        self.lora.register(name, folder)

    def new_request(self, prompt: str | list[int], params: SamplingParams | PoolingParams | None, req_id: str, *,
                    task: str = "", adapter: str | None = None, priority: int = 0, tenant: str = "",
                    deadline: float | None = None, after: str | None = None) -> TrackedRequest:
        """Tokenize and validate, touching no engine state: safe from any thread."""
        params = params or SamplingParams()
        text = prompt if isinstance(prompt, str) else None
        token_ids = self.tokenizer.encode(prompt, add_special_tokens=False) if text is not None else list(prompt)
        token_ids, params = check_request(self.limits, token_ids, params, task, adapter, self.heads,
                                          self.lora.check_known)
        routing = {"task": task, "adapter": adapter, "priority": priority, "tenant": tenant, "deadline": deadline}
        if isinstance(params, PoolingParams):
            return TrackedRequest(Request(req_id, token_ids, params, frozenset(), **routing), text, None, None,
                                  after=after)
        eos = frozenset() if params.ignore_eos else frozenset(self.model_config.eos_token_ids)
        request = Request(req_id, token_ids, params, eos, **routing)
        if params.seed is not None:
            request.generator = make_generator(params.seed)
        detok = IncrementalDetokenizer(self.tokenizer, token_ids, params)
        return TrackedRequest(request, text, detok, [] if params.logprobs is not None else None, after=after)

    def admit(self, tracked: TrackedRequest) -> str:
        """Queue a request made by new_request (on the thread that steps the engine)."""
        req_id = tracked.request.req_id
        if req_id in self._states:
            raise ValueError(f"req_id {req_id!r} is already in use")
        self._states[req_id] = tracked
        if self._is_waiting_on(tracked):
            self._parked.setdefault(tracked.after, []).append(tracked)
        else:
            self.scheduler.add(tracked.request)
        return req_id

    def _is_waiting_on(self, tracked: TrackedRequest) -> bool:
        leader = self._states.get(tracked.after) if tracked.after is not None else None
        return leader is not None and leader.request.num_computed_tokens < leader.request.num_prompt_tokens

    def _start_parked(self) -> None:
        """Queue the requests whose leader has computed its prompt (its full blocks are now prefix-
        cache hits for them) or has ended (they then compute the prompt themselves)."""
        for leader_id in list(self._parked):
            leader = self._states.get(leader_id)
            if leader is None or leader.request.num_computed_tokens >= leader.request.num_prompt_tokens:
                for tracked in self._parked.pop(leader_id):
                    if tracked.after is not None and self._is_waiting_on(tracked):
                        self._parked.setdefault(tracked.after, []).append(tracked)
                    else:
                        self.scheduler.add(tracked.request)

    def validate_prompt(self, token_ids: list[int]) -> None:
        self.limits.validate_prompt(token_ids)

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        self.limits.check_fits(num_prompt_tokens, max_tokens)

    def abort_request(self, req_id: str) -> bool:
        """Cancel a request; its blocks are freed now and its final output comes with the next step."""
        return self._end(req_id, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return bool(self._states)

    def stats(self) -> EngineStats:
        kv, scheduler = self.kv_cache, self.scheduler
        return EngineStats(len(self._states), len(scheduler.running), kv.num_free_blocks, kv.num_blocks,
                           kv.num_prefix_hit_tokens, scheduler.num_preemptions, self.last_step_num_tokens,
                           dict(self.last_step_stats.rows))

    def step(self) -> list[RequestOutput]:
        if self.lora.failed:
            self._fail_unloadable_adapters()
        if self._parked:
            self._start_parked()
        sched = self.scheduler.schedule()
        for request in sched.timed_out:  # finished by the scheduler: only their final outputs are due
            self._end(request.req_id, RequestStatus.FINISHED_TIMEOUT)
        outputs = self._take_pending()
        self.last_step_num_tokens = sched.num_batched_tokens
        for request in sched.preempted:  # a preempted pooling request restarts from scratch
            self.runner.pooler.release(request.req_id)
        if sched.is_empty:
            self.last_step_stats = StepStats(0, {})
            return outputs
        try:
            result = self.runner.execute(sched)
        except Exception as err:  # one failed step fails its own rows, never the engine
            logger.exception("engine step failed; failing the %d requests in it", len(sched.scheduled))
            for request, _ in sched.scheduled:
                self._end(request.req_id, RequestStatus.FINISHED_ERROR, f"{type(err).__name__}: {err}")
            return outputs + self._take_pending()
        self.last_step_stats = StepStats.of(sched, result.pooling_rows)
        finished = self.scheduler.update(sched, result.sampled_token_ids)
        for request in finished:  # finished pooling requests: generation ones are handled below
            if request.is_pooling:
                state = self._states.get(request.req_id)
                if state is not None:
                    state.pooled = result.pooled.get(request.req_id)
                    outputs.append(self._make_output(state))
        for req_id, token in result.sampled_token_ids.items():
            state = self._states.get(req_id)
            if state is None:
                continue
            if state.logprobs is not None:
                state.logprobs.append(result.logprobs[req_id])
            stop = state.detokenizer.update([token])
            if stop is not None and not state.request.is_finished:
                state.request.stop_reason = stop
                self.scheduler.finish(req_id, RequestStatus.FINISHED_STOPPED)
            outputs.append(self._make_output(state))
        return outputs

    def _fail_unloadable_adapters(self) -> None:
        for request in [r for r in self.scheduler.waiting if r.adapter in self.lora.failed]:
            self._end(request.req_id, RequestStatus.FINISHED_ERROR,
                      f"adapter {request.adapter!r} failed to load: {self.lora.failed[request.adapter]}")

    def _end(self, req_id: str, status: RequestStatus, error: str | None = None) -> bool:
        state = self._states.get(req_id)
        if state is None:
            return False
        if self.scheduler.finish(req_id, status) is None and state in self._parked.get(state.after, ()):
            self._parked[state.after].remove(state)  # still waiting for its leader's prompt
            state.request.status = status
        self.runner.pooler.release(req_id)
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
