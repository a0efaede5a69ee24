"""The native decode attention equals the torch path (gather + matmul) on random paged caches."""

import os
import shutil

import pytest
import torch

from polyhead.kernels import buildable_levels, decode_attention_kernel, kernel_isa
from polyhead.models.attention import AttentionMetadata, build_decode_bias, paged_attention

kernel_missing = decode_attention_kernel(torch.float32) is None


@pytest.mark.skipif(kernel_missing, reason="no C++ compiler: the native kernel is unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sliding_window", [None, 7])
@pytest.mark.parametrize("heads", [(4, 2), (3, 3), (9, 3)])
@pytest.mark.parametrize("head_dim", [16, 64, 128])  # 64 and 128 take the vector paths, 16 the plain loops
@pytest.mark.parametrize("level", buildable_levels())  # every path this CPU can run, narrower ones too
def test_native_decode_matches_torch_path(dtype, sliding_window, heads, head_dim, level):
    num_heads, num_kv_heads = heads
    block, num_blocks = 4, 40
    torch.manual_seed(0)
    lens = [1, 5, 13, 30]  # context lengths, the query token included
    table = torch.randperm(num_blocks)[:32].view(4, 8)  # each row owns 8 scattered blocks
    cache = torch.randn(2, num_kv_heads, num_blocks * block, head_dim).to(dtype)
    q = torch.randn(4, num_heads, head_dim).to(dtype)
    k = torch.randn(4, num_kv_heads, head_dim).to(dtype)
    v = torch.randn(4, num_kv_heads, head_dim).to(dtype)
    slots = torch.tensor([table[i, (n - 1) // block] * block + (n - 1) % block for i, n in enumerate(lens)])
    common = {"slot_mapping": slots, "block_size": block, "num_decode_tokens": 4, "decode_block_table": table,
                  "decode_context_lens": torch.tensor(lens), "prefills": [], "sliding_window": sliding_window}
    torch_meta = AttentionMetadata(
        decode_bias=build_decode_bias(lens, 8 * block, sliding_window, dtype), **common)
    native_meta = AttentionMetadata(decode_bias=None, native_decode=decode_attention_kernel(dtype, level),
                                    num_threads=2, **common)
    expected = paged_attention(q, k, v, cache.clone(), torch_meta, 0.25)
    got = paged_attention(q, k, v, cache.clone(), native_meta, 0.25)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got.float(), expected.float(), **tol)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")
@pytest.mark.parametrize("level", buildable_levels())
def test_each_level_builds_its_own_path(level):
    # with a compiler present, a failed build is a failure here, not a silent skip of the kernel tests
    # a level whose flags silently fell back to another path would test the wrong code
    assert kernel_isa(level) == ("neon" if level == "neon" else level)
