"""Tool calling, reply side: the model's text -> OpenAI's content and tool_calls, whole or streamed.

One parser serves both: a whole reply is the stream fed at once, so a streamed reply's deltas add up
to exactly the whole one. Outside a call, text is content, except a tail that could still be the
start of `<tool_call>` (held back until the next text decides). Inside a call:

- once the block reads `{"name": "<an offered function>", "arguments": ` (any whitespace), the call
  is open: its id and name go out, then its arguments text as it comes, holding back a tail that
  could be the object's closing `}`, whitespace or the start of `</tool_call>`. The arguments are
  the text up to the block's last `}` (the enforced layout's always are valid JSON; a free reply's,
  like OpenAI's, may not be, or may be cut short by max_tokens);
- any other block is held until `</tool_call>` closes it and then read whole: a JSON call to an
  offered function (arguments as an object or as JSON text; "parameters" also read) is a call,
  anything else stays content, as the model wrote it.

Whitespace next to a call (the newlines between calls) is dropped; a reply with no call keeps every
character. With max_calls, the calls after it are dropped.
"""

import json
import re
import uuid
from dataclasses import dataclass

from polyhead.server.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# Read only once the arguments' first character is in, so the whitespace before them is the header's.
_JSON = json.JSONDecoder()
_CALL_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*(?=\S)')


@dataclass(frozen=True, slots=True)
class ReplyPiece:
    """What one step of the parser gives: content text, or part of a call. A call's first piece has
    its id and name; later pieces add to its arguments."""

    content: str = ""  # text outside calls
    call_index: int | None = None  # which of the reply's calls this piece belongs to; None: content
    call_id: str | None = None  # call_<hex>, what the client sends back as the tool message's tool_call_id
    name: str | None = None
    arguments: str = ""  # more of the call's arguments, JSON text


@dataclass(slots=True)
class _OpenCall:
    index: int
    arguments_start: int  # where the arguments begin in the block's body
    num_sent: int = 0  # characters of the arguments given out


class ToolCallParser:
    def __init__(self, names: frozenset[str], max_calls: int | None = None):
        self.names, self.max_calls = names, max_calls
        self.pending = ""  # text not given out yet: a possible "<tool_call>" start, or the open block's body
        self.is_in_block = False
        self.open_call: _OpenCall | None = None  # the block's call, once its header has been read
        self.held_space = ""  # whitespace after content, given out only if content (not a call) follows
        self.follows_call = False  # the last thing read was a call: the whitespace after it is dropped
        self.num_calls = 0

    def feed(self, text: str) -> list[ReplyPiece]:
        self.pending += text
        pieces: list[ReplyPiece] = []
        while True:
            if self.is_in_block:
                end = self.pending.find(TOOL_CALL_CLOSE)
                if end < 0:
                    self._read_open_block(self.pending, pieces, is_complete=False)
                    return pieces
                body, self.pending = self.pending[:end], self.pending[end + len(TOOL_CALL_CLOSE):]
                self._close_block(body, TOOL_CALL_CLOSE, pieces)
                continue
            start = self.pending.find(TOOL_CALL_OPEN)
            if start < 0:
                keep = _partial_tag_length(self.pending, TOOL_CALL_OPEN)
                self._content(self.pending[:len(self.pending) - keep], pieces)
                self.pending = self.pending[len(self.pending) - keep:]
                return pieces
            self._content(self.pending[:start], pieces)
            self.pending, self.is_in_block = self.pending[start + len(TOOL_CALL_OPEN):], True

    def finish(self) -> list[ReplyPiece]:
        """The end of the reply: a block still open is read as it stands (max_tokens or a stop string
        cut it), anything else held is content."""
        pieces: list[ReplyPiece] = []
        if self.is_in_block:
            self._close_block(self.pending, "", pieces)
        else:
            self._content(self.pending, pieces)
        self.pending = ""
        if self.num_calls == 0 and self.held_space:
            pieces.append(ReplyPiece(content=self.held_space))
        return pieces

    @property
    def can_call(self) -> bool:
        return self.max_calls is None or self.num_calls < self.max_calls

    def _read_open_block(self, body: str, pieces: list[ReplyPiece], is_complete: bool) -> None:
        """Open the block's call once its header is in; give out the arguments written since."""
        if self.open_call is None:
            name = self._header_name(body)
            if name is None or not self.can_call:  # past max_calls (parallel_tool_calls false): not made
                return
            self.open_call = _OpenCall(self.num_calls, _CALL_HEADER.match(body).end())
            self._start_call(name, "", pieces)
        arguments = _arguments_so_far(body[self.open_call.arguments_start:], is_complete)
        if len(arguments) > self.open_call.num_sent:
            pieces.append(ReplyPiece(call_index=self.open_call.index, arguments=arguments[self.open_call.num_sent:]))
            self.open_call.num_sent = len(arguments)

    def _header_name(self, body: str) -> str | None:
        """The offered function a block opens a call to in the streamed layout, if it does."""
        header = _CALL_HEADER.match(body)
        return header.group(1) if header is not None and header.group(1) in self.names else None

    def _close_block(self, body: str, closing: str, pieces: list[ReplyPiece]) -> None:
        self._read_open_block(body, pieces, is_complete=True)
        was_call, self.open_call, self.is_in_block = self.open_call is not None, None, False
        if was_call:
            return
        call = self._read_whole_call(body)
        if call is not None and self.can_call:
            self._start_call(*call, pieces)
        elif call is None and self._header_name(body) is None:
            self._content(TOOL_CALL_OPEN + body + closing, pieces)  # not a call: the model's text, as written
        # else a call after max_calls: not made

    def _start_call(self, name: str, arguments: str, pieces: list[ReplyPiece]) -> None:
        pieces.append(ReplyPiece(call_index=self.num_calls, call_id=f"call_{uuid.uuid4().hex[:24]}", name=name,
                                 arguments=arguments))
        self.num_calls += 1
        self.held_space, self.follows_call = "", True

    def _read_whole_call(self, body: str) -> tuple[str, str] | None:
        """(name, arguments as JSON text) of a block in another layout than the streamed one."""
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
        return value["name"], json.dumps(arguments, ensure_ascii=False)

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


def _arguments_so_far(text: str, is_complete: bool) -> str:
    """The arguments in the text after the header: all but the call object's closing `}` and the
    whitespace around it; while the block is open, also all but a possible start of `</tool_call>`.
    A complete block whose arguments are one JSON value followed by at most that `}` is read exactly,
    so a call cut just before its own `}` keeps its arguments' last brace."""
    if is_complete:
        try:
            _, end = _JSON.raw_decode(text)
        except json.JSONDecodeError:
            end = None
        if end is not None and text[end:].strip() in ("", "}"):
            return text[:end]
    else:
        text = text[:len(text) - _partial_tag_length(text, TOOL_CALL_CLOSE)]
    text = text.rstrip()
    return text[:-1].rstrip() if text.endswith("}") else text


def _partial_tag_length(text: str, tag: str) -> int:
    """The length of the longest tail of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


def parse_reply(text: str, names: frozenset[str], max_calls: int | None = None) -> tuple[str | None, list[dict]]:
    """A whole reply -> (content, tool_calls in OpenAI's shape). Content is None when the reply is only calls."""
    parser = ToolCallParser(names, max_calls)
    content, calls = "", []
    for piece in parser.feed(text) + parser.finish():
        if piece.call_index is None:
            content += piece.content
        elif piece.call_id is not None:
            calls.append({"id": piece.call_id, "type": "function",
                          "function": {"name": piece.name, "arguments": piece.arguments}})
        else:
            calls[piece.call_index]["function"]["arguments"] += piece.arguments
    return (content or None) if calls else content, calls


def stream_delta(piece: ReplyPiece) -> dict:
    """A piece as a chat.completion.chunk delta, in OpenAI's shape: a call's first delta has its index,
    id, type and name; the next ones its index and more arguments."""
    if piece.call_index is None:
        return {"content": piece.content}
    call = {"index": piece.call_index, "function": {"arguments": piece.arguments}}
    if piece.call_id is not None:
        call.update({"id": piece.call_id, "type": "function"})
        call["function"] = {"name": piece.name, "arguments": piece.arguments}
    return {"tool_calls": [call]}


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
