"""OpenAI-compatible request and response bodies. Requests convert themselves to SamplingParams;
polyhead's extras (top_k, min_p, repetition_penalty, min_tokens, ignore_eos) ride in the same body.
A field polyhead does not implement is either ignored, where OpenAI documents it as a hint that does
not change the reply (store, metadata, service_tier, prediction, ...), or refused by the request's
check_supported with a 400 naming it, where ignoring it would change what the reply means."""

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from polyhead.engine.core.params import MAX_LOGIT_BIAS, MAX_SEED, MIN_SEED, SamplingParams
from polyhead.server.content import join_text_parts
from polyhead.server.errors import APIError
from polyhead.server.structured import ResponseFormat, StructuredOutputs, requested_structure
from polyhead.server.tool_protocol import Tool, ToolCall, ToolChoice

MAX_STOP_STRINGS = 4  # OpenAI's limit on `stop`


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
    min_tokens: int = Field(default=0, ge=0)  # vLLM's: EOS, stop tokens and stop strings wait for this many
    ignore_eos: bool = False
    # token id (a string of digits: JSON keys are strings) -> bias in [-100, 100]
    logit_bias: dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")],
                     Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]] | None = None
    # structured output: OpenAI's response_format, or vLLM's structured_outputs extras (one of them)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop):
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
            raise PydanticCustomError("too_many_stops", "has {count} stop strings; the limit is {limit}",
                                      {"count": len(stop), "limit": MAX_STOP_STRINGS})
        return stop

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
            logprobs=logprobs, min_tokens=self.min_tokens, logit_bias=self._logit_bias(),
            structured=requested_structure(self.response_format, self.structured_outputs))

    def _logit_bias(self) -> dict[int, float]:
        return {int(token_id): bias for token_id, bias in (self.logit_bias or {}).items()}

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
    # one prompt (text or token ids) or a list of them: each gets n choices, numbered prompt-major
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False  # the prompt's text comes first in each choice's text
    suffix: str | None = None  # refused: no fill-in-the-middle
    best_of: int | None = Field(default=None, ge=1)  # refused unless it equals n

    def check_supported(self) -> None:
        if self.suffix:
            raise APIError(400, "suffix is not supported: polyhead does not fill in the middle; send the text "
                           "before the gap as the prompt", "suffix", "unsupported_parameter")
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, f"best_of {self.best_of} with n {self.n} is not supported: polyhead returns "
                           "every choice it generates (best_of may only equal n)", "best_of", "unsupported_parameter")
        if self.echo and self.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported: polyhead does not compute the prompt's "
                           "logprobs", "echo", "unsupported_parameter")


class ContentPart(BaseModel):
    """One part of a message's content (content.py joins the text parts; the others are refused)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "refusal", "image_url", "input_audio", "file"]
    text: str | None = None
    refusal: str | None = None


class ChatMessage(RequestBody):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None  # parts arrive joined into one string (content.py)
    name: str | None = None  # the participant's name, handed to the chat template (templates that read it)
    tool_calls: list[ToolCall] | None = None  # assistant: the calls it made, sent back in the history
    tool_call_id: str | None = None  # tool: the call this message answers

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, content):
        return join_text_parts(content) if isinstance(content, list) else content

    @model_validator(mode="after")
    def _content_unless_assistant(self):
        if self.content is None and self.role != "assistant":
            raise PydanticCustomError("missing_content", "a {role} message needs content", {"role": self.role})
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id is required on a tool message: the id of the call it answers")
        return self

    def template_dict(self) -> dict:
        """The message as chat templates read it: unset fields left out, content a string."""
        message = self.model_dump(exclude_none=True)
        message.setdefault("content", "")
        return message


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    modalities: list[str] | None = None  # refused unless text only
    audio: dict | None = None  # refused: no audio output
    web_search_options: dict | None = None  # refused: no web search
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None  # None: "auto" when tools are given, else "none" (OpenAI's defaults)
    parallel_tool_calls: bool = True

    def chat_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def check_supported(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:  # OpenAI refuses it too
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
        if self.modalities is not None and set(self.modalities) - {"text"}:
            raise APIError(400, f"modalities {self.modalities} is not supported: this model answers in text only",
                           "modalities", "unsupported_parameter")
        if self.audio is not None:
            raise APIError(400, "audio output is not supported: this model answers in text only", "audio",
                           "unsupported_parameter")
        if self.web_search_options is not None:
            raise APIError(400, "web_search_options is not supported: polyhead does not search the web",
                           "web_search_options", "unsupported_parameter")


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
    # what a chat/completions request to this model samples with where it sets none (the model's
    # generation_config.json, a task's sampling, else OpenAI's); None: not a generative model
    sampling_defaults: dict[str, float | int] | None = None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
