"""The request fields that ask for structured output: OpenAI's `response_format` and vLLM's
`structured_outputs` extras. Each converts itself to the engine's StructuredOutput, checked
(a schema or grammar that cannot compile is a ValueError naming the field and the construct)."""

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from polyhead.engine.core.params import StructuredOutput
from polyhead.engine.decoder.grammar_source import check_structured


class JsonSchemaFormat(BaseModel):
    """response_format.json_schema, as OpenAI defines it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    schema_: dict | bool | None = Field(default=None, alias="schema")
    # OpenAI's strict: the reply follows the schema exactly. Here every reply follows it; strict also
    # refuses a schema keyword the grammar engine does not implement, where otherwise it is ignored.
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def to_structured(self) -> StructuredOutput | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return _checked(StructuredOutput("json_object"), "response_format")
        if self.json_schema is None or self.json_schema.schema_ is None:
            raise ValueError("response_format.json_schema.schema is required for type json_schema")
        structured = StructuredOutput("json", json.dumps(self.json_schema.schema_),
                                      strict=bool(self.json_schema.strict))
        return _checked(structured, "response_format")


class StructuredOutputs(BaseModel):
    """vLLM's extras: exactly one of json (a schema), regex, choice, grammar (Lark; GBNF is read too),
    json_object. Unknown keys are refused: ignoring one would change what the reply may be."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_: dict | bool | str | None = Field(default=None, alias="json")  # a schema, or its text
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def to_structured(self) -> StructuredOutput:
        given = [name for name in ("json", "regex", "choice", "grammar", "json_object")
                 if getattr(self, "json_" if name == "json" else name) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured_outputs needs exactly one of json, regex, choice, grammar, json_object; "
                             f"got {', '.join(given) or 'none'}")
        kind = given[0]
        if kind == "json":
            schema = self.json_ if isinstance(self.json_, str) else json.dumps(self.json_)
            structured = StructuredOutput("json", schema)
        elif kind == "choice":
            structured = StructuredOutput("choice", choices=tuple(self.choice))
        elif kind == "json_object":
            structured = StructuredOutput("json_object")
        else:
            structured = StructuredOutput(kind, getattr(self, kind))
        return _checked(structured, "structured_outputs")


def _checked(structured: StructuredOutput, field: str) -> StructuredOutput:
    try:
        check_structured(structured)
    except ValueError as err:  # the message starts with "structured_outputs": name the field the client sent
        message = str(err)
        raise ValueError(field + message.removeprefix("structured_outputs")) from None
    return structured


def requested_structure(response_format: ResponseFormat | None,
                        structured_outputs: StructuredOutputs | None) -> StructuredOutput | None:
    """What a request body asks for; both fields at once is a ValueError."""
    if response_format is not None and response_format.type != "text" and structured_outputs is not None:
        raise ValueError("structured_outputs and response_format cannot both be set: send one")
    if structured_outputs is not None:
        return structured_outputs.to_structured()
    return response_format.to_structured() if response_format is not None else None
