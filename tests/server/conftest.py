"""A live polyhead server on a free local port, around a tiny random model; stopped by the test."""

from contextlib import contextmanager

import pytest

from polyhead.engine.async_engine import AsyncEngine
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import free_port, make_engine, serve_in_thread

MODEL = "tiny"
__all__ = ["MODEL", "free_port", "running_server"]


@contextmanager
def running_server(model_folder, **settings):
    engine = AsyncEngine(make_engine(model_folder, max_model_len=128))
    settings.setdefault("default_max_tokens", 8)
    app = build_app(engine, ServerSettings(model_names=[MODEL], **settings))
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def server(tiny_llama):
    with running_server(tiny_llama[0]) as (url, _):
        yield url
