"""HTTP details a client or a proxy relies on: Allow on 405, auth scheme case, invalid JSON reported
as such, disconnected streams counted, and no text/plain 500 even from a bug."""

import time

import httpx
import pytest

from tests.server.conftest import MODEL, running_server

LONG = {"model": MODEL, "prompt": "long", "max_tokens": 100, "temperature": 0, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def served(tiny_llama):
    with running_server(tiny_llama[0], api_key="sekret") as (url, app):
        yield url, app


AUTH = {"Authorization": "Bearer sekret"}


def test_405_names_the_allowed_methods(served):
    url, _ = served
    response = httpx.get(f"{url}/v1/completions", headers=AUTH, timeout=30)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(served, scheme):
    url, _ = served
    response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"{scheme} sekret"}, timeout=30)
    assert response.status_code == 200


@pytest.mark.parametrize("header", ["sekret", "Basic sekret", "Bearer wrong", "Bearersekret"])
def test_other_credentials_are_refused(served, header):
    url, _ = served
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": header}, timeout=30).status_code == 401


def test_invalid_json_is_reported_as_such(served):
    url, _ = served
    response = httpx.post(f"{url}/v1/completions", content=b'{"model": "tiny", "prompt": ', timeout=30,
                          headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] is None and error["code"] == "invalid_json"
    assert "not valid JSON" in error["message"] and "character 28" in error["message"]


def test_an_unexpected_error_is_a_json_500(served, monkeypatch):
    url, app = served
    state = app.state.server

    def broken(name):
        raise RuntimeError("a bug")

    monkeypatch.setattr(state, "resolve_generate", broken)
    response = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"}, headers=AUTH, timeout=30)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "server_error"


def requests_total(url, status: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("polyhead_requests_total{") and f'status="{status}"' in line)


def test_a_disconnected_stream_is_counted(served):
    url, _ = served
    before = requests_total(url, "aborted")
    with httpx.stream("POST", f"{url}/v1/completions", json=LONG, headers=AUTH, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first chunk
    deadline = time.monotonic() + 10
    while requests_total(url, "aborted") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests_total(url, "aborted") == before + 1


def test_stream_error_events_say_what_failed():
    from polyhead.engine.client.engine_client import EngineDeadError
    from polyhead.engine.client.supervision import EngineRestartedError
    from polyhead.server.errors import error_chunk, exception_chunk

    assert exception_chunk(EngineDeadError("gone"))["error"]["code"] == "engine_dead"
    assert exception_chunk(EngineRestartedError("twice"))["error"] == {
        "message": "the engine is not running: twice", "type": "service_unavailable", "param": None,
        "code": "engine_restarted"}
    assert exception_chunk(RuntimeError("boom"))["error"]["code"] == "engine_error"
    assert error_chunk("late", 408, "timeout")["error"]["type"] == "timeout_error"
