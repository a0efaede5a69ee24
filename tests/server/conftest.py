"""A live polyhead server on a free local port, around a tiny random model; stopped by the test.
`mode` picks where the engine steps: "thread" (a thread of this process) or "process" (a child)."""

import time
from contextlib import contextmanager

import pytest

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.client.process_engine import ProcessEngine
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import free_port, make_engine, serve_in_thread

MODEL = "tiny"
MODES = ["thread", "process"]
__all__ = ["MODEL", "MODES", "free_port", "running_server", "wait_until_idle"]


@contextmanager
def running_server(model_folder, mode: str = "thread", **settings):
    if mode == "process":
        engine = ProcessEngine.from_config(EngineConfig(model=str(model_folder), dtype="float32",
                                                        kv_cache_memory="16MiB", max_model_len=128))
    else:
        engine = AsyncEngine(make_engine(model_folder, max_model_len=128))
    settings.setdefault("default_max_tokens", 8)
    app = build_app(engine, ServerSettings(model_names=[MODEL], **settings))
    with serve_in_thread(app, start_timeout_s=60) as url:
        yield url, app


def wait_until_idle(engine, timeout_s: float = 10):
    """The engine's stats once no request is left in it (or after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while (stats := engine.stats()).num_unfinished and time.monotonic() < deadline:
        time.sleep(0.05)
    return stats


@pytest.fixture(scope="module")
def server(tiny_llama):
    with running_server(tiny_llama[0]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def process_server(tiny_llama):
    with running_server(tiny_llama[0], "process") as (url, _):
        yield url


@pytest.fixture(params=MODES)
def any_server(request):
    """The module's server in each engine mode."""
    return request.getfixturevalue("server" if request.param == "thread" else "process_server")
