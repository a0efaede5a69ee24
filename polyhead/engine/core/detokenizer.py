"""Incremental detokenizing with stop strings.

The rule it keeps: text is only added once it can no longer change. A token's text depends on
its neighbours (SentencePiece's leading space, a UTF-8 character split over byte-level tokens),
so each step decodes a small window, the last tokens already in the text (context) plus the
new ones, and adds what the new ones contributed, unless that ends in an incomplete character.
The window restarts after every addition, so the cost per token is O(window), never O(output).
"""

from polyhead.engine.core.params import SamplingParams

_PROMPT_CONTEXT = 5  # prompt tokens decoded before the first output token, for its leading space
_MAX_PENDING = 16  # tokens held back at most; past it, text that is still incomplete goes out as is
_REPLACEMENT = "\ufffd"  # what decode makes of an incomplete UTF-8 character


class IncrementalDetokenizer:
    """Turns a request's generated token ids into text as they arrive."""

    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stops = list(params.stop)
        self.include_stop = params.include_stop_str_in_output
        self.min_tokens = params.min_tokens
        self.num_tokens = 0  # output tokens seen
        # a stop string must start at or after this character: the text of the first min_tokens tokens
        # cannot end the output (None until that many have arrived)
        self.first_stop_char: int | None = 0 if params.min_tokens == 0 else None
        self.window = self._context(list(prompt_token_ids))
        self.num_context = len(self.window)  # window[:num_context] is already text (or prompt)
        self._text = ""
        self.num_returned = 0  # chars of text handed out by take_delta
        self.is_stopped = False

    @property
    def text(self) -> str:
        return self._text

    def update(self, new_token_ids: list[int]) -> str | None:
        """Add newly generated tokens. Returns the stop string matched, if any; `text` is then cut at it."""
        if self.is_stopped or not new_token_ids:
            return None
        for token_id in new_token_ids:  # one at a time, so each waits only for its own character
            self.window.append(token_id)
            self.num_tokens += 1
            if (stop := self._append(self._decode_window(flush=False))) is not None:
                return stop
            if self.first_stop_char is None and self.num_tokens >= self.min_tokens:
                self.first_stop_char = len(self._text)
        return None

    def take_delta(self, finished: bool = False) -> str:
        """Text not yet returned. While running, holds back what could still begin a stop string."""
        if finished and not self.is_stopped:
            self._append(self._decode_window(flush=True))
        end = len(self._text)
        if not (finished or self.is_stopped):
            end -= self._num_stop_prefix_chars()
        delta = self._text[self.num_returned:end] if end > self.num_returned else ""
        self.num_returned = max(self.num_returned, end)
        return delta

    def _decode_window(self, flush: bool) -> str:
        num_pending = len(self.window) - self.num_context
        if num_pending == 0:
            return ""
        before = self._decode(self.window[:self.num_context])
        after = self._decode(self.window)
        if not flush and _is_unsettled(before, after):
            if num_pending < _MAX_PENDING:
                return ""  # no text yet (a skipped special token) or a character still incomplete
            if after == before:  # a long run of tokens with no text (skipped special tokens)
                del self.window[self.num_context:]
                return ""
        # The added tokens become the next context, unless they end inside a character.
        added = [] if after.endswith(_REPLACEMENT) else self.window[self.num_context:]
        if len(added) > _PROMPT_CONTEXT:
            added = self._context(added)
        self.window, self.num_context = added, len(added)
        return after[len(before):]

    def _context(self, token_ids: list[int]) -> list[int]:
        """The longest end of token_ids, up to _PROMPT_CONTEXT long, that decodes to whole characters.
        Context cut inside a character would be wrong: the tokens after it could complete it."""
        for start in range(max(len(token_ids) - _PROMPT_CONTEXT, 0), len(token_ids)):
            if not self._decode(token_ids[start:]).endswith(_REPLACEMENT):
                return token_ids[start:]
        return []

    def _decode(self, token_ids: list[int]) -> str:
        # No clean-up: it rewrites spaces by what follows, which would change text already sent.
        return self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def _append(self, delta: str) -> str | None:
        if not delta:
            return None
        num_old = len(self._text)
        self._text += delta
        if self.first_stop_char is None:  # still within the first min_tokens tokens
            return None
        # Only the new text, plus the old chars a stop could start in, can hold a new match.
        ends = []
        for stop in self.stops:
            start = self._text.find(stop, max(num_old - len(stop) + 1, self.first_stop_char))
            if start >= 0:
                ends.append((start + len(stop), start, stop))
        if not ends:
            return None
        end, start, stop = min(ends)  # the stop that completed first ends the output
        self._text = self._text[:end if self.include_stop else start]
        self.is_stopped = True
        return stop

    def _num_stop_prefix_chars(self) -> int:
        """Length of the longest end of the text that is the start of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


def _is_unsettled(before: str, after: str) -> bool:
    return len(after) <= len(before) or after.endswith(_REPLACEMENT)
