"""A live polyhead server on a free local port, around a tiny random model; stopped by the test."""

import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

from polyhead.engine.async_engine import AsyncEngine
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import make_engine

MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(model_folder, **settings):
    engine = AsyncEngine(make_engine(model_folder, max_model_len=128))
    settings.setdefault("default_max_tokens", 8)
    app = build_app(engine, ServerSettings(model_names=[MODEL], **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start in 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_llama):
    with running_server(tiny_llama[0]) as (url, _):
        yield url
