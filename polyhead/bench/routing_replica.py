"""One simulated replica: a calibrated model of the polyhead engine's scheduler (docs/design.md, Scheduling).

Continuous batching under one token budget: running requests first (a decode costs one token, a prompt
still being prefilled takes what the budget leaves), then waiting requests in arrival order up to
max_num_seqs, each first looked up in the prefix cache. A step takes StepTimeModel.step_s(prefill tokens,
decode rows). The prefix cache is an LRU of block hashes in the KV blocks that running requests do not
hold; a waiting request whose adapter is not resident starts its load (adapter_load_s, in the background,
at most max_loras at once) and is skipped until it is in, as LoRAManager.is_ready does; the first that
cannot get KV blocks stops the admissions.
"""

from collections import OrderedDict, deque
from dataclasses import dataclass

from polyhead.bench.routing_calibration import StepTimeModel
from polyhead.bench.routing_workload import SimRequest
from polyhead.deploy.routing import matched_blocks


@dataclass(slots=True)
class ReplicaConfig:
    """The engine each replica runs (EngineConfig's fields of the same names) and its Ray admission cap."""

    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    kv_blocks: int = 2048  # 32k tokens of KV cache: running requests' blocks plus the prefix cache
    max_loras: int = 4
    max_ongoing: int = 128  # Ray's max_ongoing_requests: queued + running at the replica


@dataclass(slots=True)
class _Running:
    request: SimRequest
    num_computed: int  # prompt tokens whose KV is in the cache (cached ones included)
    num_generated: int = 0
    num_reserved: int = 0  # KV blocks it holds outside the prefix cache
    chunk: int = 0  # prompt tokens it computes in the step under way


class SimReplica:
    def __init__(self, index: int, config: ReplicaConfig, model: StepTimeModel):
        self.index, self.config, self.model = index, config, model
        self.waiting: deque[SimRequest] = deque()
        self.running: list[_Running] = []
        self.cache: OrderedDict[int, None] = OrderedDict()  # block hash -> None, least recently used first
        self.resident: OrderedDict[str, None] = OrderedDict()  # adapters loaded, least recently used first
        self.loading: dict[str, float] = {}  # adapter -> when its load completes
        self.num_reserved = 0
        self.num_queued_tokens = 0
        self.is_stepping = False
        self.num_adapter_loads = 0
        self._loader_free_s = 0.0  # when the adapter loader thread is done with what it was given

    @property
    def replica_id(self) -> str:
        return f"replica-{self.index}"

    @property
    def num_ongoing(self) -> int:
        return len(self.waiting) + len(self.running)

    def submit(self, request: SimRequest) -> None:
        request.replica = self.index
        self.waiting.append(request)
        self.num_queued_tokens += request.num_prompt_tokens

    def report(self) -> tuple[set[int], set[str]]:
        """What the replica tells the router: the blocks it holds and those of prompts queued there
        (held once prefilled), and its resident adapters."""
        hashes = set(self.cache)
        for request in self.waiting:
            hashes.update(request.routed_hashes)
        for entry in self.running:
            hashes.update(entry.request.routed_hashes)
        return hashes, set(self.resident)

    # --- a step ------------------------------------------------------------------------------------
    def start_step(self, now: float) -> float | None:
        """Schedule one step; its duration in seconds, or None when nothing can run now."""
        budget = self.config.max_num_batched_tokens
        decode_rows = 0
        for entry in self.running:
            entry.chunk = 0
            if entry.num_computed == entry.request.num_prompt_tokens:
                decode_rows += 1
                budget -= 1
        for entry in self.running:
            remaining = entry.request.num_prompt_tokens - entry.num_computed
            if remaining and budget > 0:
                entry.chunk = min(remaining, budget)
                budget -= entry.chunk
        skipped: list[SimRequest] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting.popleft()
            if not self._is_adapter_ready(request.adapter, now):
                skipped.append(request)
                continue
            entry = self._admit(request)
            if entry is None:
                self.waiting.appendleft(request)
                break
            entry.chunk = min(request.num_prompt_tokens - entry.num_computed, budget)
            budget -= entry.chunk
        self.waiting.extendleft(reversed(skipped))
        prefill_tokens = sum(entry.chunk for entry in self.running)
        if not prefill_tokens and not decode_rows:
            return None
        self.is_stepping = True
        return self.model.step_s(prefill_tokens, decode_rows)

    def finish_step(self, now: float) -> list[SimRequest]:
        """Apply the step that just ended; the requests it finished."""
        self.is_stepping = False
        done, still = [], []
        for entry in self.running:
            request = entry.request
            if entry.chunk:
                entry.num_computed += entry.chunk
                if entry.num_computed == request.num_prompt_tokens:
                    self._prompt_computed(entry, now)
            elif entry.num_computed == request.num_prompt_tokens:
                entry.num_generated += 1
            if entry.num_computed == request.num_prompt_tokens and entry.num_generated >= request.num_output_tokens:
                request.finish_s = now
                self.num_reserved -= entry.num_reserved
                done.append(request)
            else:
                still.append(entry)
        self.running = still
        self._evict()
        return done

    def next_wake(self) -> float | None:
        """When an adapter being loaded arrives, for a replica with nothing else to do until then."""
        return min(self.loading.values()) if self.loading and self.waiting else None

    # --- the parts of a step -----------------------------------------------------------------------
    def _prompt_computed(self, entry: _Running, now: float) -> None:
        request = entry.request
        request.first_token_s = now
        entry.num_generated = 1 if request.num_output_tokens else 0
        for block_hash in request.block_hashes:  # the prompt's blocks become shareable prefix cache
            self.cache[block_hash] = None
            self.cache.move_to_end(block_hash)
        prompt_blocks = len(request.block_hashes) - request.num_cached_tokens // self.config.block_size
        entry.num_reserved -= prompt_blocks
        self.num_reserved -= prompt_blocks

    def _admit(self, request: SimRequest) -> _Running | None:
        size = self.config.block_size
        matched = matched_blocks(request.block_hashes, self.cache)
        cached_tokens = min(matched * size, request.num_prompt_tokens - 1)
        matched = cached_tokens // size
        for block_hash in request.block_hashes[:matched]:
            self.cache.move_to_end(block_hash)
        need = (len(request.block_hashes) - matched) + request.num_output_tokens // size + 1
        if self.num_reserved + need > self.config.kv_blocks:
            return None
        request.num_cached_tokens = cached_tokens
        self.num_queued_tokens -= request.num_prompt_tokens
        self.num_reserved += need
        entry = _Running(request, cached_tokens, num_reserved=need)
        self.running.append(entry)
        self._evict()
        return entry

    def _evict(self) -> None:
        while self.cache and len(self.cache) > self.config.kv_blocks - self.num_reserved:
            self.cache.popitem(last=False)

    def _is_adapter_ready(self, adapter: str | None, now: float) -> bool:
        if adapter is None:
            return True
        if adapter in self.resident:
            self.resident.move_to_end(adapter)
            return True
        done_s = self.loading.get(adapter)
        if done_s is None:
            if len(self.loading) < self.config.max_loras:  # one loader thread: loads run one after another
                self._loader_free_s = max(now, self._loader_free_s) + self.model.adapter_load_s
                self.loading[adapter] = self._loader_free_s
                self.num_adapter_loads += 1
            return False
        if done_s > now + 1e-12:
            return False
        if len(self.resident) >= self.config.max_loras:
            in_use = {e.request.adapter for e in self.running}
            idle = next((name for name in self.resident if name not in in_use), None)
            if idle is None:
                return False  # every resident adapter has a running request: wait for one to finish
            del self.resident[idle]
        del self.loading[adapter]
        self.resident[adapter] = None
        return True
