"""Incremental detokenizing with stop strings.

The rule it keeps: text is only emitted once it can no longer change. A token's text depends
on its neighbours (SentencePiece's leading space, a UTF-8 character split over byte-level
tokens), so each step decodes a small window — the tokens already emitted since the last
checkpoint plus the new ones — and emits the difference, unless it ends in an incomplete
character. Cost per token is O(window), never O(output).
"""

from polyhead.engine.params import SamplingParams

_PROMPT_CONTEXT = 6  # prompt tokens kept so the first output token decodes in context


class IncrementalDetokenizer:
    """Turns a request's generated token ids into text as they arrive."""

    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stops = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.hold_back = max((len(s) for s in self.stops), default=1) - 1
        self.ids = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self.read_offset = len(self.ids)  # ids before this are already in the text
        self.prefix_offset = max(self.read_offset - _PROMPT_CONTEXT + 1, 0)  # window start
        self._text = ""
        self.num_returned = 0  # chars of text handed out by take_delta
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text

    def update(self, new_token_ids: list[int]) -> str | None:
        """Add newly generated tokens. Returns the stop string matched, if any; `text` is then cut at it."""
        if self.stopped:
            return None
        self.ids.extend(new_token_ids)
        delta = self._decode_new(final=False)
        return self._append(delta) if delta else None

    def take_delta(self, finished: bool = False) -> str:
        """Text not yet returned. While running, holds back what could still begin a stop string."""
        if finished and not self.stopped:
            self._append(self._decode_new(final=True))
        end = len(self._text) if finished or self.stopped or not self.stops else len(self._text) - self.hold_back
        if end <= self.num_returned:
            return ""
        delta = self._text[self.num_returned:end]
        self.num_returned = end
        return delta

    def _decode_new(self, final: bool) -> str:
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""  # nothing yet, or an incomplete UTF-8 character: wait for more bytes
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prefix):]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def _append(self, delta: str) -> str | None:
        start = max(len(self._text) - self.hold_back, 0)  # a stop string may straddle old and new text
        self._text += delta
        hits = [(i, s) for s in self.stops if (i := self._text.find(s, start)) >= 0]
        if not hits:
            return None
        index, stop = min(hits)
        self._text = self._text[: index + len(stop) if self.include_stop else index]
        self.stopped = True
        return stop
