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
    '<tool_call>\n{"name": "get_weather" "arguments": {"city": </tool_call>',  # not JSON
    '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>',  # not an offered function
    '<tool_call>\n{"arguments": [1, 2], "name": "get_time"}\n</tool_call>',  # arguments not an object
    '<tool_call>\n["get_time"]\n</tool_call>',
])
def test_a_block_that_is_not_a_call_stays_content(block):
    assert parse_reply(f"x {block}", NAMES) == (f"x {block}", [])


def test_a_call_in_the_streamed_layout_keeps_its_arguments_as_written():
    """As OpenAI's: the arguments are the model's text, to be checked by the client when not enforced."""
    text = '<tool_call>{"name":"get_time","arguments": {"zone":\n "UTC"  }  }</tool_call>'
    assert parse_reply(text, NAMES)[1][0]["function"]["arguments"] == '{"zone":\n "UTC"  }'
    broken = '<tool_call>\n{"name": "get_time", "arguments": {"zone": 1,,}}\n</tool_call>'
    assert parse_reply(broken, NAMES)[1][0]["function"]["arguments"] == '{"zone": 1,,}'


def test_a_call_cut_by_max_tokens_keeps_what_was_written():
    content, tool_calls = parse_reply(f"{WEATHER}\n{TIME[:-18]}", NAMES)
    assert content is None and [c["function"]["arguments"] for c in tool_calls] == \
        ['{"city": "Paris", "unit": "celsius"}', '{"zone": "U']
    cut_before_its_brace = parse_reply(TIME[:-14], NAMES)[1]  # ...{"zone": "UTC"}
    assert cut_before_its_brace[0]["function"]["arguments"] == '{"zone": "UTC"}'


def test_a_call_cut_before_its_closing_tag_is_still_read():
    content, tool_calls = parse_reply(WEATHER.removesuffix("</tool_call>"), NAMES)
    assert content is None and calls_of(tool_calls) == [("get_weather", {"city": "Paris", "unit": "celsius"})]


def test_arguments_written_as_json_text_and_parameters_key():
    text = '<tool_call>{"name": "get_time", "parameters": "{\\"zone\\": \\"CET\\"}"}</tool_call>'
    assert calls_of(parse_reply(text, NAMES)[1]) == [("get_time", {"zone": "CET"})]


def stream(text: str, cuts: list[int], max_calls=None) -> tuple[str, list, list[dict]]:
    """The deltas of `text` cut at `cuts`, and the content and calls they add up to (as the openai client adds them)."""
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    streamer = ToolCallStream(NAMES, max_calls)
    deltas = [d for i, part in enumerate(parts) for d in streamer.deltas(part, i == len(parts) - 1)]
    content = "".join(d.get("content", "") for d in deltas)
    tool_calls: list[dict] = []
    for delta in (c for d in deltas for c in d.get("tool_calls", [])):
        if "id" in delta:
            assert delta["index"] == len(tool_calls) and delta["type"] == "function"
            tool_calls.append({"id": delta["id"], "function": dict(delta["function"])})
        else:
            assert set(delta) == {"index", "function"} and set(delta["function"]) == {"arguments"}
            tool_calls[delta["index"]]["function"]["arguments"] += delta["function"]["arguments"]
    return content, tool_calls, deltas


PRETTY = '<tool_call>\n{\n  "name": "get_time",\n  "arguments": {\n    "zone": "UTC"\n  }\n}\n</tool_call>'
OTHER_LAYOUT = '<tool_call>{"arguments": {"zone": "CET"}, "name": "get_time"}</tool_call>'


@pytest.mark.parametrize(("text", "max_calls"), [
    (f"Checking <the> weather:\n{WEATHER}\n{TIME}", None), (f"{WEATHER}\n{TIME}\n{PRETTY}", 1),
    ("plain <tool_cal text  ", None), (f"{WEATHER}\nand then some text\n", None),
    (f"{PRETTY}\n{OTHER_LAYOUT}\n{TIME[:-18]}", None), (f"{OTHER_LAYOUT} {WEATHER}", 1), (TIME[:-14], None)])
def test_every_split_of_a_stream_adds_up_to_the_whole_reply(text, max_calls):
    whole_content, whole_calls = parse_reply(text, NAMES, max_calls)
    assert len(whole_calls) == (max_calls or text.count("<tool_call>"))
    for cut in range(1, len(text)):
        for second in (cut + 1, cut + 7):  # three pieces, one of them sometimes a single character
            content, tool_calls, deltas = stream(text, [cut, min(second, len(text))], max_calls)
            assert content == (whole_content or ""), (cut, second)
            assert [c["function"] for c in tool_calls] == [c["function"] for c in whole_calls]
            assert not any("<tool_call" in d.get("content", "") for d in deltas if whole_calls)


def test_arguments_stream_as_they_are_written():
    streamer = ToolCallStream(NAMES, None)
    assert streamer.deltas('<tool_call>\n{"name": "get_time", "arguments": ', False) == []  # arguments not begun
    first, arguments = streamer.deltas('{"zo', False)
    assert first["tool_calls"][0]["function"] == {"name": "get_time", "arguments": ""}
    assert arguments == {"tool_calls": [{"index": 0, "function": {"arguments": '{"zo'}}]}
    assert streamer.deltas('ne": "UTC"}', False) == [{"tool_calls": [{"index": 0, "function": {
        "arguments": 'ne": "UTC"'}}]}]  # the "}" may close the call object: held
    assert streamer.deltas("}\n</tool_", False) == [{"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}]
    assert streamer.deltas("call>", True) == [] and streamer.has_calls


def test_stream_holds_back_only_a_possible_tag_start():
    streamer = ToolCallStream(NAMES, None)
    assert streamer.deltas("Sure <tool", False) == [{"content": "Sure"}]  # the space waits to see what follows
    assert streamer.deltas("box> here", False) == [{"content": " <toolbox> here"}]
    assert streamer.deltas("", True) == [] and not streamer.has_calls
