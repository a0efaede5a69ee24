"""A constrained request that was generating when its engine thread died continues in the new engine
with its grammar past the output it had: the whole reply is the one an undisturbed engine gives."""

import asyncio
import re

import pytest

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.core.params import SamplingParams, StructuredOutput
from tests.conftest import make_engine
from tests.engine.test_pooling import finish
from tests.reliability.test_thread_engine_restart import die_once, fast_restarts  # noqa: F401 - a fixture

# a list that can go on: ignore_eos keeps it going until max_tokens
PARAMS = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True,
                        structured=StructuredOutput("grammar", 'start: "[" NUM (", " NUM)*\nNUM: /[0-9]{1,3}/'))
PROMPTS = [[1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.timeout(120)
def test_a_constrained_request_continues_its_grammar_after_a_restart(tiny_llama, fast_restarts):  # noqa: F811
    reference = make_engine(tiny_llama[0])
    for i, prompt in enumerate(PROMPTS):
        reference.add_request(prompt, PARAMS, req_id=str(i))
    expected = {req_id: out.token_ids for req_id, out in finish(reference).items()}
    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32", kv_cache_memory="16MiB"))

    async def run():
        streams = [engine.generate(prompt, PARAMS) for prompt in PROMPTS]
        outputs = [[] for _ in streams]

        async def consume(i):
            async for out in streams[i]:
                outputs[i].append(out)

        tasks = [asyncio.create_task(consume(i)) for i in range(len(streams))]
        while not all(len(o) >= 5 for o in outputs):  # every request is some tokens into its grammar
            await asyncio.sleep(0.001)
        die_once(engine.engine)
        await asyncio.gather(*tasks)
        return [o[-1] for o in outputs]

    try:
        finals = asyncio.run(run())
    finally:
        engine.stop()
    assert engine.num_restarts == 1
    for i, final in enumerate(finals):
        assert final.token_ids == expected[str(i)] and final.finish_reason == "length"
        assert re.fullmatch(r"\[[0-9]{1,3}(, [0-9]{1,3})*(, ?)?", final.text), final.text
