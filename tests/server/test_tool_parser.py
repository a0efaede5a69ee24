"""The reply side of tool calling: the model's text -> content and OpenAI tool_calls, whole and
streamed in every possible split, the two always agreeing."""

import json

import pytest

from polyhead.server.tool_parser import ToolCallStream, parse_reply

NAMES = frozenset({"get_weather", "get_time"})
WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
TIME = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'


def calls_of(tool_calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tool_calls]


def test_a_reply_without_calls_keeps_every_character():
    text = "The weather is <b>fine</b>, no <tool needed.  \n"
    assert parse_reply(text, NAMES) == (text, [])


def test_one_call_and_no_text_gives_null_content():
    content, tool_calls = parse_reply(WEATHER, NAMES)
    assert content is None
    assert calls_of(tool_calls) == [("get_weather", {"city": "Paris", "unit": "celsius"})]
    assert tool_calls[0]["type"] == "function" and tool_calls[0]["id"].startswith("call_")


def test_text_before_calls_and_parallel_calls():
    content, tool_calls = parse_reply(f"Let me check.\n{WEATHER}\n{TIME}\n", NAMES)
    assert content == "Let me check."
    assert calls_of(tool_calls) == [("get_weather", {"city": "Paris", "unit": "celsius"}),
                                    ("get_time", {"zone": "UTC"})]
    assert len({c["id"] for c in tool_calls}) == 2


def test_max_calls_keeps_the_first():
    assert calls_of(parse_reply(f"{WEATHER}\n{TIME}", NAMES, max_calls=1)[1]) == \
        [("get_weather", {"city": "Paris", "unit": "celsius"})]


@pytest.mark.parametrize("block", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>',  # not JSON
    '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>',  # not an offered function
    '<tool_call>\n{"name": "get_time", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
    '<tool_call>\n["get_time"]\n</tool_call>',
])
def test_a_block_that_is_not_a_call_stays_content(block):
    assert parse_reply(f"x {block}", NAMES) == (f"x {block}", [])


def test_a_call_cut_before_its_closing_tag_is_still_read():
    content, tool_calls = parse_reply(WEATHER.removesuffix("</tool_call>"), NAMES)
    assert content is None and calls_of(tool_calls) == [("get_weather", {"city": "Paris", "unit": "celsius"})]


def test_arguments_written_as_json_text_and_parameters_key():
    text = '<tool_call>{"name": "get_time", "parameters": "{\\"zone\\": \\"CET\\"}"}</tool_call>'
    assert calls_of(parse_reply(text, NAMES)[1]) == [("get_time", {"zone": "CET"})]


def stream(text: str, cuts: list[int], max_calls=None) -> tuple[str, list, list[dict]]:
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    streamer = ToolCallStream(NAMES, max_calls)
    deltas = [d for i, part in enumerate(parts) for d in streamer.deltas(part, i == len(parts) - 1)]
    content = "".join(d.get("content", "") for d in deltas)
    tool_calls = [c for d in deltas for c in d.get("tool_calls", [])]
    return content, tool_calls, deltas


@pytest.mark.parametrize("text", [f"Checking <the> weather:\n{WEATHER}\n{TIME}", "plain <tool_cal text  ",
                                  f"{WEATHER}\nand then some text\n"])
def test_every_split_of_a_stream_adds_up_to_the_whole_reply(text):
    whole_content, whole_calls = parse_reply(text, NAMES)
    for cut in range(1, len(text)):
        for second in (cut + 1, cut + 7):  # three pieces, one of them sometimes a single character
            content, tool_calls, deltas = stream(text, [cut, min(second, len(text))])
            assert content == (whole_content or ""), (cut, second)
            assert calls_of(tool_calls) == calls_of(whole_calls)
            assert [c["index"] for c in tool_calls] == list(range(len(whole_calls)))
            assert not any("<tool_call" in d.get("content", "") for d in deltas if whole_calls)


def test_stream_holds_back_only_a_possible_tag_start():
    streamer = ToolCallStream(NAMES, None)
    assert streamer.deltas("Sure <tool", False) == [{"content": "Sure"}]  # the space waits to see what follows
    assert streamer.deltas("box> here", False) == [{"content": " <toolbox> here"}]
    assert streamer.deltas("", True) == [] and not streamer.has_calls
