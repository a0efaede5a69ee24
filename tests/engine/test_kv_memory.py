"""The KV cache's size (kv_cache_memory: auto or explicit) and its memory: reserved, not touched."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.engine.core.params import SamplingParams
from polyhead.engine.decoder.kv_memory import (
    KV_AUTO_MEMORY_SHARE,
    kv_bytes_per_token,
    lazily_zeroed,
    plan_kv_cache,
    read_mem_available,
)
from tests.conftest import make_engine

REPO = Path(__file__).resolve().parents[2]
# the tiny model (tests/conftest.py): 2 layers, 2 KV heads of 16, context 256; float32
TINY_BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4  # layers x (k, v) x kv_heads x head_dim x itemsize = 512
GIB = 1 << 30


def test_auto_is_max_num_seqs_sequences_of_max_model_len_tokens(tiny_llama):
    assert kv_bytes_per_token(2, 2, 16, torch.float32) == TINY_BYTES_PER_TOKEN
    engine = make_engine(tiny_llama[0], kv_cache_memory="auto", max_num_seqs=3)
    plan = engine.backend.kv_cache_plan
    assert plan.num_bytes == 3 * 256 * TINY_BYTES_PER_TOKEN  # 3 x the model's context of 256 tokens
    backend = engine.backend
    assert backend.runner.kv_cache.nbytes == plan.num_bytes and backend.kv_cache.num_blocks == 3 * 256 // 16
    assert engine.backend.max_model_len == 256 and "max_num_seqs 3 x max_model_len 256" in plan.describe()
    # a shorter max_model_len shrinks it; a partial block per sequence is rounded up to a whole block
    engine = make_engine(tiny_llama[0], kv_cache_memory="auto", max_num_seqs=2, max_model_len=40)
    backend = engine.backend
    assert backend.kv_cache_plan.num_bytes == 2 * 48 * TINY_BYTES_PER_TOKEN and backend.max_model_len == 40
    assert EngineConfig().kv_cache_memory == "auto"  # the default


def test_auto_is_capped_by_available_memory_but_never_below_one_sequence(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    4194304 kB\n")
    available = read_mem_available(meminfo)
    assert available == 4 * GIB and read_mem_available(tmp_path / "absent") is None
    bytes_per_block = 16 * 23040  # the default model in bfloat16: 30 layers x 2 x 3 KV heads x 64 x 2 bytes
    # 128 x 8192 tokens would be 23 GiB: the cap is the share of MemAvailable
    plan = plan_kv_cache("auto", bytes_per_block, 16, 128, 8192, mem_available=available)
    assert plan.num_blocks == int(available * KV_AUTO_MEMORY_SHARE) // bytes_per_block
    assert plan.num_bytes <= available * KV_AUTO_MEMORY_SHARE
    assert "capped at 25% of MemAvailable 4.00 GiB" in plan.source
    # within the cap: exactly what max_num_seqs x max_model_len needs
    plan = plan_kv_cache("auto", bytes_per_block, 16, 4, 512, mem_available=available)
    assert plan.num_bytes == 4 * 512 * 23040 and "within" in plan.source
    # a machine too small for even one sequence under the cap still gets one
    plan = plan_kv_cache("auto", bytes_per_block, 16, 128, 8192, mem_available=100 << 20)
    assert plan.num_tokens == 8192 and "one max_model_len sequence" in plan.source


def test_explicit_sizes_are_honoured_and_errors_name_the_field(tiny_llama):
    engine = make_engine(tiny_llama[0], kv_cache_memory="64KiB", block_size=16)
    assert engine.backend.kv_cache.num_blocks == (64 << 10) // (16 * TINY_BYTES_PER_TOKEN) == 8
    # below the context: capacity rules
    assert engine.backend.kv_capacity_tokens == 128 and engine.backend.max_model_len == 128
    assert make_engine(tiny_llama[0], kv_cache_memory=3 * 8192 + 5).backend.kv_cache.num_blocks == 3
    with pytest.raises(ValueError, match=r"kv_cache_memory \(1024 bytes\) is below one KV block \(8192 bytes"):
        make_engine(tiny_llama[0], kv_cache_memory="1KiB")
    with pytest.raises(ValueError, match="kv_cache_memory must be auto, a byte count or a size like 512MiB"):
        EngineConfig(kv_cache_memory="lots")
    with pytest.raises(ValueError, match="kv_cache_memory must be > 0 bytes"):
        EngineConfig(kv_cache_memory=0)


def test_lazily_zeroed_reads_zero_and_keeps_its_memory():
    cache = lazily_zeroed((2, 3, 5), torch.bfloat16)
    assert cache.shape == (2, 3, 5) and cache.dtype == torch.bfloat16 and cache.is_contiguous()
    assert not cache.any()
    cache[1, 2] = 7.0
    assert float(cache.sum()) == 35.0


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_large_cache_is_not_touched_when_the_engine_is_built_nor_by_a_request(tiny_llama):
    # In a fresh process, so the readings are this engine's alone: a 1 GiB cache, nothing resident
    # until used (torch.zeros would have made all of it resident).
    out = _run_python(f"""
        import torch
        from polyhead.config import EngineConfig
        from polyhead.engine.core.engine import Engine
        from polyhead.engine.decoder.backend import DecoderBackend
        from polyhead.engine.core.params import SamplingParams
        from polyhead.models.loader import load_model

        def rss():
            status = open("/proc/self/status").read()
            return int(status.split("VmRSS:")[1].split()[0]) * 1024

        config = EngineConfig(model={str(tiny_llama[0])!r}, dtype="float32", kv_cache_memory="1GiB")
        loaded = load_model(config.model, torch.float32)
        before = rss()
        engine = Engine(DecoderBackend(config, loaded))
        built = rss()
        engine.add_request([1, 2, 3], SamplingParams(max_tokens=8, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        print(engine.backend.runner.kv_cache.nbytes, built - before, rss() - before)
    """)
    nbytes, grown_built, grown_served = map(int, out.split())
    assert nbytes >= GIB - (1 << 20)
    assert grown_built < 64 << 20 and grown_served < 64 << 20, (grown_built, grown_served)


def test_the_engine_process_does_not_touch_its_cache(tiny_llama):
    from polyhead.engine.client.process_engine import ProcessEngine

    engine = ProcessEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                    kv_cache_memory="2GiB"))
    try:
        summary = engine.info.kv_cache_summary
        assert "2048.0 MiB reserved" in summary and "kv_cache_memory=" in summary
        status = Path(f"/proc/{engine.pid}/status").read_text()
        rss = int(status.split("VmRSS:")[1].split()[0]) * 1024
        assert rss < GIB, rss  # torch and transformers are ~0.4 GB here; a touched cache alone 2 GiB
    finally:
        engine.stop()


def _serve_one_at_a_time(engine, num_requests: int) -> set[int]:
    """Each request a different 5-token prompt and 6 new tokens (11 tokens: 3 blocks of 4); the block
    ids any request held."""
    seen = set()
    for i in range(num_requests):
        engine.add_request([1 + i, 2, 3, 4, 5], SamplingParams(max_tokens=6, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
            seen.update(b for r in engine.backend.scheduler.running for b in r.block_ids)
    return seen


def test_a_lightly_loaded_engine_keeps_to_the_lowest_blocks(tiny_llama):
    # 512 blocks; the cache's pages are committed as blocks are touched, so low ids first matters
    off = make_engine(tiny_llama[0], kv_cache_memory="1MiB", block_size=4, enable_prefix_caching=False)
    assert _serve_one_at_a_time(off, 20) == {0, 1, 2}  # the same three blocks every time
    # with prefix caching each finished prompt's 2 full blocks stay cached (evicted LRU only when no
    # other block is free), and its partial tail block is the next request's first
    on = make_engine(tiny_llama[0], kv_cache_memory="1MiB", block_size=4)
    assert _serve_one_at_a_time(on, 20) == set(range(2 * 20 + 1))
