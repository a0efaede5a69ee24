"""Paged KV cache bookkeeping: which block holds which tokens of which request.

The rule it keeps: a full block is named by a hash chained over every token up to and
including it (engine/core/block_hash.py: the first block's parent stands for the request's
LoRA adapter), so two requests with the same prefix and adapter find the same blocks, in this
process or, for a router, in another. A block whose last user finished keeps its hash, free,
until it is reused for something else. A new block is, in this order: a free block holding no
cached prefix, lowest id first (a partial tail, a duplicate, or a block never used: the cache
tensor's pages are committed on first touch, so low ids first keeps the touched part small
under light load); only when none is left, the least recently freed cached block (LRU prefix
cache: a finished prompt's blocks live as long as memory allows).
"""

import heapq
from collections import OrderedDict
from dataclasses import dataclass

from polyhead.engine.core.block_hash import extend_block_hashes
from polyhead.engine.core.request import Request


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None  # set once the block is full and registered in the prefix cache


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_uncached: list[int] = list(range(num_blocks))  # a heap of free blocks holding no prefix
        self.free_cached: OrderedDict[int, None] = OrderedDict()  # free blocks holding a prefix, LRU first
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.num_prefix_hit_tokens = 0  # running total, for metrics
        # Blocks [0, num_touched) have held keys and values: their pages are resident. The cache's
        # pages are mapped lazily (kv_memory.lazily_zeroed), so a block past it costs new memory.
        self.num_touched = 0
        # Free blocks holding a prefix kept before a never-used block is touched instead: the
        # prefix cache lives in memory the load has already touched, plus this much, so resident
        # memory follows the peak load rather than growing with every prompt ever seen. (10% of the
        # default 5.8 GiB reservation was 580 MB of cache, still growing 16 MB a minute in a soak.)
        self.min_cached_free = max(64, num_blocks // 64)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_uncached) + len(self.free_cached)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Blocks already holding a prefix of the request's tokens, up to its max_prefix_hit_tokens:
        the last token is always left to compute (its logits give the first sample), and a pooling
        request computes every token whose hidden state its head reads."""
        if not self.enable_prefix_caching:
            return []
        num_blocks = max(request.max_prefix_hit_tokens, 0) // self.block_size
        self._hash_full_blocks(request, num_blocks)
        hits = []
        for block_hash in request.block_hashes[:num_blocks]:
            block_id = self.cached.get(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def allocate(self, request: Request, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        """Give the request blocks for `num_new_tokens` more tokens (after taking `cached_blocks`
        as its first blocks). False, with nothing changed, when the free blocks do not suffice."""
        num_evictable_hits = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        num_total = request.num_computed_tokens + len(cached_blocks) * self.block_size + num_new_tokens
        num_new_blocks = self.blocks_needed(num_total) - len(request.block_ids) - len(cached_blocks)
        if num_new_blocks + num_evictable_hits > self.num_free_blocks:
            return False
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_cached[block_id]  # a hit is in the prefix cache, so it was freed cached
            block.ref_count += 1
            request.block_ids.append(block_id)
        if cached_blocks:
            hit_tokens = len(cached_blocks) * self.block_size
            request.num_computed_tokens += hit_tokens
            request.num_cached_tokens = hit_tokens
            self.num_prefix_hit_tokens += hit_tokens
        for _ in range(num_new_blocks):
            request.block_ids.append(self._take_free_block())
        return True

    def register_full_blocks(self, request: Request) -> None:
        """After a step: blocks whose tokens are all computed join the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = request.num_computed_tokens // self.block_size
        self._hash_full_blocks(request, num_full)
        for i in range(num_full):
            block = self.blocks[request.block_ids[i]]
            if block.block_hash is None:
                block_hash = request.block_hashes[i]
                block.block_hash = block_hash
                self.cached.setdefault(block_hash, block.block_id)

    def free(self, request: Request) -> None:
        # Tail blocks are queued first so they are evicted first: a prefix outlives its suffix.
        for block_id in reversed(request.block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.block_hash is not None and self.cached.get(block.block_hash) == block_id:
                    self.free_cached[block_id] = None
                else:  # partial, or a duplicate of a block the cache already names: nothing to keep
                    self._forget_hash(block)
                    heapq.heappush(self.free_uncached, block_id)
        request.block_ids = []

    def reset_prefix_cache(self) -> None:
        for block_id in self.free_cached:
            self._forget_hash(self.blocks[block_id])
            heapq.heappush(self.free_uncached, block_id)
        self.free_cached.clear()

    def _take_free_block(self) -> int:
        """A touched block holding nothing first; then the least recently used prefix, while more
        than min_cached_free are kept; then a block never used; then any prefix."""
        touched_free = self.free_uncached and self.free_uncached[0] < self.num_touched
        if touched_free or (self.free_uncached and len(self.free_cached) <= self.min_cached_free):
            block_id = heapq.heappop(self.free_uncached)
        else:
            block_id, _ = self.free_cached.popitem(last=False)
        self.num_touched = max(self.num_touched, block_id + 1)
        block = self.blocks[block_id]
        self._forget_hash(block)
        block.ref_count = 1
        return block_id

    def _forget_hash(self, block: Block) -> None:
        if block.block_hash is not None and self.cached.get(block.block_hash) == block.block_id:
            del self.cached[block.block_hash]
        block.block_hash = None

    def _hash_full_blocks(self, request: Request, num_blocks: int) -> None:
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size, num_blocks,
                            request.adapter)
