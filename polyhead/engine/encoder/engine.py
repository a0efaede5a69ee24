"""The engine for an encoder backbone (BERT family): embed, classify and tag requests, with the same
public surface as LLMEngine, so AsyncEngine and LLM drive either.

The rule it keeps: a request is computed whole in the step that takes it. Attention is
bidirectional, so a prompt cannot be cut into chunks, and there is nothing to cache between
steps (no KV cache: kv_cache_memory, block_size and enable_prefix_caching do not apply). A
step takes waiting requests in scheduling order while they fit `max_num_batched_tokens` and
`max_num_seqs`, runs them in one flat ragged batch and finishes them all.
"""

import logging
import time
from collections import deque
from dataclasses import dataclass, replace

import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.outputs import EngineStats, RequestOutput, StepStats
from polyhead.engine.core.params import PoolingParams
from polyhead.engine.core.policy import make_policy
from polyhead.engine.core.request import Request, RequestStatus
from polyhead.engine.decoder.pooler import resolve_pooling_params
from polyhead.engine.encoder.runner import EncoderRunner
from polyhead.models.encoder_loader import LoadedEncoder, load_encoder
from polyhead.models.heads import ClassifyHead, EmbedPooler, TagHead

logger = logging.getLogger(__name__)

ENCODER_KINDS = ("embed", "classify", "tag")  # score needs an LM head, which an encoder has not


@dataclass(eq=False)
class EncoderRequestState:
    """A validated request and what the engine keeps to build its output."""

    request: Request
    prompt: str | None  # the text, when it came as text
    pooled: list[float] | list[list[float]] | None = None  # the result, once computed
    error: str | None = None  # why it failed, when a step failed

    @property
    def req_id(self) -> str:
        return self.request.req_id

    @property
    def num_prompt_tokens(self) -> int:
        return self.request.num_prompt_tokens


class EncoderEngine:
    def __init__(self, config: EngineConfig, loaded: LoadedEncoder | None = None):
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        self.config = config
        loaded = loaded or load_encoder(config.model, config.torch_dtype)
        self.tokenizer, self.model_config, self.sentence = loaded.tokenizer, loaded.config, loaded.sentence
        self.model_folder = loaded.folder
        limit = loaded.sentence.max_seq_length
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ValueError(f"max_model_len ({config.max_model_len}) exceeds the encoder's limit ({limit} "
                             f"tokens, its max_seq_length)")
        self.max_model_len = config.max_model_len or limit  # longest prompt, [CLS] and [SEP] included
        if config.max_num_batched_tokens < self.max_model_len:
            raise ValueError(f"max_num_batched_tokens ({config.max_num_batched_tokens}) must be >= max_model_len "
                             f"({self.max_model_len}): an encoder computes a whole prompt in one step")
        self.runner = EncoderRunner(loaded.model)
        self.heads: dict[str, ClassifyHead | TagHead | EmbedPooler] = {}
        self.waiting: deque[Request] = deque()
        self.policy = make_policy(config.policy, config.tenant_weights, config.task_weights)
        self.clock = time.monotonic  # deadlines are on it (a simulated clock in tests)
        self._states: dict[str, EncoderRequestState] = {}
        self._pending: list[RequestOutput] = []  # outputs of requests ended between steps
        self._next_id = 0
        self.last_step_num_tokens = 0  # tokens the last step computed (for metrics)
        self.last_step_stats = StepStats(0, {})  # what the last step computed, by row kind (for metrics)

    def register_head(self, task: str, head: ClassifyHead | TagHead | EmbedPooler) -> None:
        """Serve a task's head on this backbone's token states: a ClassifyHead (classify requests),
        a TagHead (tag: every token, [CLS] and [SEP] included), an EmbedPooler (embed: pooling,
        projection, normalization). Requests name it by `task`, as on LLMEngine."""
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
        self.heads[task] = head.eval().requires_grad_(False)

    # --- requests ---------------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: PoolingParams | None = None,
                    req_id: str | None = None, **routing) -> str:
        """Validate and queue a request; raises ValueError naming the bad parameter or limit."""
        if req_id is None:
            req_id, self._next_id = f"req-{self._next_id}", self._next_id + 1
        return self.admit(self.new_request(prompt, params, req_id, **routing))

    def new_request(self, prompt: str | list[int], params: PoolingParams | None, req_id: str, *,
                    task: str = "", adapter: str | None = None, priority: int = 0, tenant: str = "",
                    deadline: float | None = None, after: str | None = None) -> EncoderRequestState:
        """Tokenize and validate, touching no engine state: safe from any thread. Text gets
        [CLS] ... [SEP] as sentence-transformers adds them; token ids are taken as they are.
        `after` (LLMEngine's shared-prefill hint) has nothing to share here: no KV cache."""
        params = params if params is not None else PoolingParams(kind="embed")
        self._check_params(params, adapter)
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty: it must have at least 1 character")
            text = prompt.lower() if self.sentence.do_lower_case else prompt
            cut = {"truncation": True, "max_length": self.max_model_len} if params.truncate else {}
            token_ids = self.tokenizer(text, **cut)["input_ids"]
        else:
            token_ids = list(prompt)[: self.max_model_len] if params.truncate else list(prompt)
        self.validate_prompt(token_ids)
        params = resolve_pooling_params(self._with_model_defaults(params, task), task, self.heads, len(token_ids))
        request = Request(req_id, token_ids, params, frozenset(), task=task, adapter=adapter, priority=priority,
                          tenant=tenant, deadline=deadline)
        return EncoderRequestState(request, prompt if isinstance(prompt, str) else None)

    def _with_model_defaults(self, params: PoolingParams, task: str) -> PoolingParams:
        """Without a task head, an embedding is the model's own: its sentence-transformers pooling
        and normalization, where a decoder's default would be the last token, unnormalized."""
        head_task = params.task if params.task is not None else task
        if params.kind != "embed" or head_task in self.heads:
            return params
        normalize = self.sentence.normalize if params.normalize is None else params.normalize
        return replace(params, pooling=params.pooling or self.sentence.pooling, normalize=normalize)

    def _check_params(self, params, adapter: str | None) -> None:
        if not isinstance(params, PoolingParams):  # a request the client got wrong: ValueError -> HTTP 400
            raise ValueError(  # noqa: TRY004
                f"{self._name} is an encoder backbone: it serves only embed, classify and tag requests "
                f"(PoolingParams), not {type(params).__name__}; send generation to a decoder backbone")
        if params.kind not in ENCODER_KINDS:
            raise ValueError(f"kind {params.kind!r} is not served by the encoder backbone {self._name}; "
                             f"it serves {', '.join(ENCODER_KINDS)}")
        if adapter is not None:
            raise ValueError(f"adapter {adapter!r}: the encoder backbone {self._name} serves no LoRA adapters")

    @property
    def _name(self) -> str:
        return self.model_folder.name if self.model_folder.name != "model" else self.model_folder.parent.name

    def validate_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("prompt is empty: it must have at least 1 token")
        vocab = self.model_config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}) (vocab_size)")
        if len(token_ids) > self.max_model_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens ([CLS] and [SEP] included), but this encoder's "
                             f"limit is {self.max_model_len} (max_model_len); PoolingParams(truncate=True) "
                             f"cuts it to the limit instead")

    def admit(self, state: EncoderRequestState) -> str:
        """Queue a request made by new_request (on the thread that steps the engine)."""
        req_id = state.request.req_id
        if req_id in self._states:
            raise ValueError(f"req_id {req_id!r} is already in use")
        self._states[req_id] = state
        self.waiting.append(state.request)
        self.policy.on_enqueue(state.request)
        return req_id

    def abort_request(self, req_id: str) -> bool:
        """Cancel a waiting request; its final output comes with the next step."""
        return self._end(req_id, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return bool(self._states)

    def stats(self) -> EngineStats:
        """No KV cache and no preemption here: only the request and token counts mean anything."""
        return EngineStats(len(self._states), 0, 0, 0, 0, 0, self.last_step_num_tokens,
                           dict(self.last_step_stats.rows))

    # --- steps ------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        now = self.clock()
        for request in [r for r in self.waiting if r.deadline is not None and r.deadline <= now]:
            self._end(request.req_id, RequestStatus.FINISHED_TIMEOUT)
        outputs, self._pending = self._pending, []
        batch = self._take_batch()
        self.last_step_num_tokens = sum(r.num_prompt_tokens for r in batch)
        rows: dict[str, int] = {}
        for request in batch:
            rows[request.params.kind] = rows.get(request.params.kind, 0) + 1
        self.last_step_stats = StepStats(self.last_step_num_tokens, rows)
        if not batch:
            return outputs
        try:
            results = self.runner.execute(batch, self.heads)
        except Exception as err:  # one failed step fails its own rows, never the engine
            logger.exception("encoder step failed; failing the %d requests in it", len(batch))
            for request in batch:
                self._end(request.req_id, RequestStatus.FINISHED_ERROR, f"{type(err).__name__}: {err}")
            outputs, self._pending = outputs + self._pending, []
            return outputs
        for request, pooled in zip(batch, results):
            state = self._states[request.req_id]
            state.pooled = pooled
            request.status = RequestStatus.FINISHED_STOPPED
            request.num_computed_tokens = request.num_prompt_tokens
            outputs.append(self._make_output(state))
        return outputs

    def _take_batch(self) -> list[Request]:
        """Requests in the policy's order (engine/core/policy.py) while they fit both budgets; the first
        that does not fit ends the batch, so a later, shorter one never overtakes it."""
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

    def _end(self, req_id: str, status: RequestStatus, error: str | None = None) -> bool:
        state = self._states.get(req_id)
        if state is None:
            return False
        if state.request.status == RequestStatus.WAITING:
            self.waiting.remove(state.request)
            self.policy.on_dequeue(state.request, scheduled=False)
        state.request.status = status
        state.error = error
        self._pending.append(self._make_output(state))
        return True

    def _make_output(self, state: EncoderRequestState) -> RequestOutput:
        request = state.request
        del self._states[request.req_id]
        return RequestOutput(
            req_id=request.req_id, prompt=state.prompt, prompt_token_ids=request.prompt_token_ids, text="",
            token_ids=[], finished=True, finish_reason=request.status.finish_reason, error=state.error,
            pooled=state.pooled)
