"""The decoder backend: a causal LM over a paged KV cache. The scheduler picks each step's rows
(decode, prefill chunks, pooling prefills) within one token budget, the runner computes them in
one forward and samples, LoRA adapters load beside the steps. The Engine (engine/core/engine.py)
owns the requests; this owns the batching and the KV cache."""

import logging

from polyhead.config import EngineConfig
from polyhead.engine.core.backend import BackboneInfo, BackendStep, StepFailed, apply_runtime, model_name
from polyhead.engine.core.heap import trim_heap
from polyhead.engine.core.outputs import CacheDigest, EngineStats, StepStats
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.core.policy import make_policy
from polyhead.engine.core.request import Request, RequestStatus
from polyhead.engine.decoder.grammar import GrammarManager
from polyhead.engine.decoder.kv_cache import KVCacheManager
from polyhead.engine.decoder.kv_memory import plan_kv_cache
from polyhead.engine.decoder.limits import RequestLimits
from polyhead.engine.decoder.runner import ModelRunner, RunnerOutput
from polyhead.engine.decoder.scheduler import Scheduler, SchedulerOutput
from polyhead.lora.manager import LoRAManager
from polyhead.models.loader import LoadedModel, load_model

logger = logging.getLogger(__name__)


class DecoderBackend:
    default_params = SamplingParams()

    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None):
        apply_runtime(config)
        self.config = config
        loaded = loaded or load_model(config.model, config.torch_dtype, config.quantization,
                                      config.quantization_group_size)
        self.model, self.tokenizer, self.model_config = loaded.model, loaded.tokenizer, loaded.config
        self.model_folder = loaded.folder
        self.eos_token_ids = frozenset(self.model_config.eos_token_ids)
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
        self.rules = RequestLimits(self.model_config.vocab_size, context, self.kv_capacity_tokens, self.max_model_len)

        self.kv_cache = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        # The adapters in use are those of running requests: never evicted while a row needs them.
        self.lora = LoRAManager(self.model, self.model_config, dtype, config.max_loras, config.max_lora_rank,
                                in_use=lambda: {r.adapter for r in self.scheduler.running if r.adapter is not None})
        self.grammars = GrammarManager(self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
        policy = make_policy(config.policy, config.tenant_weights, config.task_weights)
        self.scheduler = Scheduler(self.kv_cache, config.max_num_seqs, config.max_num_batched_tokens,
                                   self.max_model_len, policy, config.pooling_token_budget,
                                   is_adapter_ready=self.lora.is_ready, is_grammar_ready=self.grammars.is_ready)
        self.runner = ModelRunner(self.model, num_blocks, config.block_size, dtype, self.lora, self.grammars)
        for name, folder in config.adapters.items():
            self.register_adapter(name, folder)
        self.info = BackboneInfo(model_name(self.model_folder), str(self.model_folder), str(self.model_folder), True,
                                 self.model_config.hidden_size, config.enable_prefix_caching,
                                 self.kv_cache_plan.describe())
        trim_heap()  # the loader's and the packing's freed temporaries

    @property
    def heads(self) -> dict:
        return self.runner.pooler.heads

    @property
    def adapter_names(self) -> list[str]:
        return self.lora.names

    def register_head(self, task: str, head) -> None:
        self.runner.pooler.register(task, head)

    def register_adapter(self, name: str, folder: str) -> None:
        self.lora.register(name, folder)

    def add(self, request: Request) -> None:
        self.scheduler.add(request)

    def finish(self, req_id: str, status: RequestStatus) -> bool:
        self.runner.pooler.release(req_id)
        self.grammars.release(req_id)
        return self.scheduler.finish(req_id, status) is not None

    def step(self) -> BackendStep:
        failed = self._unloadable_adapter_requests() if self.lora.failed else {}
        sched = self.scheduler.schedule()
        if self.grammars.failed:
            failed.update(self.grammars.take_failed())
        timed_out = [r.req_id for r in sched.timed_out]
        for request in sched.preempted:  # a preempted pooling request restarts from scratch
            self.runner.pooler.release(request.req_id)
        if sched.is_empty:
            return BackendStep(StepStats(0, {}), timed_out, failed)
        sched, result, failed_rows = self._execute(sched)
        failed.update(failed_rows)
        failed.update(result.errors)
        # Rows that failed are left out of the update: the engine ends them and frees their blocks.
        finished = self.scheduler.update(sched.without(set(result.errors)), result.sampled_token_ids)
        failed.update(self._advance_grammars(sched, result.sampled_token_ids, finished))
        pooled = {r.req_id: result.pooled[r.req_id] for r in finished if r.is_pooling}
        return BackendStep(_step_stats(sched, result), timed_out, failed, result.sampled_token_ids,
                           result.logprobs, pooled)

    def _execute(self, sched: SchedulerOutput) -> tuple[SchedulerOutput, RunnerOutput, dict[str, str]]:
        """Run the step's forward. When it fails and rows joined this step, they are the likeliest
        cause (a new prompt, a freshly loaded adapter): run once more without them, and fail only
        them if that works. Rows computed twice overwrite their own KV slots with the same values."""
        try:
            return sched, self.runner.execute(sched), {}
        except Exception as err:
            everyone = [r.req_id for r, _ in sched.scheduled]
            newest = set(sched.started)
            if not newest or len(newest) == len(everyone):
                raise StepFailed(everyone) from err
            logger.exception("a step of %d rows failed; retrying without the %d that joined it",
                             len(everyone), len(newest))
            why = f"the step's forward failed with this request in it: {type(err).__name__}: {err}"
        kept = sched.without(newest)
        try:
            return kept, self.runner.execute(kept), dict.fromkeys(newest, why)
        except Exception as err:
            raise StepFailed(everyone) from err

    def _advance_grammars(self, sched: SchedulerOutput, sampled: dict[str, int],
                          finished: list[Request]) -> dict[str, str]:
        """Feed each constrained row's new token to its grammar. A grammar that takes nothing more
        ends its request with "stop" (the reply is whole); one that failed fails the request."""
        broken = {}
        for request in finished:
            self.grammars.release(request.req_id)
        for request, _ in sched.scheduled:
            if request.req_id not in sampled or request.is_finished:
                continue
            verdict = self.grammars.advance(request)
            if verdict == "complete":
                self.scheduler.finish(request.req_id, RequestStatus.FINISHED_STOPPED)
                self.grammars.release(request.req_id)
            elif verdict is not None:
                broken[request.req_id] = verdict
        return broken

    def _unloadable_adapter_requests(self) -> dict[str, str]:
        return {r.req_id: f"adapter {r.adapter!r} failed to load: {self.lora.failed[r.adapter]}"
                for r in self.scheduler.waiting if r.adapter in self.lora.failed}

    def stats(self, num_unfinished: int, last_step: StepStats) -> EngineStats:
        kv, scheduler = self.kv_cache, self.scheduler
        return EngineStats(num_unfinished, len(scheduler.running), kv.num_free_blocks, kv.num_blocks,
                           kv.num_prefix_hit_tokens, scheduler.num_preemptions, last_step.num_tokens,
                           dict(last_step.rows))

    def cache_digest(self) -> CacheDigest:
        # list() of a dict's keys runs without releasing the GIL, so another thread may call this
        # while the step loop adds and evicts blocks
        return CacheDigest(self.kv_cache.block_size, list(self.kv_cache.cached), list(self.lora.resident))


def _step_stats(sched: SchedulerOutput, result: RunnerOutput) -> StepStats:
    num_pooling = sum(result.pooling_rows.values())
    num_generate = len(sched.scheduled) - num_pooling
    rows = {"generate": num_generate, **result.pooling_rows} if num_generate else dict(result.pooling_rows)
    return StepStats(sched.num_batched_tokens, rows)

