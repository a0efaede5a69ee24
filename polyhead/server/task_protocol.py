"""Request and response bodies of the task endpoints: /v1/classify, /v1/tag, /v1/embeddings.

/v1/embeddings follows OpenAI's (and vLLM's) shape; /v1/classify answers per input with the label,
its probability and every label's probability, as vLLM's /classify does (plus the task's name,
since one request may fan out to several tasks)."""

from typing import Literal

from pydantic import BaseModel, Field

from polyhead.server.protocol import RequestBody


class TaskRequestFields(RequestBody):
    """Fields every task endpoint shares: routing, deadline and who is asking."""

    user: str | None = None  # the tenant for fair scheduling (else the API key)
    priority: int = 0  # lower runs first under the priority policy
    timeout: float | None = Field(default=None, gt=0)  # seconds; capped by the server's --request-timeout


class ClassifyRequest(TaskRequestFields):
    task: str | None = None  # one classify task
    tasks: list[str] | None = None  # several classify tasks on the same inputs (fan-out)
    model: str | None = None  # vLLM's spelling of `task`
    input: str | list[str]

    def task_names(self) -> list[str]:
        names = list(self.tasks or []) + ([self.task] if self.task else []) + ([self.model] if self.model else [])
        if not names:
            raise ValueError("name the task: `task` (one classify task) or `tasks` (several)")
        return list(dict.fromkeys(names))  # a task named twice runs once


class LabelScore(BaseModel):
    index: int  # which input
    task: str
    label: str  # the most likely label
    score: float  # its probability
    probs: list[float]  # every label's probability, in the task's label order
    labels: list[str]  # the task's labels, in that order


class Entity(BaseModel):
    label: str  # the entity type (the tag without its B-/I- prefix)
    text: str  # input[start:end]
    start: int  # character offset into the input, inclusive
    end: int  # character offset into the input, exclusive
    score: float  # mean probability of the span's tags


class TagRequest(TaskRequestFields):
    task: str | None = None
    model: str | None = None  # vLLM's spelling of `task`
    input: str | list[str]

    def task_name(self) -> str:
        name = self.task or self.model
        if not name:
            raise ValueError("name the tag task: `task`")
        return name


class TagResult(BaseModel):
    index: int
    entities: list[Entity]


class EmbeddingRequest(TaskRequestFields):
    model: str  # an embed task, or a backbone name (its default pooling)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


class Embedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32 bytes, as OpenAI sends them


class UsageInfo(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None
