"""AsyncEngine built on its own loop thread: errors surface on the caller, requests stream."""

import asyncio

import pytest

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.core.params import SamplingParams


def test_from_config_builds_on_the_loop_thread_and_serves(tiny_llama):
    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32", kv_cache_memory="16MiB"))
    try:
        assert engine.is_running and engine._thread.name == "polyhead-engine"

        async def collect():
            params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
            return [o async for o in engine.generate([1, 2, 3], params)]

        outputs = asyncio.run(collect())
        assert outputs[-1].finished and len(outputs[-1].token_ids) == 5
        with pytest.raises(ValueError, match="prompt is empty"):
            engine.generate([], SamplingParams())
    finally:
        engine.stop()
    assert not engine.is_running


def test_from_config_raises_load_errors_on_the_caller():
    with pytest.raises(ValueError, match="not found"):
        AsyncEngine.from_config(EngineConfig(model="/no/such/model"))
