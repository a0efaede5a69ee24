"""Tool calling on the real default model, whose chat template takes no tools: the tools reach it
in a system message (docs/tools.md), a named choice makes it call the tool with sensible arguments,
whole and streamed, and the call and the tool's reply go back as text turns."""

import json

import openai
import pytest

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.models.registry import DEFAULT_MODEL
from polyhead.server.app import ServerSettings, build_app
from polyhead.server.tools import TOOLS_SYSTEM_PROMPT
from tests.conftest import serve_in_thread
from tests.server.tool_fixtures import TIME_TOOL, WEATHER_TOOL, streamed_calls

pytestmark = pytest.mark.model

TOOLS = [WEATHER_TOOL, TIME_TOOL]
QUESTION = [{"role": "user", "content": "What is the weather like in Paris right now? Use celsius."}]


@pytest.fixture(scope="module")
def served():
    engine = AsyncEngine.from_config(EngineConfig(model=DEFAULT_MODEL, dtype="float32", kv_cache_memory="256MiB"))
    app = build_app(engine, ServerSettings(model_names=[DEFAULT_MODEL]))
    with serve_in_thread(app, start_timeout_s=120) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0), app


def prompt_tokens(app, messages) -> int:
    tokenizer = app.state.server.tokenizer
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def test_named_choice_calls_the_tool_with_sensible_arguments_whole_and_streamed(served):
    client, app = served
    kwargs = {"model": DEFAULT_MODEL, "messages": QUESTION, "tools": TOOLS, "temperature": 0, "max_tokens": 60,
              "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    whole = client.chat.completions.create(**kwargs)
    choice = whole.choices[0]
    [call] = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    system = TOOLS_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t) for t in TOOLS))
    assert whole.usage.prompt_tokens == prompt_tokens(app, [{"role": "system", "content": system}, *QUESTION])

    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert [(c["name"], c["arguments"]) for c in streamed_calls(chunks)] == [("get_weather", call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    reply = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22, "sky": "sunny"}'}
    answer = client.chat.completions.create(model=DEFAULT_MODEL, temperature=0, max_tokens=8, tools=TOOLS,
                                            tool_choice="none",
                                            messages=[*QUESTION, choice.message.model_dump(exclude_none=True), reply])
    as_text = [*QUESTION, {"role": "assistant", "content": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>')},
        {"role": "user", "content": f"<tool_response>\n{reply['content']}\n</tool_response>"}]
    assert answer.usage.prompt_tokens == prompt_tokens(app, as_text)  # none: no tools shown, the history as text
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
