"""OpenAI-compatible request and response bodies. Requests convert themselves to SamplingParams;
polyhead's extras (top_k, min_p, repetition_penalty, ignore_eos) ride in the same body."""

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polyhead.engine.core.params import MAX_SEED, MIN_SEED, SamplingParams
from polyhead.server.structured import ResponseFormat, StructuredOutputs, requested_structure
from polyhead.server.tool_protocol import Tool, ToolCall, ToolChoice


class RequestBody(BaseModel):
    """Every request body: unknown fields from other clients are ignored, as OpenAI does, and every
    string must be valid Unicode (a lone surrogate such as "\\ud800" is legal JSON, but it can be
    neither tokenized nor echoed back in UTF-8)."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value):
        _check_unicode(value)
        return value


def _check_unicode(value) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"has a lone surrogate (U+{ord(value[err.start]):04X}) at character {err.start}; "
                             "text must be valid Unicode") from None
    elif isinstance(value, list | tuple):
        for item in value:
            _check_unicode(item)
    elif isinstance(value, dict):  # a tool's JSON schema, keys included
        for key, item in value.items():
            _check_unicode(key)
            _check_unicode(item)
    elif isinstance(value, BaseModel):  # nested bodies (tools, tool calls) are checked through their fields
        for name in type(value).model_fields:
            _check_unicode(getattr(value, name))


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(RequestBody):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)  # 64 bits, as torch's generator takes
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: str | None = None
    # polyhead extras
    timeout: float | None = Field(default=None, gt=0)  # seconds; capped by the server's --request-timeout
    priority: int = 0  # accepted now; the scheduling policy that uses it comes with multi-task serving
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    ignore_eos: bool = False
    # structured output: OpenAI's response_format, or vLLM's structured_outputs extras (one of them)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    def sampling_params(self, default_max_tokens: int, logprobs: int | None, index: int = 0) -> SamplingParams:
        # With n > 1 and a seed, each choice gets its own seed so the choices differ yet repeat.
        seed = None if self.seed is None else self.seed + index
        if seed is not None and seed > MAX_SEED:  # wraps into the negative half, still 64 bits
            seed -= 2**64
        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=seed,
            max_tokens=self.max_tokens or default_max_tokens, stop=self._stops(), ignore_eos=self.ignore_eos,
            logprobs=logprobs, structured=requested_structure(self.response_format, self.structured_outputs))

    @property
    def asks_structure(self) -> bool:
        """Did the body say what structure its reply has (response_format "text" included)?"""
        return self.response_format is not None or self.structured_outputs is not None

    def _stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    prompt: str | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: Literal[False] = False


class ChatMessage(RequestBody):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = None  # may be absent only on an assistant message (one with tool_calls, say)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made, sent back in the history
    tool_call_id: str | None = None  # tool: the call this message answers

    @model_validator(mode="after")
    def _content_unless_assistant(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content (only an assistant's may be absent)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id is required on a tool message: the id of the call it answers")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None  # None: "auto" when tools are given, else "none" (OpenAI's defaults)
    parallel_tool_calls: bool = True

    def chat_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "polyhead"
    parent: str | None = None  # a LoRA adapter's base model


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
