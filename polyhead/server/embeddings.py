"""POST /v1/embeddings in OpenAI's shape (the official `openai` client works against it).

`model` is an embed task (its pooling, normalization and projection) or a backbone name (an
encoder: mean pooling, a causal LM: last token; both L2-normalized, as vLLM's defaults are).
`encoding_format` float or base64 (little-endian float32, what the openai client asks for by
default); `dimensions` only when it equals the task's own size, since no served task is trained
to be truncated (vLLM rejects it the same way for models without matryoshka training).
"""

import base64
import struct

from fastapi import APIRouter, Request

from polyhead.engine.core.params import PoolingParams
from polyhead.server.errors import APIError
from polyhead.server.pooling import PoolingJob, run_jobs
from polyhead.server.protocol import new_id
from polyhead.server.registry import Backbone
from polyhead.server.task_protocol import Embedding, EmbeddingRequest, UsageInfo

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request):
    state = request.app.state.server
    backbone, task_name, adapter, params, dimensions = resolve_embedder(state, body.model)
    if body.dimensions is not None and body.dimensions != dimensions:
        raise APIError(400, f"dimensions {body.dimensions} is not supported by {body.model!r}: its embeddings "
                       f"have {dimensions} dimensions and it was not trained for shorter ones", "dimensions",
                       "unsupported_dimensions")
    inputs = state.inputs(body.input)
    render = state.registry.tasks[task_name].spec.render if task_name in state.registry.tasks else None
    jobs = [PoolingJob(backbone, render(text) if render and isinstance(text, str) else text, params,
                       task_name or body.model, adapter, group=i) for i, text in enumerate(inputs)]
    response_id = new_id("embd")
    finals = await run_jobs(state, jobs, state.routing(request, body), state.timeout_for(body.timeout),
                            response_id)
    data = [Embedding(index=i, embedding=_encode(out.pooled, body.encoding_format)).model_dump()
            for i, out in enumerate(finals)]
    num_tokens = sum(len(out.prompt_token_ids) for out in finals)
    return {"object": "list", "id": response_id, "model": body.model, "data": data,
            "usage": UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens).model_dump(exclude_none=True)}


def resolve_embedder(state, model: str) -> tuple[Backbone, str, str | None, PoolingParams, int]:
    """What embeds for `model`: its backbone, task name ("" for a backbone), adapter, params and dimensions."""
    backbone = state.backbone_named(model)
    if backbone is not None:
        pooling = "last" if backbone.is_generative else "mean"
        return backbone, "", None, PoolingParams(kind="embed", pooling=pooling, normalize=True), backbone.hidden_size
    task = state.task(model, "/v1/embeddings", "model")
    spec = task.spec
    params = PoolingParams(kind="embed", task=spec.name if spec.head else None, pooling=spec.pooling,
                           normalize=spec.normalize)
    return task.backbone, spec.name, task.adapter, params, task.dimensions


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return [float(x) for x in vector]
