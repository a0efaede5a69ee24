"""Turns a SchedulerOutput into tensors, runs the backbone once, samples the rows that need it."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from polyhead.engine.request import Request
from polyhead.engine.sampler import Sampler, SamplingRow, TokenLogprobs
from polyhead.engine.scheduler import SchedulerOutput
from polyhead.kernels import decode_attention_kernel
from polyhead.lora.manager import LoRAManager
from polyhead.models.attention import AttentionMetadata, PrefillChunk, build_decode_bias, build_prefill_mask
from polyhead.models.inference import prepare_for_inference
from polyhead.models.llama import LlamaForCausalLM


@dataclass(slots=True)
class RunnerOutput:
    sampled_token_ids: dict[str, int]  # req_id -> new token, for rows whose tokens are all computed
    logprobs: dict[str, TokenLogprobs]  # req_id -> logprobs of that token, where asked for


@dataclass(slots=True)
class BatchInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    sample_rows: list[int]  # rows of the flat batch whose logits are sampled
    sample_requests: list[Request]  # the request each of those rows belongs to


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int, dtype: torch.dtype):
        config = model.config
        self.model = prepare_for_inference(model)
        self.block_size = block_size
        self.dtype = dtype
        self.sliding_window = config.sliding_window
        # [layers, 2 (k, v), kv_heads, slots, head_dim]; zeroed so padding reads are finite
        self.kv_cache = torch.zeros(config.num_layers, 2, config.num_kv_heads, num_blocks * block_size,
                                    config.head_dim, dtype=dtype)
        self.kv_caches = list(self.kv_cache.unbind(0))
        self.native_decode = decode_attention_kernel(dtype)
        self.sampler = Sampler()
        self.lora: LoRAManager | None = None  # set by the engine; None: base weights only

    @staticmethod
    def cache_bytes_per_block(model: LlamaForCausalLM, block_size: int, dtype: torch.dtype) -> int:
        config = model.config
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * block_size * dtype.itemsize

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        batch = self.prepare(sched)
        adapters = self.lora.applied([(n, r.adapter) for r, n in sched.scheduled]) if self.lora else nullcontext()
        with adapters:  # per-row LoRA, grouped by adapter (rows are laid out in scheduled order)
            hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.meta)
        if not batch.sample_rows:
            return RunnerOutput({}, {})
        logits = self.model.compute_logits(hidden[batch.sample_rows])  # only rows that sample
        rows = [SamplingRow(r.params, r.prompt_token_ids, r.output_token_ids, r.generator)
                for r in batch.sample_requests]
        out = self.sampler(logits, rows)
        ids = [r.req_id for r in batch.sample_requests]
        logprobs = {i: lp for i, lp in zip(ids, out.logprobs) if lp is not None}
        return RunnerOutput(dict(zip(ids, out.token_ids)), logprobs)

    def prepare(self, sched: SchedulerOutput) -> BatchInputs:
        size = self.block_size
        input_ids, positions, slot_mapping = [], [], []
        decode_tables, decode_lens, prefills = [], [], []
        sample_rows, sample_requests = [], []
        for request, num_new in sched.scheduled:
            start, end = request.num_computed_tokens, request.num_computed_tokens + num_new
            row = len(input_ids)
            input_ids.extend(request.all_token_ids[start:end])
            positions.extend(range(start, end))
            table = request.block_ids
            slot_mapping.extend(table[p // size] * size + p % size for p in range(start, end))
            if num_new == 1:
                assert row == len(decode_tables), "the scheduler puts one-token rows first"
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                blocks = None if start == 0 else torch.tensor(table[: -(-end // size)])
                mask = build_prefill_mask(start, num_new, self.sliding_window)
                prefills.append(PrefillChunk(row, num_new, end, blocks, mask))
            if end == request.num_tokens:  # all its known tokens are computed: sample the next
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
        return BatchInputs(torch.tensor(input_ids), torch.tensor(positions), meta, sample_rows, sample_requests)
