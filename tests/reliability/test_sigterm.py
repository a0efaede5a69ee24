"""SIGTERM drains: the socket stays open and new requests get 503 (OpenAI's shape, Retry-After)
while the requests in flight finish; then the server exits."""

import json
import signal
import time

import httpx
import psutil

from tests.reliability.conftest import MODEL, assert_openai_error, cli_server


def engine_children(process) -> list[psutil.Process]:
    return [child for child in psutil.Process(process.pid).children()
            if "spawn_main" in " ".join(child.cmdline())]


def test_sigterm_answers_new_requests_503_while_in_flight_ones_finish(tiny_llama):
    with cli_server(tiny_llama[0], "--engine-mode", "process", "--shutdown-grace", "20") as (url, process):
        [engine] = engine_children(process)
        body = {"model": MODEL, "prompt": "long", "max_tokens": 20, "temperature": 0, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            engine.suspend()  # the stream stays in flight for as long as the test needs
            try:
                process.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                assert process.poll() is None
                for _ in range(3):  # new connections, not refused
                    late = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=10)
                    assert_openai_error(late, 503, "shutting_down")
                    assert late.headers["retry-after"] == "1"
                assert httpx.get(f"{url}/health", timeout=10).status_code == 503  # out of the load balancer
            finally:
                engine.resume()
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean exit
