"""Attention over a flat ragged batch against the paged KV cache.

The batch is every scheduled token of every sequence concatenated, decode rows first (one
token each), then prefill chunks. The rule it keeps: a token at position p attends to the
keys at positions 0..p of its own sequence (and no further back than the sliding window),
whether those keys were written this step or steps ago; keys live in cache slots named by
the sequence's block table, and are gathered a whole block at a time (keys and values of
all heads in one copy), padding beyond a sequence's length masked out.

Decode rows go to the native kernel (polyhead/kernels), which reads keys and values in place
through the block tables; without it, to one batched matmul over their gathered blocks (the
CPU flash kernel is built for long queries and is ~2x slower for one-token queries). Each
prefill chunk runs through scaled_dot_product_attention.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillChunk:
    query_start: int  # first row of this chunk in the flat batch
    query_len: int  # new tokens in this chunk
    context_len: int  # tokens of the sequence whose keys this chunk attends to (cached + new)
    block_ids: torch.Tensor | None  # [ceil(context_len / block)] its blocks; None: no cached prefix
    mask: torch.Tensor | None  # [query_len, context_len] bool, True = attend; None: plain causal


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot where each new token's key/value is written
    block_size: int  # slots per block: slot = block_id * block_size + offset
    num_decode_tokens: int  # rows [0, num_decode_tokens) are decode rows, one per sequence
    decode_block_table: torch.Tensor | None  # [B, nb] int64, each decode row's blocks, padded with block 0
    decode_context_lens: torch.Tensor | None  # [B] int64, keys each decode row attends to (incl. its own)
    decode_bias: torch.Tensor | None  # [1, B, 1, nb * block] for the torch path: 0 attended, -inf not
    prefills: list[PrefillChunk]
    sliding_window: int | None = None
    native_decode: object | None = None  # the native kernel (polyhead.kernels), None: torch path
    num_threads: int = 1  # for the native kernel


def build_prefill_mask(start: int, query_len: int, sliding_window: int | None) -> torch.Tensor | None:
    """Mask for a chunk whose first query sits at position `start`; None when plain causal suffices."""
    if start == 0 and (sliding_window is None or query_len <= sliding_window):
        return None
    q_pos = torch.arange(start, start + query_len).unsqueeze(1)  # [Q, 1]
    k_pos = torch.arange(start + query_len).unsqueeze(0)  # [1, K]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return mask


def build_decode_bias(context_lens: list[int], num_keys: int, sliding_window: int | None, dtype: torch.dtype):
    """Additive bias over `num_keys` gathered keys for decode rows whose query is the last of
    `context_lens[i]` keys."""
    lens = torch.tensor(context_lens)
    k_pos = torch.arange(num_keys).unsqueeze(0)  # [1, L]
    keep = k_pos < lens.unsqueeze(1)
    if sliding_window is not None:
        keep &= k_pos > (lens.unsqueeze(1) - 1) - sliding_window
    bias = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, float("-inf"))
    return bias[None, :, None, :]


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D] new keys (rotary applied)
    v: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, Hkv, S, D]: S = num_blocks * block slots of keys and values
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, Hq * D]
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    k_cache.index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
    v_cache.index_copy_(1, meta.slot_mapping, v.transpose(0, 1))

    out = q.new_empty(num_tokens, num_heads, head_dim)
    if meta.num_decode_tokens and meta.native_decode is not None:
        _decode_native(q, kv_cache, meta, scale, out)
    elif meta.num_decode_tokens:
        _decode_torch(q, kv_cache, meta, scale, out)

    for chunk in meta.prefills:
        rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
        query = q[rows].transpose(0, 1).unsqueeze(0)  # [1, Hq, Q, D]
        if chunk.block_ids is None:  # nothing cached before this chunk: its own keys are all it needs
            keys = k[rows].transpose(0, 1).unsqueeze(0)
            values = v[rows].transpose(0, 1).unsqueeze(0)
        else:
            kv = gather_blocks(kv_cache, chunk.block_ids, meta.block_size)[:, : chunk.context_len]  # [2 Hkv, K, D]
            keys, values = kv[:num_kv_heads].unsqueeze(0), kv[num_kv_heads:].unsqueeze(0)  # [1, Hkv, K, D]
        attn = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=chunk.mask, is_causal=chunk.mask is None,
            scale=scale, enable_gqa=group > 1)
        out[rows] = attn[0].transpose(0, 1)
    return out.view(num_tokens, num_heads * head_dim)


def _decode_native(q, kv_cache, meta: AttentionMetadata, scale: float, out: torch.Tensor) -> None:
    batch = meta.num_decode_tokens
    num_heads, head_dim = q.shape[1], q.shape[2]
    query = q[:batch].contiguous()
    table = meta.decode_block_table
    meta.native_decode(query.data_ptr(), kv_cache.data_ptr(), table.data_ptr(), meta.decode_context_lens.data_ptr(),
                       out.data_ptr(), batch, num_heads, kv_cache.shape[1], head_dim, kv_cache.shape[2],
                       meta.block_size, table.shape[1], scale, meta.sliding_window or 0, meta.num_threads)


def _decode_torch(q, kv_cache, meta: AttentionMetadata, scale: float, out: torch.Tensor) -> None:
    batch, (num_heads, head_dim), num_kv_heads = meta.num_decode_tokens, q.shape[1:], kv_cache.shape[1]
    kv = gather_blocks(kv_cache, meta.decode_block_table.view(-1), meta.block_size)  # [2 Hkv, B * nb * block, D]
    kv = kv.view(2, num_kv_heads, batch, -1, head_dim)
    keys, values = kv[0], kv[1]  # [Hkv, B, L, D]
    query = q[:batch].view(batch, num_kv_heads, -1, head_dim).transpose(0, 1)  # [Hkv, B, G, D]
    scores = torch.matmul(query, keys.transpose(-1, -2)).mul_(scale)  # [Hkv, B, G, L]
    probs = torch.softmax(scores.add_(meta.decode_bias), dim=-1, dtype=torch.float32).to(q.dtype)
    out[:batch] = torch.matmul(probs, values).permute(1, 0, 2, 3).reshape(batch, num_heads, head_dim)


def gather_blocks(kv_cache: torch.Tensor, block_ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Copy whole blocks out of the cache: [2, Hkv, S, D] -> [2 Hkv, len(block_ids) * block, D].
    One index_select per head along dim 0: dim 0 is a plain row-copy loop, several times
    faster here than one index_select along dim 1 (a per-element gather)."""
    _, num_kv_heads, num_slots, head_dim = kv_cache.shape
    blocks = kv_cache.view(2 * num_kv_heads, num_slots // block_size, block_size * head_dim)
    out = blocks.new_empty(2 * num_kv_heads, len(block_ids), block_size * head_dim)
    for head in range(2 * num_kv_heads):
        torch.index_select(blocks[head], 0, block_ids, out=out[head])
    return out.view(2 * num_kv_heads, -1, head_dim)
