"""A StructuredOutput as llguidance grammar text, and the check a request gets before it is queued.

The check needs no model tokenizer, so RequestLimits runs it in the HTTP process too: a schema or
grammar that cannot compile is a ValueError naming the construct, a 400 before the engine sees the
request. Beyond llguidance's own validation it runs the grammar a few bytes deep over a byte-level
vocabulary, as some limits (lexer size, parser items) only show once a grammar is used."""

import json
from functools import lru_cache

import llguidance
import torch
from llguidance import LLMatcher
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from polyhead.engine.core.params import StructuredOutput

# JSON is written with one space after ':' and ',' and no other whitespace. A grammar that allows
# any whitespace lets a small model emit newlines until max_tokens (a known failure of flexible
# whitespace); this layout is the one models see most ({"a": 1, "b": 2}), and it is still JSON.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
JSON_OBJECT_SCHEMA = '{"type": "object"}'


def grammar_source(structured: StructuredOutput) -> str:
    """The llguidance grammar (its JSON form) that `structured` compiles from."""
    kind = structured.kind
    if kind in ("json", "json_object"):
        schema = structured.value if kind == "json" else JSON_OBJECT_SCHEMA
        # lenient: keywords llguidance does not implement are ignored instead of refused
        options = {**JSON_LAYOUT, "lenient": not structured.strict}
        return LLMatcher.grammar_from_json_schema(schema, overrides=options)
    if kind == "regex":
        return LLMatcher.grammar_from_regex(structured.value)
    if kind == "choice":
        # one terminal of literals (json.dumps writes a string literal Lark reads the same way): the
        # lexer matches it as one token, where a rule of thousands of alternatives passes the parser's limits
        literals = " | ".join(json.dumps(c, ensure_ascii=False) for c in structured.choices)
        return LLMatcher.grammar_from_lark(f"start: CHOICE\nCHOICE: {literals}")
    return LLMatcher.grammar_from_lark(structured.value)


@lru_cache(maxsize=1024)
def check_structured(structured: StructuredOutput) -> None:
    """Raise ValueError when `structured` cannot compile; the message names the construct."""
    for text in (structured.value, *structured.choices):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"structured_outputs {structured.kind} has a lone surrogate "
                             f"(U+{ord(text[err.start]):04X}); text must be valid Unicode") from None
    if structured.kind == "json":
        try:
            schema = json.loads(structured.value)
        except ValueError as err:
            raise ValueError(f"structured_outputs json schema is not valid JSON: {err}") from None
        if not isinstance(schema, dict | bool):
            raise ValueError(f"structured_outputs json schema must be a JSON object, got {type(schema).__name__}")
    try:
        source = grammar_source(structured)
    except ValueError as err:
        raise ValueError(f"structured_outputs {structured.kind}: {err}") from None
    error = LLMatcher.validate_grammar(source) or _first_steps_error(source)
    if error:
        raise ValueError(f"structured_outputs {structured.kind} cannot be compiled: {short_error(error)}")


def short_error(error: str) -> str:
    """llguidance's message without the parser-state dump and grammar it may append."""
    return error.split("\n<state>")[0].strip()[:500]


PROBE_STEPS = 4  # bytes of output the check walks through


@lru_cache(maxsize=1)
def _byte_tokenizer() -> llguidance.LLTokenizer:
    # 256 byte tokens and an end token: every grammar's bytes are reachable one at a time
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|end|>", special=True)])
    return llguidance.LLTokenizer(tokenizer.to_str(), eos_token=len(vocab))


def _first_steps_error(source: str) -> str:
    """The error a matcher hits in its first PROBE_STEPS bytes (taking the lowest allowed byte each
    step), or "" when it hits none."""
    tokenizer = _byte_tokenizer()
    matcher = LLMatcher(tokenizer, source, log_level=0)
    bitmask = torch.zeros(-(-tokenizer.vocab_size // 32), dtype=torch.int32)
    for _ in range(PROBE_STEPS):
        if matcher.is_error() or matcher.is_stopped():
            break
        matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * 4)
        words = bitmask.tolist()
        allowed = [i for i in range(tokenizer.vocab_size - 1) if (words[i // 32] >> (i % 32)) & 1]
        if matcher.is_error() or not allowed:
            break
        matcher.consume_token(allowed[0])
    if not matcher.is_error():
        return ""
    error = matcher.get_error()
    # llguidance's stop reason when not even a first byte fits
    return "it matches no text at all" if error.startswith("NoExtension") else error
