"""The tool-calling fields of a chat request, in OpenAI's shapes: the tools offered, the choice
among them, and the calls an assistant message carries back in the history. Their strings are
checked for valid Unicode by the request body that holds them (protocol.RequestBody)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator

FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # what OpenAI accepts as a function's name


class ToolBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields other clients send are ignored, as OpenAI does


class FunctionDefinition(ToolBody):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict | None = None  # a JSON schema of the arguments object; None: no arguments
    # enforced (tool_choice required or named): True refuses schema keywords the grammar engine does not
    # implement (a 400) instead of ignoring them
    strict: bool | None = None


class Tool(ToolBody):
    type: Literal["function"]
    function: FunctionDefinition

    def schema(self) -> dict:
        """The tool as the chat template and the system message show it to the model."""
        return self.model_dump(exclude_none=True)


class FunctionName(ToolBody):
    name: str


class NamedToolChoice(ToolBody):
    type: Literal["function"]
    function: FunctionName


def _one_tool_choice(value, handler):
    """One error for the whole field, not one per member of the union (which names pydantic's internals)."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError('must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}, '
                         f"got {value!r}") from None


ToolChoice = Annotated[Literal["none", "auto", "required"] | NamedToolChoice, WrapValidator(_one_tool_choice)]


class FunctionCall(ToolBody):
    name: str
    arguments: str  # the arguments object as JSON text, as OpenAI sends it


class ToolCall(ToolBody):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall
