"""The engine's deadline is the request's deadline: a request the scheduler finishes as timed out
(finish reason "timeout") is a 408 on every endpoint, streamed or not, and its blocks are free."""

import json
import time

import httpx

from tests.server.conftest import MODEL, running_server
from tests.server.task_fixtures import bert, manifest_dir, running_task_server  # noqa: F401 - fixtures


def skew_engine_clock(async_engine) -> None:
    """Every deadline has passed in the engine's eyes, while the server's own timer (600 s) has not:
    only the engine can be the one that ends these requests."""
    async_engine.engine.backend.scheduler.clock = lambda: time.monotonic() + 3600


def assert_all_free(async_engine) -> None:
    engine = async_engine.engine
    stop = time.monotonic() + 10
    while engine.has_unfinished_requests() and time.monotonic() < stop:
        time.sleep(0.02)
    assert not engine.has_unfinished_requests()
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks


def test_engine_timeout_is_408_for_completions_streamed_or_not(tiny_llama):
    with running_server(tiny_llama[0]) as (url, app):
        async_engine = app.state.server.engine
        skew_engine_clock(async_engine)
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 50, "ignore_eos": True, "timeout": 30}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 408, response.text
        error = response.json()["error"]
        assert error["param"] == "timeout" and error["type"] == "timeout_error" and "30 s" in error["message"]

        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": True,
                "ignore_eos": True}) as streamed:
            events = [json.loads(line[6:]) for line in streamed.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        assert events[-1]["error"]["type"] == "timeout_error" and "deadline" in events[-1]["error"]["message"]
        assert not any(c.get("finish_reason") for e in events[:-1] for c in e.get("choices", []))
        assert_all_free(async_engine)
        assert 'status="timeout"' in httpx.get(f"{url}/metrics", timeout=30).text


def test_engine_timeout_is_408_for_classify(manifest_dir, tiny_llama):  # noqa: F811
    with running_task_server(manifest_dir[1], tiny_llama[0]) as (url, app):
        async_engine = app.state.server.engine
        skew_engine_clock(async_engine)
        response = httpx.post(f"{url}/v1/classify", json={"task": "sentiment", "input": ["good", "bad"]},
                              timeout=30)
        assert response.status_code == 408, response.text
        assert response.json()["error"]["code"] == "timeout"
        assert_all_free(async_engine)
