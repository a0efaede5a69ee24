"""A tiny Qwen2-architecture model whose tokenizer carries Qwen2.5's chat template, the one that
renders `tools`, the assistant's `<tool_call>` blocks and `tool` replies; tools to offer it; and a
live server around it in either engine mode."""

import json
from contextlib import contextmanager

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.client.process_engine import ProcessEngine
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import make_engine, make_tiny_model, serve_in_thread, tiny_tokenizer
from tests.server.conftest import MODEL

# The byte-level tiny tokenizer spends a token per character, and Qwen2.5's tool prompt alone is
# about 900 characters: the tiny model's context is raised (its rotary positions have no table).
MAX_MODEL_LEN = 2048

# Qwen2.5-Instruct's chat template (tokenizer_config.json), as published.
QWEN25_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
                   "required": ["zone"], "additionalProperties": False}}}


def qwen_tools_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = QWEN25_TEMPLATE
    return tokenizer


def make_tiny_qwen_with_tools(folder):
    """A tiny random Qwen2 model saved with a tokenizer whose template takes tools."""
    make_tiny_model(folder, "qwen2")
    qwen_tools_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": MAX_MODEL_LEN}))
    return folder


@contextmanager
def tools_server(folder, mode: str = "thread"):
    """The base URL of a server around the model in `folder`, its engine stepping on a thread or in a child."""
    if mode == "process":
        engine = ProcessEngine.from_config(EngineConfig(model=str(folder), dtype="float32", kv_cache_memory="16MiB",
                                                        max_model_len=MAX_MODEL_LEN))
    else:
        engine = AsyncEngine(make_engine(folder, max_model_len=MAX_MODEL_LEN))
    app = build_app(engine, ServerSettings(model_names=[MODEL], default_max_tokens=16))
    with serve_in_thread(app, start_timeout_s=60) as url:
        yield url


def streamed_calls(chunks, choice_index: int = 0) -> list[dict]:
    """A choice's tool calls put together from streamed chunks, as OpenAI documents it: a call's first
    delta has its index, id and name, the later ones more arguments for that index."""
    calls: list[dict] = []
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in (choice.delta.tool_calls or []) if choice.index == choice_index else []:
                if delta.id is not None:
                    assert delta.index == len(calls) and delta.type == "function"
                    calls.append({"id": delta.id, "name": delta.function.name, "arguments": ""})
                calls[delta.index]["arguments"] += delta.function.arguments or ""
    return calls
