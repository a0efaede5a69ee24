"""How much memory the paged KV cache gets, and how that memory is allocated.

The rule it keeps: the cache is sized for what the engine can use — `max_num_seqs` sequences of
`max_model_len` tokens each — capped at a share of the memory the machine has available, and
never below one `max_model_len` sequence (so one request always fits alone). The tensor is
reserved, not written: its pages are zero-filled by the kernel on first touch, so resident
memory grows with the blocks requests actually use.
"""

import mmap
from dataclasses import dataclass
from pathlib import Path

import torch

# The share of MemAvailable an "auto" KV cache may reserve. The pages are only committed as
# requests touch them, so the cap is what a full cache may grow to under peak load. A quarter
# leaves the rest for the weights, activations, the HTTP process and the other programs of a
# small machine; and since an untouched cache does not lower MemAvailable, each backbone of a
# multi-backbone server reads the same figure: three decoder engines still stay within 3/4.
KV_AUTO_MEMORY_SHARE = 0.25
FALLBACK_AVAILABLE_BYTES = 8 << 30  # when /proc/meminfo cannot be read (not Linux): cap at 2 GiB


@dataclass(frozen=True, slots=True)
class KVCachePlan:
    """The KV cache an engine will allocate, and why that size."""

    num_blocks: int
    block_size: int  # tokens per block
    bytes_per_block: int  # all layers' keys and values of block_size tokens
    source: str  # how the size was chosen, for the start-up log line

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def describe(self) -> str:
        return (f"KV cache: {self.num_bytes / (1 << 20):.1f} MiB reserved ({self.num_blocks} blocks x "
                f"{self.block_size} tokens = {self.num_tokens} tokens), {self.source}; pages are committed "
                f"as requests use them")


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of one token over all layers (each layer: [2, kv_heads, head_dim])."""
    return num_layers * 2 * num_kv_heads * head_dim * dtype.itemsize


def read_mem_available(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes (the kernel's estimate of what can be allocated without swapping), or
    None when the file or the field is missing."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            value, *unit = line.split()[1:]
            return int(value) * (1024 if unit[:1] == ["kB"] else 1)
    return None


def plan_kv_cache(kv_cache_memory: int | str, bytes_per_block: int, block_size: int, max_num_seqs: int,
                  max_model_len: int, mem_available: int | None = None) -> KVCachePlan:
    """Blocks for an explicit byte budget, or for "auto": max_num_seqs x blocks of one max_model_len
    sequence, capped at KV_AUTO_MEMORY_SHARE of `mem_available` (read from /proc/meminfo when None),
    never below one max_model_len sequence. Raises ValueError naming kv_cache_memory and its limit."""
    if kv_cache_memory != "auto":
        num_blocks = kv_cache_memory // bytes_per_block
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory ({kv_cache_memory} bytes) is below one KV block "
                             f"({bytes_per_block} bytes at block_size {block_size})")
        return KVCachePlan(num_blocks, block_size, bytes_per_block, f"kv_cache_memory={kv_cache_memory} bytes")
    blocks_per_seq = -(-max_model_len // block_size)
    wanted = max_num_seqs * blocks_per_seq
    available = mem_available if mem_available is not None else read_mem_available()
    measured = available is not None
    available = available if measured else FALLBACK_AVAILABLE_BYTES
    cap = int(available * KV_AUTO_MEMORY_SHARE) // bytes_per_block
    num_blocks = max(blocks_per_seq, min(wanted, cap))
    need = (f"auto: max_num_seqs {max_num_seqs} x max_model_len {max_model_len} tokens needs "
            f"{wanted * bytes_per_block / (1 << 20):.1f} MiB")
    where = (f"{KV_AUTO_MEMORY_SHARE:.0%} of MemAvailable {available / (1 << 30):.2f} GiB" if measured
             else f"{KV_AUTO_MEMORY_SHARE:.0%} of an assumed {available >> 30} GiB (no /proc/meminfo)")
    if num_blocks == wanted:
        source = f"{need} (within {where})"
    elif num_blocks == cap:
        source = f"{need}, capped at {where}"
    else:
        source = f"{need}; {where} is less than one sequence, so one max_model_len sequence"
    return KVCachePlan(num_blocks, block_size, bytes_per_block, source)


def lazily_zeroed(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor whose memory is an anonymous mapping: the kernel maps a page (zeroed) when it
    is first touched, so nothing is resident until used. torch.zeros would write every page now;
    torch.empty of a small size may reuse dirty heap memory, and unwritten slots must read as
    finite numbers (padding rows of a decode batch read them, masked)."""
    num_bytes = dtype.itemsize
    for dim in shape:
        num_bytes *= dim
    buffer = mmap.mmap(-1, max(num_bytes, 1))  # MAP_PRIVATE | MAP_ANONYMOUS; the tensor keeps it alive
    return torch.frombuffer(buffer, dtype=torch.uint8)[:num_bytes].view(dtype).view(shape)
