"""Tool calling through a live server and the official openai client, on a tiny random Qwen2 model
whose chat template takes tools (Qwen2.5's): a named or required choice is enforced by the grammar,
so even random weights call the tool with arguments that fit its schema; the calls come back whole
and streamed in OpenAI's shapes, and go back into the template with the tool's reply."""

import json

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, MODES
from tests.server.tool_fixtures import (
    TIME_TOOL,
    WEATHER_TOOL,
    make_tiny_qwen_with_tools,
    qwen_tools_tokenizer,
    streamed_calls,
    tools_server,
)

TOOLS = [WEATHER_TOOL, TIME_TOOL]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    return make_tiny_qwen_with_tools(tmp_path_factory.mktemp("tiny-qwen-tools"))


@pytest.fixture(scope="module")
def thread_url(qwen_folder):
    with tools_server(qwen_folder) as url:
        yield url


@pytest.fixture(scope="module")
def process_url(qwen_folder):
    with tools_server(qwen_folder, "process") as url:
        yield url


@pytest.fixture(params=MODES)
def client(request):
    url = request.getfixturevalue("thread_url" if request.param == "thread" else "process_url")
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)


@pytest.fixture
def thread_client(thread_url):
    return openai.OpenAI(base_url=f"{thread_url}/v1", api_key="unused", timeout=60, max_retries=0)


def fits_weather_schema(arguments: str) -> bool:
    value = json.loads(arguments)
    return (set(value) == {"city", "unit"} and isinstance(value["city"], str) and len(value["city"]) <= 12
            and value["unit"] in ("celsius", "fahrenheit"))


def prompt_tokens(messages, tools=None) -> int:
    return len(qwen_tools_tokenizer().apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                          tokenize=True)["input_ids"])


def test_named_choice_whole_and_streamed_then_the_tool_reply_goes_back(client):
    kwargs = {"model": MODEL, "messages": QUESTION, "tools": TOOLS, "tool_choice": WEATHER, "temperature": 0,
              "max_tokens": 200}
    whole = client.chat.completions.create(**kwargs)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert fits_weather_schema(call.function.arguments)
    assert whole.usage.prompt_tokens == prompt_tokens(QUESTION, TOOLS)

    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    [streamed] = streamed_calls(chunks)
    assert streamed["id"].startswith("call_")
    assert (streamed["name"], streamed["arguments"]) == (call.function.name, call.function.arguments)
    assert sum(bool(d.tool_calls) for d in deltas) > 2  # the arguments came in pieces, as they were written
    assert not "".join(d.content or "" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    history = [*QUESTION, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "22 degrees, sunny"}]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                            temperature=0, max_tokens=4, extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.tool_calls is None
    rendered = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": "get_weather", "arguments": json.loads(call.function.arguments)}}]},
        history[-1]]
    assert answer.usage.prompt_tokens == prompt_tokens(rendered)  # the call and its reply, in Qwen's template


def test_required_without_parallel_calls_makes_exactly_one_call_per_choice(thread_client):
    kwargs = {"model": MODEL, "messages": QUESTION, "tools": TOOLS, "tool_choice": "required",
              "parallel_tool_calls": False, "temperature": 1.0, "seed": 3, "n": 3, "max_tokens": 200}
    outs = thread_client.chat.completions.create(**kwargs)
    chunks = list(thread_client.chat.completions.create(**kwargs, stream=True))
    for choice in outs.choices:  # seeded: each streamed choice is its whole twin
        [streamed] = streamed_calls(chunks, choice.index)
        assert (streamed["name"], streamed["arguments"]) == \
            (choice.message.tool_calls[0].function.name, choice.message.tool_calls[0].function.arguments)
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        if call.function.name == "get_weather":
            assert fits_weather_schema(call.function.arguments)
        else:
            assert call.function.name == "get_time" and set(json.loads(call.function.arguments)) == {"zone"}


def test_required_with_parallel_calls_streams_every_call_with_its_index(thread_client):
    kwargs = {"model": MODEL, "messages": QUESTION, "tools": TOOLS, "tool_choice": "required", "temperature": 1.0,
              "seed": 11, "max_tokens": 400}
    whole = thread_client.chat.completions.create(**kwargs).choices[0]
    chunks = list(thread_client.chat.completions.create(**kwargs, stream=True))
    assert [(c["name"], c["arguments"]) for c in streamed_calls(chunks)] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert whole.finish_reason in ("tool_calls", "length")


def test_auto_shows_the_tools_and_none_hides_them(thread_client):
    kwargs = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 6,
              "extra_body": {"ignore_eos": True}}
    auto = thread_client.chat.completions.create(**kwargs, tools=TOOLS)
    none = thread_client.chat.completions.create(**kwargs, tools=TOOLS, tool_choice="none")
    plain = thread_client.chat.completions.create(**kwargs)
    assert auto.usage.prompt_tokens == prompt_tokens(QUESTION, TOOLS) > none.usage.prompt_tokens
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens == prompt_tokens(QUESTION)
    assert auto.choices[0].finish_reason == "length" and auto.choices[0].message.content  # free text, unparsed


def test_auto_streams_plain_text_unchanged(thread_client):
    kwargs = {"model": MODEL, "messages": QUESTION, "tools": TOOLS, "temperature": 0, "max_tokens": 24,
              "extra_body": {"ignore_eos": True}}
    whole = thread_client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(thread_client.chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_wether"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"\ud800": {}}}}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools.0.function.parameters"),
    ({"tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "strin"}}}}}], "tool_choice": "required"},
     "tools.1.function.parameters"),
    ({"messages": [*QUESTION, {"role": "tool", "content": "22 C"}]}, "messages.1"),
    ({"messages": [{"role": "user"}]}, "messages.0"),
    ({"messages": [*QUESTION, {"role": "assistant", "tool_calls": [{**CALL, "function": {
        "name": "get_weather", "arguments": "{\"city\": \"\ud800\"}"}}]}]}, "messages.1.tool_calls"),
    ({"messages": [*QUESTION, {"role": "assistant", "tool_calls": [{**CALL, "function": {
        "name": "get_weather", "arguments": "{city: Oslo}"}}]}]}, "messages.1.tool_calls.0.function.arguments"),
])
def test_bad_tool_fields_are_400s_naming_the_field(thread_url, extra, param):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, **extra}
    response = httpx.post(f"{thread_url}/v1/chat/completions", content=json.dumps(body),  # escapes the surrogate
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_tool_calls_off_an_assistant_message_are_ignored_and_its_content_may_be_absent(thread_client):
    """As unknown fields are: a user message's tool_calls mean nothing; an assistant's missing content is empty."""
    kwargs = {"model": MODEL, "temperature": 0, "max_tokens": 2}
    odd = thread_client.chat.completions.create(**kwargs, messages=[
        {"role": "user", "content": "hi", "tool_calls": [CALL]}, {"role": "assistant"}, *QUESTION])
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}, *QUESTION]
    assert odd.usage.prompt_tokens == prompt_tokens(plain)
