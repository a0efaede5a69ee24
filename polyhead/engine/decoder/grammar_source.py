"""A StructuredOutput as llguidance grammar text, and the check a request gets before it is queued.

The check needs no tokenizer (llguidance validates a grammar on its own), so RequestLimits runs it
in the HTTP process too: a schema or grammar that cannot compile is a ValueError naming the
construct, a 400 before the engine sees the request."""

import json
from functools import lru_cache

from llguidance import LLMatcher

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
        # each choice a literal; json.dumps writes a string literal Lark reads the same way
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in structured.choices))
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
    error = LLMatcher.validate_grammar(source)
    if error:
        raise ValueError(f"structured_outputs {structured.kind} cannot be compiled: {error.strip()}")
