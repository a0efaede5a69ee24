"""TextTokenizer (the HTTP process's tokenizer, without transformers) gives the ids, offsets,
decoded text and rendered chat prompts transformers gives, for every kind of tokenizer served."""

import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from polyhead.models.loader import gguf_to_hf_folder
from polyhead.models.registry import resolve_model_path, transformer_module_path
from polyhead.models.text_tokenizer import TextTokenizer
from tests.conftest import make_tiny_encoder, tiny_tokenizer

TEXTS = ["Hello, world!", "  two  spaces and\ttabs\n", "héllo wörld — ünïcode ✓", "emoji 🧪🚀 and 中文字符",
         "<|im_start|>user\nspecial tokens in text<|im_end|>", "", "a" * 300]

# Qwen2.5's tool-calling template, shortened: tools in the system turn, calls and tool results as tags
QWEN_TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}You are a helpful assistant.{% endif %}\n\n# Tools\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n{% if message.content %}{{ message.content }}"
    "{% endif %}{% for call in message.tool_calls or [] %}\n<tool_call>\n"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}\n"
    "</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Say hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? ünïcode 🚀"}],
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city — «now»",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 21}"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tiny = tmp_path_factory.mktemp("tiny-tok")
    tiny_tokenizer().save_pretrained(tiny)
    qwen = tmp_path_factory.mktemp("qwen-tools-tok")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = QWEN_TOOLS_TEMPLATE
    tokenizer.save_pretrained(qwen)
    bert = tmp_path_factory.mktemp("tiny-bert")
    make_tiny_encoder(bert)
    minilm = resolve_model_path("all-MiniLM-L6-v2")
    return {"default": gguf_to_hf_folder(resolve_model_path(None)), "tiny": tiny, "qwen-tools": qwen,
            "bert": bert, "minilm": minilm / transformer_module_path(minilm)}


@pytest.mark.parametrize("name", ["default", "tiny", "qwen-tools", "bert", "minilm"])
def test_ids_offsets_and_text_match_transformers(folders, name):
    ours, theirs = TextTokenizer(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    assert ours.eos_token_id == theirs.eos_token_id and len(ours) == len(theirs)
    for text in TEXTS:
        for special in (False, True):
            ids = theirs.encode(text, add_special_tokens=special)
            assert ours.encode(text, add_special_tokens=special) == ids, (text, special)
            assert ours.decode(ids) == theirs.decode(ids, clean_up_tokenization_spaces=False)
            assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        expected = theirs(text, add_special_tokens=True, return_offsets_mapping=True)
        got = ours(text, add_special_tokens=True, return_offsets_mapping=True)
        assert got["input_ids"] == expected["input_ids"]
        assert [tuple(o) for o in got["offset_mapping"]] == [tuple(o) for o in expected["offset_mapping"]]
        assert got.word_ids() == expected.word_ids()
        for max_length in (4, 9):  # truncation keeps the special tokens around the cut text
            assert ours(text, truncation=True, max_length=max_length)["input_ids"] == theirs(
                text, truncation=True, max_length=max_length)["input_ids"]
        ids = theirs.encode(text)
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("name", ["default", "tiny", "qwen-tools"])
def test_chat_prompts_match_transformers(folders, name):
    ours, theirs = TextTokenizer(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    cases = [(conversation, None) for conversation in CONVERSATIONS]
    if name == "qwen-tools":
        cases += [(CONVERSATIONS[1], TOOLS), (TOOL_CONVERSATION, TOOLS)]
    for messages, tools in cases:
        for add_generation_prompt in (True, False):
            options = {"tools": tools, "add_generation_prompt": add_generation_prompt}
            text = theirs.apply_chat_template(messages, tokenize=False, **options)
            assert ours.apply_chat_template(messages, tokenize=False, **options) == text
            assert ours.apply_chat_template(messages, **options) == theirs.encode(text, add_special_tokens=False)
    if name == "qwen-tools":  # the tool schema really reached the prompt
        assert '"name": "get_weather"' in ours.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False)


def test_a_template_error_is_a_value_error(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="user first"):
        TextTokenizer(tmp_path).apply_chat_template([{"role": "assistant", "content": "hi"}])
    tokenizer.chat_template = "{% set ns = namespace(_private=1) %}"
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="_private"):  # the sandbox holds: no underscore attributes
        TextTokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])


def test_a_process_engine_serves_from_a_parent_that_never_imports_torch(tiny_llama, tmp_path):
    # The HTTP process of `polyhead serve` with its engine in a child: the CLI, the app and a whole
    # request through the process engine, with torch made unimportable here (the child has its own).
    script = tmp_path / "parent.py"
    script.write_text(f"""
import asyncio
import sys

if __name__ == "__main__":  # the spawned child imports this file too, and needs torch
    sys.modules["torch"] = None
    import polyhead.cli, polyhead.server.app
    from polyhead.config import EngineConfig
    from polyhead.engine.client.process_engine import ProcessEngine
    from polyhead.engine.core.params import SamplingParams

    polyhead.cli.build_parser()
    engine = ProcessEngine.from_config(EngineConfig(model={str(tiny_llama[0])!r}, dtype="float32",
                                                    kv_cache_memory="16MiB"))

    async def run():
        prompt = engine.tokenizer.apply_chat_template([{{"role": "user", "content": "hi"}}],
                                                      add_generation_prompt=True)
        params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        return [o async for o in engine.generate(prompt, params)]

    try:
        outputs = asyncio.run(run())
    finally:
        engine.stop()
    print(len(outputs[-1].token_ids), type(engine.tokenizer).__name__)
""")
    result = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["4", "TextTokenizer"]
