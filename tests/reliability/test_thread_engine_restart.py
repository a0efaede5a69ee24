"""Supervision of the engine thread (`--engine-mode thread`): when the step loop dies, an AsyncEngine
built from a config builds a new engine on the same thread, registers the same heads, and every
request that had not finished completes (continued from the tokens it had); requests sent meanwhile
wait; a crash loop or failing restarts fail everyone with EngineDeadError instead of hanging them."""

import asyncio
import time

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.engine.client import async_engine as async_engine_module
from polyhead.engine.client import supervision
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.client.engine_client import EngineDeadError
from polyhead.engine.client.supervision import EngineRestartedError
from polyhead.engine.core.engine import Engine
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.models.heads import ClassifyHead
from tests.reliability.test_engine_restart import LONG, PROMPTS, _last, expected_tokens


class LoopBug(BaseException):
    """An error no step handler catches: what escapes to the loop itself."""


def die_once(engine: Engine) -> list:
    """Make the engine's next step kill the loop; the engine built after it steps normally."""
    deaths = []

    def step():
        deaths.append(time.monotonic())
        raise LoopBug("injected")

    engine.step = step
    return deaths


@pytest.fixture
def fast_restarts(monkeypatch):
    monkeypatch.setattr(supervision, "RESTART_BACKOFF_S", (0.2, 0.05))


@pytest.fixture
def engine(tiny_llama, fast_restarts):
    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                  kv_cache_memory="16MiB", max_num_seqs=8))
    yield engine
    engine.stop()


@pytest.mark.timeout(120)
def test_a_dead_loop_is_replaced_and_no_request_is_lost(engine, tiny_llama):
    torch.manual_seed(0)
    engine.register_head("topic", ClassifyHead(engine.info.hidden_size, 3))
    first_engine, seen_restarting = engine.engine, []

    async def run():
        streams = [engine.generate(prompt, LONG) for prompt in PROMPTS]
        outputs = [[] for _ in streams]

        async def consume(i):
            async for out in streams[i]:
                outputs[i].append(out)

        tasks = [asyncio.create_task(consume(i)) for i in range(len(streams))]
        while not all(len(o) >= 3 for o in outputs):  # every request has streamed some tokens
            await asyncio.sleep(0.001)
        die_once(first_engine)
        while not engine.is_restarting:
            await asyncio.sleep(0.005)
        seen_restarting.append((engine.is_running, engine.is_accepting, engine.stats().num_running))
        late = asyncio.create_task(_last(engine.generate([20, 21, 22], PoolingParams("classify"), task="topic")))
        await asyncio.gather(*tasks)
        return outputs, await late

    outputs, late = asyncio.run(run())
    assert seen_restarting == [(False, True, 0)]  # /health 503 while restarting, requests still taken
    assert engine.is_running and engine.engine is not first_engine and engine.num_restarts == 1
    assert engine.num_in_flight == 0
    for outs, want in zip(outputs, expected_tokens(tiny_llama[0])):
        final = outs[-1]
        assert final.finished and final.finish_reason == "length" and final.error is None
        assert final.token_ids == want  # greedy: continuing from the tokens it had changes nothing
        assert [t for o in outs for t in o.new_token_ids] == want  # no token twice, none missing
        assert final.text == "".join(o.new_text for o in outs)
        assert final.prompt_token_ids == PROMPTS[outputs.index(outs)]  # its own prompt, not the continuation's
    assert late.finish_reason == "stop" and len(late.pooled) == 3  # the head was registered again
    stats = engine.stats()
    assert stats.num_unfinished == 0 and stats.num_free_blocks == stats.num_blocks


@pytest.mark.timeout(120)
def test_a_request_in_two_deaths_fails_alone(engine):
    async def run():
        stream = engine.generate([1, 2, 3], LONG)
        first = await anext(stream)
        die_once(engine.engine)
        while engine.num_restarts < 1:
            await asyncio.sleep(0.005)
        die_once(engine.engine)
        with pytest.raises(EngineRestartedError, match="second time"):
            async for _ in stream:
                pass
        return first

    assert len(asyncio.run(run()).token_ids) == 1
    deadline = time.monotonic() + 30
    while not engine.is_running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.num_restarts == 2

    async def fine():
        return await _last(engine.generate([4, 5, 6], LONG))

    fine = asyncio.run(fine())
    assert fine.finish_reason == "length" and len(fine.token_ids) == LONG.max_tokens


@pytest.mark.timeout(120)
def test_a_request_left_before_the_death_is_not_run_again(engine):
    short = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

    async def run():
        left, other = engine.generate([1, 2, 3], LONG), engine.generate([4, 5, 6], short)
        await anext(left)
        die_once(engine.engine)
        await left.aclose()  # the client went away: its abort reaches the loop with the next step, which dies
        return await _last(other)

    assert len(asyncio.run(run()).token_ids) == 8 and engine.num_restarts == 1
    assert engine.stats().num_unfinished == 0 and engine.num_in_flight == 0


@pytest.mark.timeout(120)
def test_a_crash_loop_gives_up_and_fails_streams_not_hangs(engine, monkeypatch):
    monkeypatch.setattr(supervision, "MAX_RESTARTS_IN_WINDOW", 1)
    monkeypatch.setattr(Engine, "step", lambda self: (_ for _ in ()).throw(LoopBug("always")))

    async def run():
        return await asyncio.wait_for(_last(engine.generate([1, 2, 3], LONG)), 30)

    with pytest.raises(EngineDeadError, match="died 2 times") as raised:
        asyncio.run(run())
    assert type(raised.value) is EngineDeadError and engine.num_restarts == 1
    assert not engine.is_accepting and not engine.is_restarting
    with pytest.raises(EngineDeadError):
        engine.prepare([1, 2], LONG)


@pytest.mark.timeout(120)
def test_restarts_that_fail_give_up(engine, monkeypatch):
    def no_engine(config):
        raise RuntimeError("no memory")

    monkeypatch.setattr(async_engine_module, "build_engine", no_engine)

    async def run():
        stream = engine.generate([1, 2, 3], LONG)
        await anext(stream)
        die_once(engine.engine)
        return await asyncio.wait_for(_last(stream), 30)

    with pytest.raises(EngineDeadError, match="2 restarts failed"):
        asyncio.run(run())
    assert not engine.is_accepting and engine.num_restarts == 0


@pytest.mark.timeout(60)
def test_an_engine_not_built_from_a_config_stays_dead(tiny_llama):
    from tests.conftest import make_engine

    engine = AsyncEngine(make_engine(tiny_llama[0])).start()
    try:
        async def run():
            stream = engine.generate([1, 2, 3], LONG)
            await anext(stream)
            die_once(engine.engine)
            return await asyncio.wait_for(_last(stream), 30)

        with pytest.raises(EngineDeadError, match="the engine loop died: LoopBug: injected"):
            asyncio.run(run())
        assert not engine.is_accepting and engine.num_restarts == 0
    finally:
        engine.stop()


TEXTS = ["the cat sat on the mat", "a dog runs fast", "hello world", "the dogs sat", "cats running"]


@pytest.mark.timeout(120)
def test_embed_requests_on_an_encoder_survive_a_dead_loop(tiny_encoder, fast_restarts):
    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_encoder[0]), dtype="float32"))

    async def embed_all():
        return await asyncio.gather(*(_last(engine.generate(t, PoolingParams(kind="embed"))) for t in TEXTS))

    try:
        want = asyncio.run(embed_all())
        deaths = die_once(engine.engine)
        got = asyncio.run(embed_all())
        assert len(deaths) == 1 and engine.num_restarts == 1
    finally:
        engine.stop()
    for w, g in zip(want, got):
        assert g.prompt == w.prompt and g.finish_reason == "stop"
        torch.testing.assert_close(torch.tensor(g.pooled), torch.tensor(w.pooled))


@pytest.mark.timeout(120)
def test_over_http_streams_finish_health_says_restarting_and_metrics_count_it(tiny_llama, fast_restarts):
    import httpx
    import openai

    from polyhead.server.app import ServerSettings, build_app
    from tests.conftest import serve_in_thread
    from tests.server.conftest import MODEL

    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                  kv_cache_memory="16MiB", max_model_len=128))
    app = build_app(engine, ServerSettings(model_names=[MODEL], default_max_tokens=8))
    try:
        with serve_in_thread(app, start_timeout_s=60) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)

            async def stream(prompt: str) -> tuple[list[str], str | None]:
                chunks, reason = [], None
                response = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=60, temperature=0,
                                                           stream=True, extra_body={"ignore_eos": True})
                async for chunk in response:
                    chunks.append(chunk.choices[0].text)
                    reason = chunk.choices[0].finish_reason or reason
                return chunks, reason

            async def run():
                tasks = [asyncio.create_task(stream(p)) for p in ("one", "two two", "three three three")]
                while engine.stats().num_running < 3:
                    await asyncio.sleep(0.005)
                die_once(engine.engine)
                async with httpx.AsyncClient(base_url=url) as http:
                    while (health := await http.get("/health")).status_code == 200:  # until it sees the death
                        await asyncio.sleep(0.005)
                    while (await http.get("/health")).status_code != 200:
                        await asyncio.sleep(0.02)
                    metrics = (await http.get("/metrics")).text
                return await asyncio.gather(*tasks), health.json(), metrics

            results, health, metrics = asyncio.run(run())
    finally:
        engine.stop()
    assert health["status"] == "restarting"
    assert f'polyhead_engine_restarts_total{{backbone="{MODEL}"}} 1.0' in metrics
    for chunks, reason in results:
        assert reason == "length" and len("".join(chunks)) > 0
