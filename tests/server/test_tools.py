"""The request side of tool calling: the grammar that `required` and a named choice hand the engine
(checked with llguidance itself, the engine's grammar library), and the prompt each kind of chat
template gets (one that takes `tools`, and one without, where the tools go into a system message)."""

import json

import llguidance
import llguidance.hf
import pytest

from polyhead.engine.core.params import SamplingParams, StructuredOutput
from polyhead.server.errors import APIError
from polyhead.server.protocol import ChatCompletionRequest
from polyhead.server.tools import TOOLS_SYSTEM_PROMPT, ToolPlan, chat_messages, template_takes_tools
from tests.conftest import CHAT_TEMPLATE, tiny_tokenizer
from tests.server.tool_fixtures import QWEN25_TEMPLATE, TIME_TOOL, WEATHER_TOOL, qwen_tools_tokenizer

PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
UTC = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'


def plan(tool_choice="auto", parallel=True, tools=(WEATHER_TOOL, TIME_TOOL)) -> ToolPlan:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "tools": list(tools), "tool_choice": tool_choice,
                                                 "parallel_tool_calls": parallel})
    return ToolPlan.from_request(body.tools, body.tool_choice, body.parallel_tool_calls)


@pytest.fixture(scope="module")
def ll_tokenizer():
    return llguidance.hf.from_tokenizer(tiny_tokenizer())


def accepts(ll_tokenizer, grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    return (matcher.consume_tokens(tiny_tokenizer().encode(text, add_special_tokens=False))
            and not matcher.is_error() and matcher.is_accepting())


def test_required_accepts_calls_to_any_tool_and_nothing_else(ll_tokenizer):
    grammar = plan("required").grammar()
    assert grammar.kind == "grammar"
    assert accepts(ll_tokenizer, grammar.value, PARIS)
    assert accepts(ll_tokenizer, grammar.value, f"{PARIS}\n{UTC}")
    assert not accepts(ll_tokenizer, grammar.value, "It is sunny.")
    assert not accepts(ll_tokenizer, grammar.value, PARIS.replace("get_weather", "get_wether"))
    assert not accepts(ll_tokenizer, grammar.value, PARIS.replace('"celsius"', '"kelvin"'))  # the enum
    assert not accepts(ll_tokenizer, grammar.value, PARIS.replace('"Paris"', '"Llanfairpwllgwyngyll"'))  # maxLength
    assert not accepts(ll_tokenizer, grammar.value, PARIS.replace(', "unit": "celsius"', ""))  # required
    assert not accepts(ll_tokenizer, grammar.value, PARIS.replace('{"city"', '{ "city"'))  # Qwen's layout only


def test_named_choice_and_no_parallel_calls_allow_one_call(ll_tokenizer):
    named = plan({"type": "function", "function": {"name": "get_time"}}).grammar().value
    assert accepts(ll_tokenizer, named, UTC) and not accepts(ll_tokenizer, named, PARIS)
    assert not accepts(ll_tokenizer, named, f"{UTC}\n{UTC}")
    single = plan("required", parallel=False).grammar().value
    assert accepts(ll_tokenizer, single, PARIS) and not accepts(ll_tokenizer, single, f"{PARIS}\n{UTC}")


def test_a_tool_without_parameters_takes_an_empty_object(ll_tokenizer):
    bare = {"type": "function", "function": {"name": "ping"}}
    grammar = plan("required", tools=[bare]).grammar().value
    assert accepts(ll_tokenizer, grammar, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')


def test_keywords_the_grammar_engine_lacks_are_ignored_unless_the_tool_is_strict(ll_tokenizer):
    tags = {"type": "function", "function": {"name": "tag", "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}}}}
    grammar = plan("required", tools=[tags]).grammar().value
    assert accepts(ll_tokenizer, grammar, '<tool_call>\n{"name": "tag", "arguments": {"tags": ["a"]}}\n</tool_call>')
    strict = {**tags, "function": {**tags["function"], "strict": True}}
    with pytest.raises(APIError) as caught:
        plan("required", tools=[strict])
    assert caught.value.param == "tools.0.function.parameters" and "uniqueItems" in caught.value.message
    assert plan("auto", tools=[strict]).is_calling  # not enforced: not checked


def test_only_required_and_named_constrain_the_output():
    params = SamplingParams(max_tokens=8)
    assert plan("auto").constrain(params) is params and plan("none").constrain(params) is params
    assert plan("required").constrain(params).structured == plan("required").grammar()
    assert plan("auto").is_calling and not plan("none").is_calling
    with pytest.raises(APIError) as caught:  # response_format already constrains it
        plan("required").constrain(SamplingParams(structured=StructuredOutput("json_object")))
    assert caught.value.status == 400 and caught.value.param == "tool_choice"


@pytest.mark.parametrize(("tool_choice", "tools", "message"), [
    ({"type": "function", "function": {"name": "nope"}}, [WEATHER_TOOL], "not among the tools"),
    ("required", [], "needs at least one tool"),
    ("auto", [WEATHER_TOOL, WEATHER_TOOL], "two tools are named 'get_weather'"),
])
def test_a_choice_the_tools_cannot_meet_is_refused(tool_choice, tools, message):
    with pytest.raises(APIError) as caught:
        plan(tool_choice, tools=tools)
    assert caught.value.status == 400 and message in caught.value.message
    assert caught.value.param == ("tools" if "two tools" in message else "tool_choice")


HISTORY = [{"role": "user", "content": "Weather in Paris and the time in UTC?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": '{"city": "Paris", "unit": "celsius"}'}},
               {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
           {"role": "tool", "tool_call_id": "call_2", "content": "14:05"}]


def dumps(messages):
    return [m.model_dump() for m in ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages}).messages]


def test_a_template_that_takes_tools_gets_them_and_the_calls_as_objects():
    tokenizer = qwen_tools_tokenizer()
    messages, tools = chat_messages(dumps(HISTORY), plan("auto"), tokenizer)
    assert tools == [WEATHER_TOOL, TIME_TOOL]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "unit": "celsius"}
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert json.dumps(WEATHER_TOOL) in text
    assert '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n22 C\n</tool_response>\n<tool_response>\n14:05\n" in text
    assert chat_messages(dumps(HISTORY), plan("none"), tokenizer)[1] is None  # none: the model is not shown tools


def test_a_template_without_tools_gets_them_in_a_system_message():
    messages, tools = chat_messages(dumps([{"role": "system", "content": "Be brief."}, *HISTORY]), plan("auto"),
                                    tiny_tokenizer())
    assert tools is None
    signatures = f"{json.dumps(WEATHER_TOOL)}\n{json.dumps(TIME_TOOL)}"
    assert messages[0] == {"role": "system", "content": f"Be brief.\n\n{TOOLS_SYSTEM_PROMPT.format(tools=signatures)}"}
    assert messages[2] == {"role": "assistant", "content": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>')}
    replies = "<tool_response>\n22 C\n</tool_response>\n<tool_response>\n14:05\n</tool_response>"
    assert messages[3:] == [{"role": "user", "content": replies}]
    assert chat_messages(dumps(HISTORY[:1]), plan("none"), tiny_tokenizer()) == (HISTORY[:1], None)
    first = chat_messages(dumps(HISTORY[:1]), plan("auto"), tiny_tokenizer())[0]  # no system message: one is added
    assert [m["role"] for m in first] == ["system", "user"] and first[0]["content"].startswith("# Tools\n")


def test_template_takes_tools_reads_the_template():
    assert template_takes_tools(QWEN25_TEMPLATE) and not template_takes_tools(CHAT_TEMPLATE)
    assert template_takes_tools({"default": CHAT_TEMPLATE, "tool_use": QWEN25_TEMPLATE})
    assert not template_takes_tools(None)
