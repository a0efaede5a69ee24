"""POST /v1/score and /v1/rerank: how well each document answers a query.

`model` is either
- an embed task or a backbone name: the score is the cosine of the two texts' embeddings (each
  distinct text is embedded once, so a query scored against many documents costs one row);
- a classify task trained on pairs (a head, or zero-shot verbalizers): the pair is the text
  `query + PAIR_SEPARATOR + document` under the task's template, and the score is the probability
  of the task's last label (e.g. `relevant` of [irrelevant, relevant]).

A classify scorer's pairs of one query start with the same tokens, so they are one share group of
run_jobs (polyhead/server/pooling.py): on a generative backbone the first document's row computes
the query and the others, queued `after` it, find its blocks in the prefix cache.
"""

import math
import time

from fastapi import APIRouter, Request

from polyhead.server.classify import classify_jobs, label_probabilities, zero_shot_plan
from polyhead.server.embeddings import resolve_embedder
from polyhead.server.errors import APIError
from polyhead.server.offload import input_size, tokenize_off_loop
from polyhead.server.pooling import PoolingJob, run_jobs
from polyhead.server.protocol import new_id
from polyhead.server.score_protocol import RerankRequest, ScoreRequest

router = APIRouter()

PAIR_SEPARATOR = "\n"  # between query and document in a pair classify task's input (train on the same)


@router.post("/v1/score")
@router.post("/score")  # vLLM serves both paths
async def score(body: ScoreRequest, request: Request):
    state = request.app.state.server
    queries = _texts(body.text_1, "text_1")
    documents = _texts(body.text_2, "text_2")
    _check_count(state, len(documents), "text_2")
    if len(queries) == 1:
        pairs = [(queries[0], document) for document in documents]
    elif len(queries) == len(documents):
        pairs = list(zip(queries, documents))
    else:
        raise APIError(400, f"text_1 has {len(queries)} texts and text_2 has {len(documents)}: send one text_1 "
                       "for every text_2, or as many of each (scored pairwise)", "text_2", "invalid_value")
    response_id = new_id("score")
    scores, num_tokens = await score_pairs(state, request, body, pairs, response_id)
    return {"id": response_id, "object": "list", "created": int(time.time()), "model": body.model,
            "data": [{"index": i, "object": "score", "score": value} for i, value in enumerate(scores)],
            "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens, "completion_tokens": 0}}


@router.post("/v1/rerank")
@router.post("/v2/rerank")  # Cohere's v2 path; the body is the same
@router.post("/rerank")  # vLLM's (and Jina's) unversioned path
async def rerank(body: RerankRequest, request: Request):
    state = request.app.state.server
    query = _texts(body.query, "query")[0]
    documents = _texts(body.document_texts(), "documents")
    _check_count(state, len(documents), "documents")
    response_id = new_id("rerank")
    scores, num_tokens = await score_pairs(state, request, body, [(query, d) for d in documents], response_id)
    ranked = sorted(range(len(documents)), key=lambda i: -scores[i])[:body.top_n or None]
    results = [{"index": i, "relevance_score": scores[i]} | ({"document": {"text": documents[i]}}
                                                             if body.return_documents else {}) for i in ranked]
    return {"id": response_id, "model": body.model, "results": results, "usage": {"total_tokens": num_tokens}}


async def score_pairs(state, request: Request, body, pairs: list[tuple[str, str]],
                      response_id: str) -> tuple[list[float], int]:
    """One score per (query, document) pair, and the prompt tokens computed for them."""
    task = state.registry.tasks.get(body.model)
    if task is None and state.backbone_named(body.model) is None:
        valid = [t.name for t in state.registry.tasks.values() if t.kind in ("embed", "classify")]
        raise APIError(404, f"model {body.model!r} does not exist; /v1/score and /v1/rerank take an embed or "
                       f"classify task or a backbone: {', '.join(list(state.settings.model_names) + valid)}",
                       "model", "model_not_found")
    routing, timeout = state.routing(request, body), state.timeout_for(body.timeout)
    if task is not None and task.kind == "classify":
        return await _classify_pairs(state, task, pairs, routing, timeout, response_id)
    if task is not None and task.kind != "embed":
        raise APIError(400, f"task {task.name!r} is a {task.kind} task; /v1/score and /v1/rerank take an embed "
                       "task (cosine), a classify task trained on pairs, or a backbone", "model", "wrong_task_kind")
    return await _cosine_pairs(state, body.model, pairs, routing, timeout, response_id)


async def _cosine_pairs(state, model: str, pairs, routing: dict, timeout: float, response_id: str):
    backbone, task_name, adapter, params, _ = resolve_embedder(state, model)
    task = state.registry.tasks.get(task_name)
    texts = list(dict.fromkeys(text for pair in pairs for text in pair))  # each distinct text embedded once
    jobs = [PoolingJob(backbone, task.spec.render(text) if task else text, params, task_name or model, adapter,
                       group=i) for i, text in enumerate(texts)]
    finals = await run_jobs(state, jobs, routing, timeout, response_id, param="documents")
    vectors = dict(zip(texts, (out.pooled for out in finals)))
    scores = [_cosine(vectors[query], vectors[document]) for query, document in pairs]
    return scores, sum(len(out.prompt_token_ids) for out in finals)


async def _classify_pairs(state, task, pairs, routing: dict, timeout: float, response_id: str):
    if len(task.spec.labels) < 2:
        raise APIError(400, f"task {task.name!r} has one label; a pair scorer needs two or more (the score is "
                       "the last label's probability)", "model", "wrong_task_kind")
    query_group = {query: i for i, query in enumerate(dict.fromkeys(query for query, _ in pairs))}
    size = input_size(pairs)
    jobs, spans = [], []  # spans: per pair, its zero-shot plan (or None) and its jobs' range
    for query, document in pairs:
        text = query + PAIR_SEPARATOR + document
        plan = await tokenize_off_loop(size, zero_shot_plan, task, text, "documents") if task.spec.is_zero_shot \
            else None
        first = len(jobs)
        jobs += classify_jobs(task, text, plan, group=("query", query_group[query]))
        spans.append((plan, first, len(jobs)))
    finals = await run_jobs(state, jobs, routing, timeout, response_id, param="documents")
    scores = [label_probabilities(task, plan, finals[start:end])[-1] for plan, start, end in spans]
    return scores, sum(len(out.prompt_token_ids) for out in finals)


def _cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0


def _texts(given: str | list[str], param: str) -> list[str]:
    texts = [given] if isinstance(given, str) else list(given)
    if not texts:
        raise APIError(400, f"{param} is an empty list: send at least one text", param, "empty_input")
    for i, text in enumerate(texts):
        if not text.strip():
            where = param if isinstance(given, str) else f"{param}[{i}]"
            raise APIError(400, f"{where} is empty", param, "empty_input")
    return texts


def _check_count(state, num_documents: int, param: str) -> None:
    limit = state.settings.max_documents_per_request
    if num_documents > limit:
        raise APIError(413, f"{param} has {num_documents} documents; the limit is {limit} per request "
                       "(max_documents_per_request)", param, "too_many_inputs")
