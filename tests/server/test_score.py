"""/v1/score and /v1/rerank on a live multi-task server over tiny random models: cosine over embed
tasks and backbones, pair classify tasks (a head and zero-shot), the query's prefill shared across
its documents, and the errors naming their field."""

import json

import httpx
import pytest

from polyhead.server.score import PAIR_SEPARATOR
from tests.server.task_fixtures import MODEL, bert, manifest_dir, running_task_server  # noqa: F401

QUERY = "which product arrived broken?"
JSON = {"content-type": "application/json"}  # bodies sent as json.dumps text: ASCII escapes carry a lone surrogate
DOCUMENTS = ["the blender came in pieces", "a lovely scarf, soft and warm", "it broke on day two"]


@pytest.fixture(scope="module", params=["thread", "process"])
def task_server(request, manifest_dir, tiny_llama):  # noqa: F811
    """The tiny Llama's engine on a thread here and in a child process."""
    with running_task_server(manifest_dir[1], tiny_llama[0], request.param, max_documents_per_request=4) as (url, app):
        yield url, app


def post(url, path, **body):
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5


@pytest.mark.parametrize("model", ["embed", "embed-llm", MODEL])
def test_score_is_the_cosine_of_the_embeddings(task_server, model):
    url, _ = task_server
    out = post(url, "/v1/score", model=model, text_1=QUERY, text_2=DOCUMENTS).json()
    vectors = [d["embedding"] for d in post(url, "/v1/embeddings", model=model, input=[QUERY, *DOCUMENTS])
               .json()["data"]]
    assert [d["index"] for d in out["data"]] == [0, 1, 2] and out["object"] == "list"
    for item, vector in zip(out["data"], vectors[1:]):
        assert item["object"] == "score"
        assert item["score"] == pytest.approx(cosine(vectors[0], vector), abs=1e-4)
    assert out["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("task", ["sentiment", "yesno"])
def test_pair_classify_scores_are_the_last_labels_probability(task_server, task):
    url, _ = task_server
    scores = [d["score"] for d in post(url, "/v1/score", model=task, text_1=QUERY, text_2=DOCUMENTS).json()["data"]]
    pairs = [QUERY + PAIR_SEPARATOR + document for document in DOCUMENTS]
    expected = [d["probs"][-1] for d in post(url, "/v1/classify", task=task, input=pairs).json()["data"]]
    assert scores == pytest.approx(expected, abs=1e-4)


def test_pairwise_score_matches_one_query_at_a_time(task_server):
    url, _ = task_server
    queries = ["first question", "second question"]
    both = post(url, "/v1/score", model="sentiment", text_1=queries, text_2=DOCUMENTS[:2]).json()["data"]
    for i, query in enumerate(queries):
        alone = post(url, "/v1/score", model="sentiment", text_1=query, text_2=DOCUMENTS[i]).json()["data"][0]
        assert both[i]["score"] == pytest.approx(alone["score"], abs=1e-4)


def hit_tokens(url) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    name = f'polyhead_prefix_cache_hit_tokens_total{{backbone="{MODEL}"'
    return float(next(x for x in text.splitlines() if x.startswith(name)).split()[-1])


def test_documents_share_the_querys_prefill(task_server):
    url, app = task_server
    query = "a query never sent before, two blocks"
    before = hit_tokens(url)
    out = post(url, "/v1/rerank", model="sentiment", query=query, documents=DOCUMENTS)
    assert out.status_code == 200, out.text
    # the template's prefix and the query fill full blocks; every document after the first reuses them
    shared = len(app.state.server.tokenizer.encode(app.state.server.registry.tasks["sentiment"].spec.render(query)))
    assert hit_tokens(url) - before >= (len(DOCUMENTS) - 1) * 16 * (shared // 16)


def test_rerank_orders_by_score_and_cuts_to_top_n(task_server):
    url, _ = task_server
    scores = [d["score"] for d in post(url, "/v1/score", model="embed", text_1=QUERY, text_2=DOCUMENTS).json()["data"]]
    out = post(url, "/v1/rerank", model="embed", query=QUERY, documents=DOCUMENTS, top_n=2).json()
    best = sorted(range(3), key=lambda i: -scores[i])[:2]
    assert [r["index"] for r in out["results"]] == best
    assert [r["relevance_score"] for r in out["results"]] == pytest.approx([scores[i] for i in best], abs=1e-5)
    assert out["results"][0]["document"] == {"text": DOCUMENTS[best[0]]} and out["usage"]["total_tokens"] > 0
    bare = post(url, "/v2/rerank", model="embed", query=QUERY, documents=[{"text": d} for d in DOCUMENTS],
                return_documents=False).json()
    assert len(bare["results"]) == 3 and all("document" not in r for r in bare["results"])
    unversioned = post(url, "/rerank", model="embed", query=QUERY, documents=DOCUMENTS).json()
    assert [r["index"] for r in unversioned["results"]] == [r["index"] for r in bare["results"]]
    assert post(url, "/score", model="embed", text_1=QUERY, text_2=DOCUMENTS).json()["data"][0]["score"] == \
        pytest.approx(scores[0], abs=1e-5)


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/score", {"model": "embed", "text_1": ["a", "b"], "text_2": ["x", "y", "z"]}, 400, "text_2"),
    ("/v1/score", {"model": "embed", "text_1": [], "text_2": "x"}, 400, "text_1"),
    ("/v1/score", {"model": "embed", "text_1": "a", "text_2": ["x", " "]}, 400, "text_2"),
    ("/v1/score", {"model": "embed", "text_1": "a"}, 400, "text_2"),
    ("/v1/score", {"model": "nope", "text_1": "a", "text_2": "x"}, 404, "model"),
    ("/v1/score", {"model": "ner", "text_1": "a", "text_2": "x"}, 400, "model"),
    ("/v1/score", {"model": "chat", "text_1": "a", "text_2": "x"}, 400, "model"),
    ("/v1/rerank", {"model": "embed", "query": "a", "documents": ["x"] * 5}, 413, "documents"),
    ("/v1/rerank", {"model": "embed", "query": "", "documents": ["x"]}, 400, "query"),
    ("/v1/rerank", {"model": "embed", "query": "a", "documents": ["x"], "top_n": -1}, 400, "top_n"),
    ("/v1/rerank", {"model": "embed", "query": "a", "documents": [{"text": "\ud800"}]}, 400, "documents"),
    ("/v1/score", {"model": "sentiment", "text_1": "\ud800", "text_2": "x"}, 400, "text_1"),
])
def test_bad_requests_name_their_field(task_server, path, body, status, param):
    url, _ = task_server
    out = httpx.post(f"{url}{path}", content=json.dumps(body), headers=JSON, timeout=30)
    assert out.status_code == status, out.text
    error = out.json()["error"]
    assert error["param"].split(".")[0] == param and error["message"]
    if status == 413:
        assert "max_documents_per_request" in error["message"] and "4" in error["message"]
