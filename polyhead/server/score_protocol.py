"""Request bodies of /v1/score (vLLM's shape) and /v1/rerank (Jina's and Cohere's, as vLLM and TEI
serve it)."""

from pydantic import Field

from polyhead.server.protocol import RequestBody
from polyhead.server.task_protocol import TaskRequestFields


class ScoreRequest(TaskRequestFields):
    model: str  # an embed task or a backbone (cosine), or a classify task trained on pairs
    text_1: str | list[str]  # the queries: one for every text_2, or one per text_2
    text_2: str | list[str]  # the documents


class RerankDocument(RequestBody):
    text: str  # Cohere's v1 clients send documents as objects with a text


class RerankRequest(TaskRequestFields):
    model: str
    query: str
    documents: list[str | RerankDocument]
    top_n: int | None = Field(default=None, ge=0)  # the best n results; None or 0: all of them
    return_documents: bool = True  # echo each result's document text

    def document_texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]
