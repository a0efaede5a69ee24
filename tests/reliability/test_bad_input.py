"""Bad values are refused at the door with a 400 in OpenAI's error shape naming the field (or, where
the value is legal but degenerate in float32, served safely); an engine error reaches the client as
an error, streamed or not."""

import json

import httpx
import openai
import pytest

from polyhead.engine.core.backend import StepFailed
from tests.server.conftest import running_server
from tests.server.task_fixtures import MODEL, bert, manifest_dir, running_task_server  # noqa: F401

SURROGATE = "a\ud800b"  # a lone surrogate: valid JSON ("a\\ud800b"), not valid Unicode
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
COMPLETION = {"model": MODEL, "prompt": "hi", "max_tokens": 3}


@pytest.fixture(scope="module")
def task_server(manifest_dir, tiny_llama):  # noqa: F811
    with running_task_server(manifest_dir[1], tiny_llama[0]) as (url, app):
        yield url, app


def post(url, path, body: dict) -> httpx.Response:
    # json.dumps escapes the surrogate as \ud800, as a client in another language would send it
    return httpx.post(f"{url}{path}", content=json.dumps(body), headers={"content-type": "application/json"},
                      timeout=30)


def assert_400(response: httpx.Response, param: str):
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": SURROGATE}]}, "messages.0.content"),
    ("/v1/completions", {**COMPLETION, "prompt": SURROGATE}, "prompt"),
    ("/v1/completions", {**COMPLETION, "stop": [SURROGATE]}, "stop"),
    ("/v1/completions", {**COMPLETION, "model": SURROGATE}, "model"),
    ("/v1/classify", {"task": "sentiment", "input": SURROGATE}, "input"),
    ("/v1/classify", {"task": "sentiment", "input": ["ok", SURROGATE]}, "input"),
    ("/v1/tag", {"task": "ner", "input": SURROGATE}, "input"),
    ("/v1/embeddings", {"model": "embed", "input": SURROGATE}, "input"),
    ("/v1/embeddings", {"model": "embed-llm", "input": [SURROGATE]}, "input"),
], ids=["chat", "prompt", "stop", "model", "classify", "classify-list", "tag", "embed", "embed-llm"])
def test_a_lone_surrogate_is_400_naming_the_field(task_server, path, body, param):
    url, _ = task_server
    assert_400(post(url, path, body), param)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_seed_outside_64_bits_is_400(task_server, seed, stream):
    url, _ = task_server
    response = post(url, "/v1/completions", {**COMPLETION, "seed": seed, "stream": stream})
    assert_400(response, "seed")
    message = response.json()["error"]["message"]
    assert str(2**64 - 1) in message or str(-(2**63)) in message  # the limit it broke


def test_the_edges_of_the_seed_range_are_served(task_server):
    url, _ = task_server
    for seed in (2**64 - 1, -(2**63)):  # n=2: the second choice's seed must not overflow either
        response = post(url, "/v1/completions", {**COMPLETION, "seed": seed, "n": 2})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("top_p", [1e-46, 5.6e-200, 1e-300])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_top_p_that_is_zero_in_float32_keeps_only_the_top_token(task_server, top_p, stream):
    url, _ = task_server
    greedy = post(url, "/v1/completions", {**COMPLETION, "temperature": 0, "ignore_eos": True}).json()
    body = {**COMPLETION, "top_p": top_p, "ignore_eos": True, "stream": stream}
    response = post(url, "/v1/completions", body)
    assert response.status_code == 200, response.text
    if stream:
        events = [json.loads(x[6:]) for x in response.text.splitlines() if x.startswith("data: {")]
        assert all("error" not in e for e in events) and response.text.rstrip().endswith("data: [DONE]")
        text = "".join(e["choices"][0]["text"] for e in events)
    else:
        text = response.json()["choices"][0]["text"]
    assert text == greedy["choices"][0]["text"]  # a nucleus of mass ~0 is the most likely token alone


def test_a_tiny_temperature_is_served(task_server):
    url, _ = task_server
    response = post(url, "/v1/completions", {**COMPLETION, "temperature": 1e-45, "ignore_eos": True})
    assert response.status_code == 200, response.text


def _fail_next_step(app):
    """The engine's next step fails every row in it, as a broken forward would."""
    engine = app.state.server.engine.engine
    step = engine.backend.step

    def failing():
        engine.backend.step = step
        scheduled = list(engine._states)
        raise StepFailed(scheduled) from RuntimeError("injected failure")

    engine.backend.step = failing


def test_an_engine_error_is_an_error_response_not_a_normal_finish(tiny_llama):
    with running_server(tiny_llama[0]) as (url, app):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=30, max_retries=0)
        _fail_next_step(app)
        with pytest.raises(openai.InternalServerError) as raised:
            client.completions.create(**COMPLETION)
        assert "injected failure" in raised.value.body["message"]

        _fail_next_step(app)
        with pytest.raises(openai.APIError, match="injected failure"):
            for _ in client.chat.completions.create(**CHAT, stream=True):
                pass
        response = httpx.post(f"{url}/v1/completions", json={**COMPLETION, "stream": True}, timeout=30)
        assert response.status_code == 200  # the engine goes on

        _fail_next_step(app)
        response = httpx.post(f"{url}/v1/completions", json={**COMPLETION, "stream": True}, timeout=30)
        events = [x for x in response.text.splitlines() if x.startswith("data: ")]
        last = json.loads(events[-1][6:])
        assert last["error"]["type"] == "server_error" and "injected failure" in last["error"]["message"]
        assert not any('"finish_reason": "stop"' in e for e in events)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert 'polyhead_requests_total{status="error",task="completion"} 2.0' in metrics  # plain and streamed
        assert 'polyhead_requests_total{status="error",task="chat"} 1.0' in metrics
