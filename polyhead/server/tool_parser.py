"""Tool calling, reply side: the model's text -> OpenAI's content and tool_calls, whole or streamed.

One parser serves both: a whole reply is the stream fed at once, so a streamed reply's deltas add up
to exactly the whole one. Outside a call, text is content, except a tail that could still be the
start of `<tool_call>` (held back until the next text decides). Inside a call, text is held until
`</tool_call>` closes it; then its JSON is read. A block that is not a call to an offered function
({"name": one of them, "arguments": an object}) stays content, as the model wrote it. Whitespace
next to a call (the newlines between calls) is dropped; a reply with no call keeps every character.
"""

import json
import uuid
from dataclasses import dataclass

from polyhead.server.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    id: str  # call_<hex>, what the client sends back as the tool message's tool_call_id
    name: str
    arguments: str  # the arguments object as JSON text

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class ReplyPiece:
    """What one step of the parser gives: content text, or a finished call (its index among the reply's calls)."""

    content: str = ""
    call: ParsedToolCall | None = None
    call_index: int = 0


class ToolCallParser:
    def __init__(self, names: frozenset[str], max_calls: int | None = None):
        self.names, self.max_calls = names, max_calls
        self.pending = ""  # text not given out yet: a possible "<tool_call>" start, or a call's body
        self.is_in_call = False
        self.held_space = ""  # whitespace after content, given out only if content (not a call) follows
        self.follows_call = False  # the last thing read was a call: the whitespace after it is dropped
        self.num_calls = 0

    def feed(self, text: str) -> list[ReplyPiece]:
        self.pending += text
        pieces: list[ReplyPiece] = []
        while True:
            if self.is_in_call:
                end = self.pending.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return pieces
                body, self.pending = self.pending[:end], self.pending[end + len(TOOL_CALL_CLOSE):]
                self.is_in_call = False
                self._close_call(body, TOOL_CALL_CLOSE, pieces)
                continue
            start = self.pending.find(TOOL_CALL_OPEN)
            if start < 0:
                keep = _partial_open_length(self.pending)
                self._content(self.pending[:len(self.pending) - keep], pieces)
                self.pending = self.pending[len(self.pending) - keep:]
                return pieces
            self._content(self.pending[:start], pieces)
            self.pending, self.is_in_call = self.pending[start + len(TOOL_CALL_OPEN):], True

    def finish(self) -> list[ReplyPiece]:
        """The end of the reply: a call still open is read as it stands (a stop string may have cut its
        closing tag), anything else held is content."""
        pieces: list[ReplyPiece] = []
        if self.is_in_call:
            self.is_in_call = False
            self._close_call(self.pending, "", pieces)
        else:
            self._content(self.pending, pieces)
        self.pending = ""
        if self.num_calls == 0 and self.held_space:
            pieces.append(ReplyPiece(content=self.held_space))
        return pieces

    def _content(self, text: str, pieces: list[ReplyPiece]) -> None:
        if self.follows_call:
            text = text.lstrip()
            if not text:
                return
            self.follows_call = False
        text = self.held_space + text
        stripped = text.rstrip()
        self.held_space = text[len(stripped):]
        if stripped:
            pieces.append(ReplyPiece(content=stripped))

    def _close_call(self, body: str, closing: str, pieces: list[ReplyPiece]) -> None:
        call = self._read_call(body)
        if call is None:  # not a call to an offered function: the model's text, as written
            self._content(TOOL_CALL_OPEN + body + closing, pieces)
            return
        self.held_space, self.follows_call = "", True
        if self.max_calls is not None and self.num_calls >= self.max_calls:
            return  # parallel_tool_calls false: the calls after the first are not made
        pieces.append(ReplyPiece(call=call, call_index=self.num_calls))
        self.num_calls += 1

    def _read_call(self, body: str) -> ParsedToolCall | None:
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("name") not in self.names:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as JSON text
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ParsedToolCall(f"call_{uuid.uuid4().hex[:24]}", value["name"], json.dumps(arguments, ensure_ascii=False))


def _partial_open_length(text: str) -> int:
    """The length of the longest tail of `text` that is a proper prefix of "<tool_call>"."""
    for length in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-length:]):
            return length
    return 0


def parse_reply(text: str, names: frozenset[str], max_calls: int | None = None) -> tuple[str | None, list[dict]]:
    """A whole reply -> (content, tool_calls in OpenAI's shape). Content is None when the reply is only calls."""
    parser = ToolCallParser(names, max_calls)
    pieces = parser.feed(text) + parser.finish()
    content = "".join(piece.content for piece in pieces)
    calls = [piece.call.to_openai() for piece in pieces if piece.call is not None]
    return (content or None) if calls else content, calls


def stream_delta(piece: ReplyPiece) -> dict:
    """A piece as a chat.completion.chunk delta; a call comes whole, in one delta (its first and last)."""
    if piece.call is None:
        return {"content": piece.content}
    return {"tool_calls": [{"index": piece.call_index, **piece.call.to_openai()}]}


class ToolCallStream:
    """One streamed choice: the engine's text deltas in, chat.completion.chunk deltas out."""

    def __init__(self, names: frozenset[str], max_calls: int | None):
        self.parser = ToolCallParser(names, max_calls)

    def deltas(self, new_text: str, is_finished: bool) -> list[dict]:
        pieces = self.parser.feed(new_text) + (self.parser.finish() if is_finished else [])
        return [stream_delta(piece) for piece in pieces]

    @property
    def has_calls(self) -> bool:
        return self.parser.num_calls > 0
