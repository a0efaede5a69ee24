"""Turns a SchedulerOutput into tensors, runs the backbone once, samples the rows that need it and
hands pooling rows' hidden states to their heads (engine/decoder/pooler.py)."""

import logging
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from polyhead.engine.core.request import Request
from polyhead.engine.decoder.grammar import GrammarManager
from polyhead.engine.decoder.kv_memory import kv_bytes_per_token, lazily_zeroed
from polyhead.engine.decoder.pooler import Pooled, Pooler, PoolingRow
from polyhead.engine.decoder.sampler import Sampler, SamplingRow, TokenLogprobs
from polyhead.engine.decoder.scheduler import SchedulerOutput
from polyhead.kernels import decode_attention_kernel
from polyhead.lora.manager import LoRAManager
from polyhead.models.attention import AttentionMetadata, PrefillChunk, build_decode_bias, build_prefill_mask
from polyhead.models.inference import prepare_for_inference
from polyhead.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RunnerOutput:
    sampled_token_ids: dict[str, int]  # req_id -> new token, for rows whose tokens are all computed
    logprobs: dict[str, TokenLogprobs]  # req_id -> logprobs of that token, where asked for
    pooled: dict[str, Pooled] = field(default_factory=dict)  # req_id -> result, pooling requests that finished
    pooling_rows: dict[str, int] = field(default_factory=dict)  # kind -> pooling rows in this step
    errors: dict[str, str] = field(default_factory=dict)  # req_id -> why its row failed (the others went on)


@dataclass(slots=True)
class BatchInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    sample_rows: list[int]  # rows of the flat batch whose logits are sampled
    sample_requests: list[Request]  # the request each of those rows belongs to
    pooling_rows: list[PoolingRow]  # prefill-only rows whose states go to a head (empty: none)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int, dtype: torch.dtype,
                 lora: LoRAManager | None = None, grammars: GrammarManager | None = None):
        config = model.config
        self.model = prepare_for_inference(model)
        self.block_size = block_size
        self.dtype = dtype
        self.sliding_window = config.sliding_window
        # [layers, 2 (k, v), kv_heads, slots, head_dim]; zeros so padding reads are finite, mapped lazily
        # so a page is resident only once a request's block touches it
        self.kv_cache = lazily_zeroed((config.num_layers, 2, config.num_kv_heads, num_blocks * block_size,
                                       config.head_dim), dtype)
        self.kv_caches = list(self.kv_cache.unbind(0))
        self.native_decode = decode_attention_kernel(dtype)
        self.sampler = Sampler()
        self.pooler = Pooler(config.hidden_size)
        self.lora = lora  # None: base weights only
        self.grammars = grammars  # None: no structured outputs

    @staticmethod
    def cache_bytes_per_block(model: LlamaForCausalLM, block_size: int, dtype: torch.dtype) -> int:
        config = model.config
        return kv_bytes_per_token(config.num_layers, config.num_kv_heads, config.head_dim, dtype) * block_size

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        # The runner's own row order (the scheduler's output is left as it is): rows grouped by adapter.
        rows = self.lora.order_rows(sched.scheduled) if self.lora is not None else sched.scheduled
        batch = self.prepare(rows)
        # the grammars' masks for this step's sampling rows, computed while the forward runs
        masks = self.grammars.start_allowed_tokens(batch.sample_requests) if self.grammars is not None else None
        adapters = self.lora.applied([(n, r.adapter) for r, n in rows]) if self.lora else nullcontext()
        with adapters:  # per-row LoRA, grouped by adapter (rows are laid out in `rows` order)
            hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.meta)
        if batch.pooling_rows:
            return self._execute_with_pooling(hidden, batch, masks)
        if not batch.sample_rows:
            return RunnerOutput({}, {})
        logits = self.model.compute_logits(hidden[batch.sample_rows])  # only rows that sample
        return self._sample(logits, batch.sample_requests, masks)

    def _sample(self, logits: torch.Tensor, requests: list[Request], masks: Future | None) -> RunnerOutput:
        # logits: [len(requests), vocab] float32; masks: the grammars' allowed tokens per request, or None
        allowed = masks.result() if masks is not None else [None] * len(requests)
        allowed = [None if mask is None else torch.from_numpy(mask) for mask in allowed]  # no copy
        rows = [SamplingRow(r.params, r.prompt_token_ids, r.output_token_ids, r.generator, r.eos_token_ids, mask)
                for r, mask in zip(requests, allowed)]
        try:
            out = self.sampler(logits, rows)
        except Exception:  # noqa: BLE001 - one row's failure must not take the others: sample them one by one
            return self._sample_each(logits, requests, rows)
        ids = [r.req_id for r in requests]
        logprobs = {i: lp for i, lp in zip(ids, out.logprobs) if lp is not None}
        return RunnerOutput(dict(zip(ids, out.token_ids)), logprobs)

    def _sample_each(self, logits: torch.Tensor, requests: list[Request], rows: list[SamplingRow]) -> RunnerOutput:
        output = RunnerOutput({}, {})
        for i, (request, row) in enumerate(zip(requests, rows)):
            try:
                out = self.sampler(logits[i:i + 1], [row])
            except Exception as err:
                logger.exception("sampling failed for request %s", request.req_id)
                output.errors[request.req_id] = f"sampling failed: {type(err).__name__}: {err}"
                continue
            output.sampled_token_ids[request.req_id] = out.token_ids[0]
            if out.logprobs[0] is not None:
                output.logprobs[request.req_id] = out.logprobs[0]
        return output

    def _execute_with_pooling(self, hidden: torch.Tensor, batch: BatchInputs, masks: Future | None) -> RunnerOutput:
        """Sampling rows and score rows share one LM-head call; the other pooling rows use their heads."""
        score_rows, score_targets, score_counts = self.pooler.score_inputs(batch.pooling_rows)
        # A row scoring next-token candidates reads one state once per candidate: the LM head and the
        # log-softmax run once per distinct state, and each score picks its state's row.
        distinct_rows = list(dict.fromkeys(score_rows))
        num_sample = len(batch.sample_rows)
        lm_rows = batch.sample_rows + distinct_rows
        logits = self.model.compute_logits(hidden[lm_rows]) if lm_rows else None  # [S + U, vocab]
        output = self._sample(logits[:num_sample], batch.sample_requests, masks) if num_sample else RunnerOutput({}, {})
        score_logprobs = None
        if score_rows:
            log_probs = torch.log_softmax(logits[num_sample:], dim=-1)  # [U, vocab]
            where = {row: i for i, row in enumerate(distinct_rows)}
            score_logprobs = log_probs[[where[row] for row in score_rows], score_targets]  # [N]
        output.pooled, pooling_errors = self.pooler(hidden, batch.pooling_rows, score_logprobs, score_counts)
        output.errors.update(pooling_errors)
        for item in batch.pooling_rows:
            kind = item.request.params.kind
            output.pooling_rows[kind] = output.pooling_rows.get(kind, 0) + 1
        return output

    def prepare(self, rows: list[tuple[Request, int]]) -> BatchInputs:
        """rows: (request, tokens to compute), one-token (decode) rows first."""
        size = self.block_size
        input_ids, positions, slot_mapping = [], [], []
        decode_tables, decode_lens, prefills = [], [], []
        sample_rows, sample_requests, pooling_rows = [], [], []
        for request, num_new in rows:
            start, end = request.num_computed_tokens, request.num_computed_tokens + num_new
            row = len(input_ids)
            input_ids.extend(request.all_token_ids[start:end])
            positions.extend(range(start, end))
            table = request.block_ids
            slot_mapping.extend(table[p // size] * size + p % size for p in range(start, end))
            if num_new == 1:
                assert row == len(decode_tables), "one-token rows come first"
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                blocks = None if start == 0 else torch.tensor(table[: -(-end // size)])
                mask = build_prefill_mask(start, num_new, self.sliding_window)
                prefills.append(PrefillChunk(row, num_new, end, blocks, mask))
            if request.is_pooling:  # prefill-only: its states go to a head, never to the sampler
                pooling_rows.append(PoolingRow(request, row, start, num_new))
            elif end == request.num_tokens:  # all its known tokens are computed: sample the next
                sample_rows.append(row + num_new - 1)
                sample_requests.append(request)

        decode_table = decode_context_lens = decode_bias = None
        if decode_tables:
            num_blocks = -(-max(decode_lens) // size)
            decode_table = torch.tensor([t[:num_blocks] + [0] * (num_blocks - len(t)) for t in decode_tables])
            decode_context_lens = torch.tensor(decode_lens)
            if self.native_decode is None:
                decode_bias = build_decode_bias(decode_lens, num_blocks * size, self.sliding_window, self.dtype)
        meta = AttentionMetadata(torch.tensor(slot_mapping), size, len(decode_tables), decode_table,
                                 decode_context_lens, decode_bias, prefills, self.sliding_window,
                                 self.native_decode, torch.get_num_threads())
        return BatchInputs(torch.tensor(input_ids), torch.tensor(positions), meta, sample_rows, sample_requests,
                           pooling_rows)
