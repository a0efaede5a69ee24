"""ProcessEngine: the engine in a child process, driven over pipes from this one."""

import asyncio
import os

import pytest

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.client.engine_client import EngineDeadError
from polyhead.engine.client.process_engine import ProcessEngine
from polyhead.engine.core.params import SamplingParams
from tests.conftest import make_engine


def test_serves_like_the_engine_from_a_child_process(tiny_llama):
    engine = ProcessEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                    kv_cache_memory="16MiB"))
    try:
        assert engine.is_running and engine.pid != os.getpid()
        seen = []
        engine.on_step = seen.append

        async def collect():
            greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=1)
            stop = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, stop=["zz"])
            outs = await asyncio.gather(*(_all(engine.generate(p, greedy)) for p in ([1, 2, 3], "hello")))
            return outs, await _all(engine.generate("hello", stop))

        (ids_run, text_run), stop_run = asyncio.run(collect())
        final = text_run[-1]
        assert final.finished and len(final.token_ids) == 6 and final.prompt == "hello"
        assert final.token_ids == [t for o in text_run for t in o.new_token_ids]
        assert final.text == "".join(o.new_text for o in text_run) and len(final.logprobs) == 6
        assert ids_run[-1].prompt is None and ids_run[-1].prompt_token_ids == [1, 2, 3]
        assert stop_run[-1].finished and seen and all(n >= 1 for n in seen)
        stats = engine.stats()
        assert stats.num_unfinished == 0 and stats.num_free_blocks == stats.num_blocks
        with pytest.raises(ValueError, match="prompt is empty"):
            engine.generate([], SamplingParams())
        with pytest.raises(ValueError, match="max_model_len"):
            engine.check_fits(10, 10**6)
    finally:
        engine.stop()
    assert not engine.is_running
    with pytest.raises(EngineDeadError, match="stopped"):
        engine.generate([1], SamplingParams())


def test_outputs_match_the_in_process_engine(tiny_llama):
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=12, ignore_eos=True)
    expected = make_engine(tiny_llama[0])
    expected.add_request("the same prompt", params, "r")
    while expected.has_unfinished_requests():
        done = [o for o in expected.step() if o.finished]
    engine = ProcessEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                    kv_cache_memory="16MiB"))
    try:
        async def run():
            return await _all(engine.generate("the same prompt", params))

        got = asyncio.run(run())[-1]
    finally:
        engine.stop()
    assert got.token_ids == done[0].token_ids and got.text == done[0].text


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_duplicate_request_id_is_refused_before_queueing(tiny_llama, mode):
    config = EngineConfig(model=str(tiny_llama[0]), dtype="float32", kv_cache_memory="16MiB")
    engine = (ProcessEngine if mode == "process" else AsyncEngine).from_config(config)
    try:
        async def twice():
            params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
            first = engine.stream(engine.prepare([1, 2], params, "same"))
            with pytest.raises(ValueError, match="already in use"):
                engine.stream(engine.prepare([1, 2], params, "same"))
            return await _all(first)

        outputs = asyncio.run(asyncio.wait_for(twice(), 30))
    finally:
        engine.stop()
    assert outputs[-1].finished and len(outputs[-1].token_ids) == 20 and engine.num_queued == 0


def test_load_errors_are_raised_on_the_caller():
    with pytest.raises(ValueError, match="not found"):
        ProcessEngine.from_config(EngineConfig(model="/no/such/model"))


async def _all(stream) -> list:
    return [output async for output in stream]


def test_heads_and_adapters_register_in_the_child_and_requests_are_checked_here(tiny_llama, tmp_path):
    """Registration is answered by the child (its errors raised here); a request naming an unknown
    head or adapter is refused in this process, and pooling results come back over the pipe equal
    to the in-process engine's."""
    import torch

    from polyhead.engine.core.params import PoolingParams
    from polyhead.models.heads import ClassifyHead
    from tests.lora.conftest import make_adapter

    torch.manual_seed(0)
    head = ClassifyHead(64, 3)
    make_adapter(tiny_llama[0], tmp_path / "adapter", seed=5, r=4, lora_alpha=8, target_modules=["q_proj"])
    expected = make_engine(tiny_llama[0])
    expected.register_head("sentiment", head)
    expected.add_request("fine weather", PoolingParams(kind="classify"), "r", task="sentiment")
    while expected.has_unfinished_requests():
        done = [o for o in expected.step() if o.finished]
    engine = ProcessEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                    kv_cache_memory="16MiB"))
    try:
        with pytest.raises(ValueError, match="hidden size"):
            engine.register_head("too-wide", ClassifyHead(128, 3))
        with pytest.raises(ValueError, match="adapter_config.json"):
            engine.register_adapter("missing", str(tmp_path / "nowhere"))
        engine.register_head("sentiment", head)
        engine.register_adapter("shout", str(tmp_path / "adapter"))
        assert "too-wide" not in engine.heads and engine.adapters == {"shout"}
        with pytest.raises(ValueError, match=r"no head registered .*known: sentiment"):
            engine.prepare("x", PoolingParams(kind="classify", task="topic"))
        with pytest.raises(ValueError, match=r"adapter 'loud' is not registered \(registered adapters: shout\)"):
            engine.prepare("x", SamplingParams(max_tokens=2), adapter="loud")

        async def run():
            pooled = await _all(engine.generate("fine weather", PoolingParams(kind="classify"), task="sentiment"))
            adapted = await _all(engine.generate("hi", SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
                                                 adapter="shout"))
            return pooled[-1], adapted[-1]

        pooled, adapted = asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        engine.stop()
    torch.testing.assert_close(torch.tensor(pooled.pooled), torch.tensor(done[0].pooled))
    assert adapted.finished and len(adapted.token_ids) == 4


def test_an_encoder_backbone_serves_from_a_child_process_as_on_a_thread(tiny_encoder, tmp_path):
    import torch

    from polyhead.engine.core.params import PoolingParams
    from polyhead.models.heads import ClassifyHead

    config = EngineConfig(model=str(tiny_encoder[0]), dtype="float32")
    expected = AsyncEngine.from_config(config)
    engine = ProcessEngine.from_config(config)
    torch.manual_seed(0)
    head = ClassifyHead(engine.info.hidden_size, 3)
    texts = ["a short one", "a bit longer", "x"]  # the tiny tokenizer: about a token per character
    try:
        assert engine.pid != os.getpid() and not engine.info.is_generative and engine.info.kv_cache_summary is None
        assert engine.info == expected.info and engine.rules == expected.rules
        for client in (expected, engine):
            client.register_head("topic", head)

        async def run(client):
            embed = [_all(client.generate(t, PoolingParams("embed"))) for t in texts]
            classify = [_all(client.generate(t, PoolingParams("classify"), task="topic")) for t in texts]
            return [outs[-1] for outs in await asyncio.gather(*embed, *classify)]

        want, got = asyncio.run(run(expected)), asyncio.run(run(engine))
        for a, b in zip(want, got):
            assert b.finished and b.finish_reason == "stop" and b.prompt_token_ids == a.prompt_token_ids
            torch.testing.assert_close(torch.tensor(b.pooled), torch.tensor(a.pooled), rtol=0, atol=1e-6)
        # checked here by the encoder's rules, before anything crosses to the child
        with pytest.raises(ValueError, match="encoder backbone"):
            engine.generate("hi", SamplingParams())
        with pytest.raises(ValueError, match="serves no LoRA adapters"):
            engine.generate("hi", PoolingParams("embed"), adapter="x")
        with pytest.raises(ValueError, match="max_model_len"):
            engine.generate("word " * 40, PoolingParams("embed"))
        with pytest.raises(ValueError, match="serves no LoRA adapters"):
            engine.register_adapter("x", str(tmp_path))
    finally:
        engine.stop()
        expected.stop()
