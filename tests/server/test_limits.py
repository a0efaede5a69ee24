"""Limits, deadlines, disconnects, auth and metrics: each returns its status in OpenAI's error
shape, and the server keeps serving others meanwhile."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.server.conftest import MODEL, MODES, free_port, running_server, wait_until_idle

LONG = {"model": MODEL, "prompt": "long", "max_tokens": 100, "temperature": 0, "ignore_eos": True}


def completion(url, timeout=30, **body):
    return httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", **body}, timeout=timeout)


def test_api_key_is_required_when_set(tiny_llama):
    with running_server(tiny_llama[0], api_key="sekret") as (url, _):
        assert completion(url).status_code == 401
        assert completion(url).json()["error"]["code"] == "invalid_api_key"
        ok = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
                        headers={"Authorization": "Bearer sekret"}, timeout=30)
        assert ok.status_code == 200
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # health needs no key


def test_body_too_large_is_413(tiny_llama):
    with running_server(tiny_llama[0], max_request_bytes=200) as (url, _):
        response = completion(url, prompt="x" * 500)
        assert response.status_code == 413 and "max_request_bytes" in response.json()["error"]["message"]
        assert completion(url, max_tokens=2).status_code == 200


def test_prompt_plus_max_tokens_beyond_context_is_400_naming_the_limit(server):
    response = completion(server, prompt="x" * 100, max_tokens=50)
    error = response.json()["error"]
    assert response.status_code == 400 and "max_model_len 128" in error["message"]
    assert error["code"] == "context_length_exceeded"


def test_full_queue_is_429_with_retry_after_and_others_finish(tiny_llama):
    async def burst(url):
        async with httpx.AsyncClient(timeout=60) as client:
            body = {**LONG, "max_tokens": 30}
            return await asyncio.gather(*(client.post(f"{url}/v1/completions", json=body) for _ in range(12)))

    with running_server(tiny_llama[0], max_queued_requests=2) as (url, _):
        responses = asyncio.run(burst(url))
        codes = [r.status_code for r in responses]
        assert 429 in codes and 200 in codes
        rejected = next(r for r in responses if r.status_code == 429)
        assert rejected.headers["retry-after"] == "1" and "max_queued_requests 2" in rejected.json()["error"]["message"]
        assert all(r.json()["usage"]["completion_tokens"] == 30 for r in responses if r.status_code == 200)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert 'polyhead_rejected_total{reason="queue_full"}' in metrics


def test_deadline_is_408_and_the_request_is_aborted(tiny_llama):
    with running_server(tiny_llama[0], request_timeout_s=0.05) as (url, app):
        response = completion(url, max_tokens=120, temperature=0, ignore_eos=True)
        assert response.status_code == 408 and response.json()["error"]["param"] == "timeout"
        stats = wait_until_idle(app.state.server.engine)
        assert stats.num_unfinished == 0 and stats.num_free_blocks == stats.num_blocks


@pytest.mark.parametrize("mode", MODES)
def test_client_disconnect_mid_stream_frees_the_request(tiny_llama, mode):
    with running_server(tiny_llama[0], mode) as (url, app):
        engine = app.state.server.engine
        with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "max_tokens": 120, "stream": True},
                          timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    assert engine.stats().num_unfinished == 1
                    break  # leave after the first chunk
        stats = wait_until_idle(engine)
        assert stats.num_unfinished == 0 and stats.num_free_blocks == stats.num_blocks
        assert completion(url, max_tokens=3).status_code == 200


def test_an_engine_that_cannot_be_restarted_fails_streams_and_health_not_hangs(tiny_llama, tmp_path, monkeypatch):
    """A dead engine process is restarted (tests/reliability/test_engine_restart.py); when the restarts
    fail too (here: its model folder is gone), every stream ends with an error, /health stays 503
    and new requests get a fast 503."""
    import shutil

    from polyhead.engine.client import supervision

    monkeypatch.setattr(supervision, "RESTART_BACKOFF_S", (0.05, 0.05))
    folder = shutil.copytree(tiny_llama[0], tmp_path / "model")
    with running_server(folder, "process") as (url, app):
        engine = app.state.server.engine
        os.kill(engine.pid, signal.SIGSTOP)  # frozen: the request below waits in the pipe, in flight
        with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}, timeout=60) as response:
            shutil.rmtree(folder)
            os.kill(engine.pid, signal.SIGKILL)
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        error = json.loads(events[-1][6:])["error"]
        assert "the engine process died (exit code -9)" in error["message"] and "2 restarts failed" in error["message"]
        health = httpx.get(f"{url}/health", timeout=30)
        assert health.status_code == 503 and "exit code -9" in health.json()["reason"]
        response = completion(url, max_tokens=3)
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_dead"


def test_metrics_count_requests_tokens_and_latency(server):
    completion(server, max_tokens=4, temperature=0, ignore_eos=True)
    text = httpx.get(f"{server}/metrics", timeout=30).text
    for name in ("polyhead_requests_total", "polyhead_queue_waiting", "polyhead_running_sequences",
                 "polyhead_kv_cache_usage_ratio", "polyhead_prefix_cache_hit_tokens_total",
                 "polyhead_time_to_first_token_seconds_bucket", "polyhead_time_per_output_token_seconds_bucket",
                 "polyhead_e2e_latency_seconds_bucket", "polyhead_generated_tokens_total",
                 "polyhead_batch_tokens_bucket"):
        assert name in text, name
    assert 'polyhead_requests_total{status="ok",task="completion"}' in text


def test_sigterm_drains_in_flight_requests_then_exits(tiny_llama):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "polyhead.cli", "serve", "--model", str(tiny_llama[0]), "--served-model-name", MODEL,
         "--port", str(port), "--dtype", "float32", "--kv-cache-memory", "16MiB", "--shutdown-grace", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "max_tokens": 60, "stream": True},
                          timeout=60) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        finish = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in rest[:-1]]
        assert finish[-1] == "length"  # it ran to the end although SIGTERM came mid-stream
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is SIGTERM's
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
