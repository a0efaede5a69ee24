"""Limits at the door: a body is measured as it arrives (chunked too), slow headers and slow bodies
lose their connection in bounded time, keep-alive and concurrency limits are the flags', and a large
input is tokenized off the event loop so /health keeps answering."""

import socket
import threading
import time

import httpx
import pytest

from tests.reliability.conftest import MODEL, assert_openai_error, cli_server
from tests.server.conftest import running_server

LIMIT_BYTES, TIMEOUT_S, CONCURRENCY = 4096, 1, 30


@pytest.fixture(scope="module")
def door(tiny_llama):
    with cli_server(tiny_llama[0], "--engine-mode", "thread", "--max-request-bytes", str(LIMIT_BYTES),
                    "--header-read-timeout", str(TIMEOUT_S), "--body-read-timeout", str(TIMEOUT_S),
                    "--timeout-keep-alive", str(TIMEOUT_S), "--limit-concurrency", str(CONCURRENCY)) as (url, _):
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def is_closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True once the server closes the connection (EOF or reset), False if it is still open after within_s."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_chunked_body_over_the_limit_is_413_naming_the_flag(door):
    def body():  # no Content-Length: httpx sends it chunked
        yield b'{"model": "' + MODEL.encode() + b'", "max_tokens": 1, "prompt": "'
        for _ in range(3):
            yield b"x" * LIMIT_BYTES
        yield b'"}'

    response = httpx.post(f"{door}/v1/completions", content=body(), headers={"content-type": "application/json"},
                          timeout=30)
    assert "content-length" not in response.request.headers
    error = assert_openai_error(response, 413, "request_too_large")
    assert f"the limit is {LIMIT_BYTES}" in error["message"] and "--max-request-bytes" in error["message"]
    small = httpx.post(f"{door}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}, timeout=30)
    assert small.status_code == 200


def test_slowloris_connections_are_closed_after_the_header_timeout(door):
    sockets = [connect(door) for _ in range(20)]
    start = time.monotonic()
    for sock in sockets:  # a request line and one header, the rest never comes
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    time.sleep(TIMEOUT_S / 2)
    for sock in sockets:  # a byte now and then keeps no connection open past the header timeout
        sock.sendall(b"X")
    closed = [is_closed_by_server(sock, max(0.1, TIMEOUT_S + 3 - (time.monotonic() - start))) for sock in sockets]
    assert all(closed), f"{closed.count(False)} of 20 slowloris connections still open"
    assert time.monotonic() - start < TIMEOUT_S + 3
    assert httpx.get(f"{door}/health", timeout=5).status_code == 200


def test_a_body_that_does_not_arrive_is_408_and_the_connection_closed(door):
    sock = connect(door)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"model\":")
    sock.settimeout(TIMEOUT_S + 3)
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in reply
    assert b"--body-read-timeout" in reply


def test_idle_keep_alive_connection_is_closed_after_the_flag(door):
    sock = connect(door)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    assert is_closed_by_server(sock, within_s=TIMEOUT_S + 3)
    assert time.monotonic() - start >= TIMEOUT_S * 0.8


def test_connections_beyond_limit_concurrency_get_503(door):
    idle = [connect(door) for _ in range(CONCURRENCY)]
    try:
        time.sleep(0.2)  # all accepted
        refused = httpx.get(f"{door}/health", timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        error = refused.json()["error"]  # OpenAI's shape, not uvicorn's plain text
        assert error["code"] == "too_many_connections" and "--limit-concurrency" in error["message"], error
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{door}/health", timeout=5).status_code == 200


def test_large_inputs_are_tokenized_off_the_event_loop(tiny_llama):
    with running_server(tiny_llama[0], max_request_bytes=1 << 22) as (url, app):
        server = app.state.server
        threads = []
        prepare, template = server.engine.prepare, server.tokenizer.apply_chat_template

        def spy(fn):
            def call(*args, **kwargs):
                threads.append(threading.current_thread().name)
                return fn(*args, **kwargs)
            return call

        server.engine.prepare, server.tokenizer.apply_chat_template = spy(prepare), spy(template)
        try:
            big = "hello " * 50_000
            httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": big, "max_tokens": 1}, timeout=60)
            httpx.post(f"{url}/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": big}], "max_tokens": 1}, timeout=60)
            assert len(threads) == 3  # completion: prepare; chat: the template, then prepare
            assert all(name.startswith("polyhead-tokenize") for name in threads), threads
            threads.clear()
            httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}, timeout=30)
            assert len(threads) == 1 and not threads[0].startswith("polyhead-tokenize")  # small: on the loop
        finally:
            server.engine.prepare, server.tokenizer.apply_chat_template = prepare, template
