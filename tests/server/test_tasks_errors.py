"""Bad input to the task endpoints: each error has its status and OpenAI's error shape, names what
was wrong, and the server keeps serving other requests meanwhile."""

import asyncio

import httpx
import pytest
from openai import NotFoundError, OpenAI

from tests.server.task_fixtures import MODEL, bert, manifest_dir, running_task_server  # noqa: F401 - fixtures


@pytest.fixture(scope="module", params=["thread", "process"])
def server(request, manifest_dir, tiny_llama):  # noqa: F811
    with running_task_server(manifest_dir[1], tiny_llama[0], request.param, max_inputs_per_request=4) as (url, _):
        yield url


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def post(url, path, **body):
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def test_unknown_task_is_404_listing_the_valid_ones(server):
    error = error_of(post(server, "/v1/classify", task="sentimnt", input="x"), 404)
    assert error["code"] == "task_not_found" and error["param"] == "task"
    assert "sentimnt" in error["message"] and "sentiment, yesno" in error["message"]
    error = error_of(post(server, "/v1/tag", task="nope", input="x"), 404)
    assert "valid tasks for /v1/tag: ner" in error["message"]
    client = OpenAI(base_url=f"{server}/v1", api_key="none")
    with pytest.raises(NotFoundError, match="nope"):
        client.embeddings.create(model="nope", input="x")


def test_wrong_kind_for_the_endpoint_is_400(server):
    error = error_of(post(server, "/v1/classify", task="embed", input="x"), 400)
    assert error["code"] == "wrong_task_kind" and "/v1/embeddings" in error["message"]
    error = error_of(post(server, "/v1/embeddings", model="sentiment", input="x"), 400)
    assert "classify task" in error["message"] and error["param"] == "model"
    error = error_of(post(server, "/v1/chat/completions", model="ner", messages=[{"role": "user", "content": "x"}]),
                     400)
    assert "/v1/tag" in error["message"]
    error = error_of(post(server, "/v1/classify", tasks=["sentiment", "shout"], input="x"), 400)
    assert "'shout' is a generate task" in error["message"]


def test_empty_and_too_many_inputs(server):
    error = error_of(post(server, "/v1/classify", task="sentiment", input=[]), 400)
    assert error["code"] == "empty_input" and error["param"] == "input"
    assert error_of(post(server, "/v1/embeddings", model="embed", input=["ok", "  "]), 400)["message"] == \
        "input[1] is empty"
    error = error_of(post(server, "/v1/tag", task="ner", input=["a"] * 5), 413)
    assert "5 items" in error["message"] and "limit is 4" in error["message"]
    assert "max_inputs_per_request" in error["message"] and error["code"] == "too_many_inputs"
    error = error_of(post(server, "/v1/classify", input="x"), 400)
    assert "task" in error["message"]


def test_other_bad_fields(server):
    error = error_of(post(server, "/v1/embeddings", model="embed", input="x", dimensions=8), 400)
    assert error["param"] == "dimensions" and "32 dimensions" in error["message"]
    error = error_of(post(server, "/v1/embeddings", model="embed", input="x", encoding_format="int8"), 400)
    assert error["param"] == "encoding_format"
    error = error_of(post(server, "/v1/classify", task="sentiment", input="x" * 300), 400)
    assert "max_model_len 128" in error["message"] and error["param"] == "input"
    error = error_of(post(server, "/v1/chat/completions", model="nope", messages=[{"role": "user", "content": "x"}]),
                     404)
    assert error["code"] == "model_not_found" and "shout" in error["message"]


def test_errors_do_not_disturb_requests_in_flight(server):
    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            good = client.post(f"{server}/v1/completions", json={"model": MODEL, "prompt": "go", "max_tokens": 30,
                                                                 "ignore_eos": True})
            bad = [client.post(f"{server}/v1/classify", json={"task": "zzz", "input": "x"}) for _ in range(5)]
            ok = [client.post(f"{server}/v1/classify", json={"task": "sentiment", "input": ["a", "b"]})
                  for _ in range(3)]
            return await asyncio.gather(good, *bad, *ok)

    responses = asyncio.run(run())
    assert responses[0].status_code == 200 and responses[0].json()["usage"]["completion_tokens"] == 30
    assert [r.status_code for r in responses[1:6]] == [404] * 5
    assert all(r.status_code == 200 and len(r.json()["data"]) == 2 for r in responses[6:])


def test_manifest_errors_name_the_task(tmp_path, tiny_llama, bert):  # noqa: F811
    from polyhead.models.heads import ClassifyHead, save_head
    from polyhead.server.registry import TaskRegistry
    from polyhead.tasks.spec import TaskSpec
    from tests.server.task_fixtures import tiny_engine

    save_head(ClassifyHead(64, 2), tmp_path / "two.safetensors")
    engines = {MODEL: tiny_engine(tiny_llama[0]), str(bert[0]): tiny_engine(bert[0])}
    cases = [
        (TaskSpec("three", "classify", labels=["a", "b", "c"], head=str(tmp_path / "two.safetensors")),
         "task 'three' on backbone 'tiny'.*3 labels"),
        (TaskSpec("wide", "classify", labels=["a", "b"], head=str(tmp_path / "two.safetensors"),
                  backbone=str(bert[0])), "task 'wide'.*hidden size 32"),
        (TaskSpec("talk", "generate", backbone=str(bert[0])), "task 'talk'.*generate task needs a generative"),
        (TaskSpec("guess", "classify", labels=["a", "b"], backbone=str(bert[0])), "task 'guess'.*zero-shot"),
    ]
    for spec, message in cases:
        with pytest.raises(ValueError, match=message):
            TaskRegistry.from_specs([spec], lambda model: None, MODEL, engines)


def test_a_pooling_request_past_its_deadline_is_408(server):
    error = error_of(post(server, "/v1/classify", task="yesno", input=["a", "b", "c", "d"], timeout=1e-4), 408)
    assert error["code"] == "timeout" and "deadline" in error["message"]
    assert post(server, "/v1/classify", task="yesno", input="still fine").status_code == 200


def test_tenant_is_the_user_else_the_api_key():
    from types import SimpleNamespace

    from polyhead.server.tasks import TaskRouting

    def request(key):
        return SimpleNamespace(headers={"authorization": f"Bearer {key}"} if key else {})

    routing = TaskRouting()
    assert routing.tenant(request("sekret"), SimpleNamespace(user="alice")) == "user:alice"
    by_key = routing.tenant(request("sekret"), SimpleNamespace(user=None))
    assert by_key.startswith("key:") and "sekret" not in by_key
    assert by_key != routing.tenant(request("other"), SimpleNamespace(user=None))
    assert routing.tenant(request(None), SimpleNamespace(user=None)) == ""
