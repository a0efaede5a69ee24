"""A request that ends before its streams ever run (a deadline of 1e-9 s) gives its place in the
queue back: the queue gauge returns to 0 and the next request is admitted, on every endpoint."""

import json

import httpx
import pytest

from tests.server.conftest import running_server
from tests.server.task_fixtures import MODEL, bert, manifest_dir, running_task_server  # noqa: F401

INSTANT = 1e-9  # passes before any of the request's streams is first iterated
CASES = {
    "completion": ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2}),
    "completion-n3": ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": 3}),
    "completion-token-ids": ("/v1/completions", {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 2}),
    "chat": ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 2}),
    "chat-n2": ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 2, "n": 2}),
    "classify": ("/v1/classify", {"task": "sentiment", "input": ["good", "bad"]}),
    "classify-zero-shot": ("/v1/classify", {"tasks": ["yesno", "sentiment"], "input": "fine"}),
    "tag": ("/v1/tag", {"task": "ner", "input": "Ann lives in Paris"}),
    "embed": ("/v1/embeddings", {"model": "embed", "input": ["a", "b"]}),
    "embed-llm": ("/v1/embeddings", {"model": "embed-llm", "input": "a"}),
}
STREAMING = ["completion", "completion-n3", "chat", "chat-n2"]
QUEUE = 4  # max_queued_requests: more timed-out requests than this would lock everyone out if each leaked


@pytest.fixture(scope="module")
def task_server(manifest_dir, tiny_llama):  # noqa: F811
    with running_task_server(manifest_dir[1], tiny_llama[0], max_queued_requests=QUEUE) as (url, _):
        yield url


def queue_waiting(url) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("polyhead_queue_waiting{"))


def expire(url, path, body, stream=False):
    body = {**body, "timeout": INSTANT, **({"stream": True} if stream else {})}
    response = httpx.post(f"{url}{path}", json=body, timeout=30)
    if stream:  # the deadline arrives as an error event inside the 200
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "timeout" or events[-1]["error"]["type"] == "timeout_error"
    else:
        assert response.status_code == 408, response.text


@pytest.mark.parametrize(("case", "stream"), [pytest.param(case, False, id=case) for case in CASES]
                         + [pytest.param(case, True, id=f"{case}-stream") for case in STREAMING])
def test_requests_past_their_deadline_leave_the_queue(task_server, case, stream):
    path, body = CASES[case]
    for _ in range(QUEUE + 1):
        expire(task_server, path, body, stream)
    assert queue_waiting(task_server) == 0
    assert httpx.post(f"{task_server}{path}", json=body, timeout=30).status_code == 200


def test_process_engine_releases_the_queue_too(tiny_llama):
    with running_server(tiny_llama[0], "process", max_queued_requests=QUEUE) as (url, _):
        for _ in range(QUEUE + 1):
            expire(url, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert queue_waiting(url) == 0
        assert httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
                          timeout=30).status_code == 200
