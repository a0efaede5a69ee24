"""Supervision of the engine process: `kill -9` of the child is answered by a new child, with the
same heads; every request that had not finished completes (continued from the tokens it had),
requests sent meanwhile wait for it, and a request that kills the engine twice fails alone."""

import asyncio
import os
import signal
import time

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.engine.client.process_engine import EngineRestartedError, ProcessEngine
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.models.heads import ClassifyHead
from tests.conftest import make_engine

LONG = SamplingParams(temperature=0.0, max_tokens=120, ignore_eos=True)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]


class KillerHead(ClassifyHead):
    """A head that kills the process it runs in, as a segfault in native code would."""

    def forward(self, pooled):
        os.kill(os.getpid(), signal.SIGKILL)


def expected_tokens(folder) -> list[list[int]]:
    engine = make_engine(folder)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(prompt, LONG, str(i))
    finals = {}
    while engine.has_unfinished_requests():
        finals.update({o.req_id: o for o in engine.step() if o.finished})
    return [finals[str(i)].token_ids for i in range(len(PROMPTS))]


@pytest.fixture
def engine(tiny_llama):
    engine = ProcessEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32", kv_cache_memory="16MiB",
                                                    max_num_seqs=8))
    yield engine
    engine.stop()


@pytest.mark.timeout(120)
def test_a_killed_engine_process_is_replaced_and_no_request_is_lost(engine, tiny_llama):
    torch.manual_seed(0)
    engine.register_head("topic", ClassifyHead(engine.info.hidden_size, 3))
    first_pid = engine.pid
    seen_restarting = []

    async def run():
        streams = [engine.generate(prompt, LONG) for prompt in PROMPTS]
        outputs = [[] for _ in streams]

        async def consume(i):
            async for out in streams[i]:
                outputs[i].append(out)

        tasks = [asyncio.create_task(consume(i)) for i in range(len(streams))]
        while not all(len(o) >= 3 for o in outputs):  # every request has streamed some tokens
            await asyncio.sleep(0.001)
        os.kill(first_pid, signal.SIGKILL)
        while not engine.is_restarting:
            await asyncio.sleep(0.01)
        seen_restarting.append((engine.is_running, engine.is_accepting))
        late = asyncio.create_task(_last(engine.generate([20, 21, 22], PoolingParams("classify"), task="topic")))
        await asyncio.gather(*tasks)
        return outputs, await late

    started = time.monotonic()
    outputs, late = asyncio.run(run())
    assert seen_restarting == [(False, True)]  # /health 503 while restarting, requests still taken
    assert engine.is_running and engine.pid != first_pid and engine.num_restarts == 1
    assert time.monotonic() - started < 60
    for outs, want in zip(outputs, expected_tokens(tiny_llama[0])):
        final = outs[-1]
        assert final.finished and final.finish_reason == "length" and final.error is None
        assert final.token_ids == want  # greedy: continuing from the tokens it had changes nothing
        assert [t for o in outs for t in o.new_token_ids] == want  # no token twice, none missing
        assert final.text == "".join(o.new_text for o in outs)
    assert late.finish_reason == "stop" and len(late.pooled) == 3  # the head was registered again
    stats = engine.stats()
    assert stats.num_unfinished == 0 and stats.num_free_blocks == stats.num_blocks


@pytest.mark.timeout(120)
def test_a_request_that_kills_the_engine_twice_fails_alone(engine):
    engine.register_head("killer", KillerHead(engine.info.hidden_size, 3))

    async def poisoned():
        return await _last(engine.generate([1, 2, 3], PoolingParams("classify"), task="killer"))

    with pytest.raises(EngineRestartedError, match="second time"):
        asyncio.run(poisoned())
    deadline = time.monotonic() + 60
    while not engine.is_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.num_restarts == 2 and engine.is_running

    async def fine():
        return await _last(engine.generate([4, 5, 6], SamplingParams(temperature=0.0, max_tokens=4)))

    assert asyncio.run(fine()).finish_reason in ("length", "stop")


async def _last(stream):
    out = None
    async for out in stream:
        pass
    return out


@pytest.mark.timeout(120)
def test_over_http_streams_finish_health_recovers_and_metrics_count_the_restart(tiny_llama):
    import httpx
    import openai

    from tests.server.conftest import MODEL, running_server

    with running_server(tiny_llama[0], "process") as (url, app):
        engine = app.state.server.registry.backbones[MODEL].engine
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)

        async def stream(prompt: str) -> tuple[list[str], str | None]:
            chunks, reason = [], None
            response = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=100, temperature=0,
                                                       stream=True, extra_body={"ignore_eos": True})
            async for chunk in response:
                chunks.append(chunk.choices[0].text)
                reason = chunk.choices[0].finish_reason or reason
            return chunks, reason

        async def run():
            tasks = [asyncio.create_task(stream(p)) for p in ("one", "two two", "three three three")]
            while engine.stats().num_running < 3:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            killed_at = time.monotonic()
            os.kill(engine.pid, signal.SIGKILL)
            async with httpx.AsyncClient(base_url=url) as http:
                while (await http.get("/health")).status_code == 200:  # until it sees the death
                    await asyncio.sleep(0.01)
                health = (await http.get("/health")).json()
                while (await http.get("/health")).status_code != 200:
                    await asyncio.sleep(0.05)
                recovered_s = time.monotonic() - killed_at
                metrics = (await http.get("/metrics")).text
            return await asyncio.gather(*tasks), health, recovered_s, metrics

        results, health, recovered_s, metrics = asyncio.run(run())
        assert health["status"] == "restarting"
        assert recovered_s < 30, recovered_s  # the tiny model: a fresh interpreter and torch import
        assert f'polyhead_engine_restarts_total{{backbone="{MODEL}"}} 1.0' in metrics
        for chunks, reason in results:
            assert reason == "length" and len(chunks) >= 2
