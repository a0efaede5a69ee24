"""Block allocation, freeing and prefix hits, without a model."""

from polyhead.engine.core.params import SamplingParams
from polyhead.engine.core.request import Request
from polyhead.engine.decoder.kv_cache import KVCacheManager


def request(tokens, req_id="r"):
    return Request(req_id, list(tokens), SamplingParams(), frozenset())


def compute(kv, req, n):
    """What a step does for the cache: allocate, then mark the tokens computed."""
    assert kv.allocate(req, n)
    req.num_computed_tokens += n
    kv.register_full_blocks(req)


def test_allocate_rounds_up_to_blocks_and_free_returns_them():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    req = request(range(10))
    compute(kv, req, 10)
    assert len(req.block_ids) == 3 and kv.num_free_blocks == 5
    req.all_token_ids.append(99)  # a decode token still fits in block 3 (11 of 12 slots) ...
    compute(kv, req, 1)
    assert len(req.block_ids) == 3
    req.all_token_ids += [1, 2]  # ... and the 13th token opens block 4
    compute(kv, req, 2)
    assert len(req.block_ids) == 4
    kv.free(req)
    assert kv.num_free_blocks == 8 and req.block_ids == []


def test_allocation_fails_cleanly_when_blocks_run_out():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    req = request(range(9))
    assert not kv.allocate(req, 9)
    assert req.block_ids == [] and kv.num_free_blocks == 2


def test_prefix_hit_shares_full_blocks_and_leaves_last_token_to_compute():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = request(range(12), "a")
    compute(kv, first, 12)
    second = request(list(range(8)) + [50, 51], "b")
    hits = kv.find_cached_prefix(second)
    assert hits == first.block_ids[:2]
    assert kv.allocate(second, second.num_tokens - 8, hits)
    assert second.num_computed_tokens == 8 and second.num_cached_tokens == 8
    assert kv.blocks[hits[0]].ref_count == 2
    # an identical prompt leaves its last token (the one that yields logits) to compute
    same = request(range(12), "c")
    assert len(kv.find_cached_prefix(same)) == 2


def test_finished_blocks_stay_cached_until_evicted_lru():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    old = request([1, 2, 3, 4, 5], "old")
    compute(kv, old, 5)
    kv.free(old)
    assert kv.num_free_blocks == 4
    again = request([1, 2, 3, 4, 9], "again")
    assert len(kv.find_cached_prefix(again)) == 2  # still cached after its request finished
    # a new request needs 3 blocks: the tail blocks of `old` are evicted first, its first block last
    other = request([7] * 6, "other")
    compute(kv, other, 6)
    assert len(kv.find_cached_prefix(again)) == 1


def test_prefix_caching_can_be_turned_off():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    first = request(range(12), "a")
    compute(kv, first, 12)
    assert kv.find_cached_prefix(request(range(12), "b")) == []


def test_different_prefix_same_block_tokens_do_not_collide():
    kv = KVCacheManager(num_blocks=8, block_size=2)
    compute(kv, request([1, 2, 3, 4, 0]), 5)
    # second block has the same tokens [3, 4] but a different parent: chained hash must differ
    assert kv.find_cached_prefix(request([9, 9, 3, 4, 0], "x")) == []


def test_memory_follows_the_peak_load_not_every_prompt_ever_seen():
    """A stream of distinct prompts, 4 at a time: the prefix cache keeps what they leave behind in
    blocks already touched (plus min_cached_free), instead of touching the whole cache in turn."""
    kv = KVCacheManager(num_blocks=10000, block_size=4)
    assert kv.min_cached_free == 156
    for wave in range(100):
        reqs = [request(range(wave * 1000 + i * 100, wave * 1000 + i * 100 + 16), f"{wave}-{i}") for i in range(4)]
        for req in reqs:
            compute(kv, req, 16)  # 4 full blocks each, all registered in the prefix cache
        for req in reqs:
            kv.free(req)
    # peak load 16 blocks in use + the cached floor; without the rule 1600 would have been touched
    assert kv.num_touched <= 16 + kv.min_cached_free + 16
    assert len(kv.free_cached) >= kv.min_cached_free  # the prefix cache still holds the recent prompts
    latest = request(range(99 * 1000 + 300, 99 * 1000 + 316), "again")
    assert len(kv.find_cached_prefix(latest)) == 3  # the last wave's prompt is still a hit (all but its last token)
