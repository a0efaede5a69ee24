"""The encoder backend (BERT family): embed, classify and tag requests under the same Engine as
a decoder (engine/core/engine.py).

The rule it keeps: a request is computed whole in the step that takes it. Attention is
bidirectional, so a prompt cannot be cut into chunks, and there is nothing to cache between
steps (no KV cache: kv_cache_memory, block_size and enable_prefix_caching do not apply). A
step takes waiting requests in scheduling order while they fit `max_num_batched_tokens` and
`max_num_seqs`, runs them in one flat ragged batch and finishes them all.
"""

import logging
import time
from collections import deque

from polyhead.config import EngineConfig
from polyhead.engine.core.backend import BackboneInfo, BackendStep, StepFailed, apply_runtime, model_name
from polyhead.engine.core.outputs import CacheDigest, EngineStats, StepStats
from polyhead.engine.core.params import PoolingParams
from polyhead.engine.core.policy import make_policy
from polyhead.engine.core.request import Request, RequestStatus
from polyhead.engine.encoder.limits import EncoderLimits
from polyhead.engine.encoder.runner import EncoderRunner
from polyhead.models.encoder_loader import LoadedEncoder, load_encoder
from polyhead.models.heads import ClassifyHead, EmbedPooler, TagHead

logger = logging.getLogger(__name__)


class EncoderBackend:
    default_params = PoolingParams(kind="embed")
    eos_token_ids = frozenset()

    def __init__(self, config: EngineConfig, loaded: LoadedEncoder | None = None):
        apply_runtime(config)
        self.config = config
        loaded = loaded or load_encoder(config.model, config.torch_dtype)
        self.tokenizer, self.model_config, self.sentence = loaded.tokenizer, loaded.config, loaded.sentence
        self.model_folder = loaded.folder
        name = model_name(self.model_folder)
        limit = loaded.sentence.max_seq_length
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ValueError(f"max_model_len ({config.max_model_len}) exceeds the encoder's limit ({limit} "
                             f"tokens, its max_seq_length)")
        self.max_model_len = config.max_model_len or limit  # longest prompt, [CLS] and [SEP] included
        if config.max_num_batched_tokens < self.max_model_len:
            raise ValueError(f"max_num_batched_tokens ({config.max_num_batched_tokens}) must be >= max_model_len "
                             f"({self.max_model_len}): an encoder computes a whole prompt in one step")
        self.rules = EncoderLimits(name, self.model_config.vocab_size, self.max_model_len,
                                   self.sentence.do_lower_case, self.sentence.pooling, self.sentence.normalize)
        self.info = BackboneInfo(name, str(self.model_folder), self.tokenizer.name_or_path, False,
                                 self.model_config.hidden_size, False, None)
        self.runner = EncoderRunner(loaded.model)
        self._heads: dict[str, ClassifyHead | TagHead | EmbedPooler] = {}
        self.waiting: deque[Request] = deque()
        self.policy = make_policy(config.policy, config.tenant_weights, config.task_weights)
        self.clock = time.monotonic  # deadlines are on it (a simulated clock in tests)

    @property
    def heads(self) -> dict:
        return self._heads

    @property
    def adapter_names(self) -> list[str]:
        return []

    def register_head(self, task: str, head: ClassifyHead | TagHead | EmbedPooler) -> None:
        """A ClassifyHead (classify requests), a TagHead (tag: every token, [CLS] and [SEP] included)
        or an EmbedPooler (embed: pooling, projection, normalization) on the token states."""
        hidden = self.model_config.hidden_size
        if isinstance(head, ClassifyHead | TagHead):
            width = head.linear.in_features
        elif isinstance(head, EmbedPooler):
            width = hidden if head.projection is None else head.projection.shape[1]
        else:
            raise TypeError(f"head for task {task!r} must be a ClassifyHead, TagHead or EmbedPooler, "
                            f"got {type(head).__name__}")
        if width != hidden:
            raise ValueError(f"task {task!r}: the head reads vectors of size {width}, the backbone's hidden "
                             f"size is {hidden}")
        self._heads[task] = head.eval().requires_grad_(False)

    def register_adapter(self, name: str, folder: str) -> None:
        raise ValueError(f"adapter {name!r}: the encoder backbone {self.info.name} serves no LoRA adapters")

    def add(self, request: Request) -> None:
        self.waiting.append(request)
        self.policy.on_enqueue(request)

    def finish(self, req_id: str, status: RequestStatus) -> bool:
        """Only a waiting request can end early: a taken one finishes within its step."""
        request = next((r for r in self.waiting if r.req_id == req_id), None)
        if request is None:
            return False
        self.waiting.remove(request)
        self.policy.on_dequeue(request, scheduled=False)
        request.status = status
        return True

    def step(self) -> BackendStep:
        now = self.clock()
        timed_out = [r.req_id for r in self.waiting if r.deadline is not None and r.deadline <= now]
        for req_id in timed_out:
            self.finish(req_id, RequestStatus.FINISHED_TIMEOUT)
        batch = self._take_batch()
        rows: dict[str, int] = {}
        for request in batch:
            rows[request.params.kind] = rows.get(request.params.kind, 0) + 1
        stats = StepStats(sum(r.num_prompt_tokens for r in batch), rows)
        if not batch:
            return BackendStep(stats, timed_out)
        pooled, failed = self._execute(batch)
        for request in batch:  # taken off the queue: each finished, or failed (the engine ends those)
            ok = request.req_id not in failed
            request.status = RequestStatus.FINISHED_STOPPED if ok else RequestStatus.FINISHED_ERROR
            request.num_computed_tokens = request.num_prompt_tokens
        return BackendStep(stats, timed_out, failed, pooled=pooled)

    def _execute(self, batch: list[Request]) -> tuple[dict, dict[str, str]]:
        """The batch in one forward; if that fails, each request alone, so only the failing ones fail."""
        try:
            return {r.req_id: p for r, p in zip(batch, self.runner.execute(batch, self._heads))}, {}
        except Exception as err:
            if len(batch) == 1:
                raise StepFailed([batch[0].req_id]) from err
            logger.exception("an encoder step of %d requests failed; running each alone", len(batch))
        pooled, failed = {}, {}
        for request in batch:
            try:
                pooled[request.req_id] = self.runner.execute([request], self._heads)[0]
            except Exception as err:  # noqa: BLE001 - reported as this request's error
                failed[request.req_id] = f"the encoder failed on this request: {type(err).__name__}: {err}"
        return pooled, failed

    def _take_batch(self) -> list[Request]:
        """Requests in the policy's order (engine/core/policy.py) while they fit both budgets; the
        first that does not fit ends the batch, so a later, shorter one never overtakes it."""
        batch, budget = [], self.config.max_num_batched_tokens
        for request in self.policy.waiting_order(self.waiting):
            if len(batch) == self.config.max_num_seqs or request.num_prompt_tokens > budget:
                break
            batch.append(request)
            budget -= request.num_prompt_tokens
            self.policy.on_dequeue(request, scheduled=True)
            self.policy.on_scheduled(request, request.num_prompt_tokens)
        taken = set(map(id, batch))
        self.waiting = deque(r for r in self.waiting if id(r) not in taken)
        for request in batch:
            request.status = RequestStatus.RUNNING
        return batch

    def stats(self, num_unfinished: int, last_step: StepStats) -> EngineStats:
        """No KV cache and no preemption here: only the request and token counts mean anything."""
        return EngineStats(num_unfinished, 0, 0, 0, 0, 0, last_step.num_tokens, dict(last_step.rows))

    def cache_digest(self) -> CacheDigest:
        return CacheDigest()  # nothing cached between requests, no adapters
