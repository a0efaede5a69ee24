"""The name of a full KV block: a hash chained over every token up to and including it.

It is computed the same way in every process: the engine's prefix cache (decoder/kv_cache.py) and
a router in another process (polyhead/deploy) that asks which replica already holds a prompt's
first blocks. Python's `hash` of a tuple of ints is the same in every process of one Python build;
of a str or None it is not (randomized per process, or address-based), so an adapter's name enters
the chain as a stable integer.
"""

import zlib


def chain_seed(adapter: str | None) -> int:
    """Where a request's chain starts: a LoRA adapter changes every key and value, so its blocks
    never match the base model's (0) or another adapter's."""
    return 0 if adapter is None else zlib.crc32(adapter.encode()) + 1


def extend_block_hashes(hashes: list[int], token_ids, block_size: int, num_blocks: int,
                        adapter: str | None) -> None:
    """Append the hashes of blocks len(hashes)..num_blocks-1 of `token_ids` to `hashes`."""
    while len(hashes) < num_blocks:
        i = len(hashes)
        parent = hashes[-1] if hashes else chain_seed(adapter)
        hashes.append(hash((parent, tuple(token_ids[i * block_size:(i + 1) * block_size]))))


def block_hashes(token_ids, block_size: int, adapter: str | None = None, max_blocks: int | None = None) -> list[int]:
    """The chained hashes of the full blocks of `token_ids` (at most max_blocks of them)."""
    num_blocks = len(token_ids) // block_size
    if max_blocks is not None:
        num_blocks = min(num_blocks, max_blocks)
    hashes: list[int] = []
    extend_block_hashes(hashes, token_ids, block_size, num_blocks, adapter)
    return hashes
