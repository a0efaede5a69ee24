"""The playground behind a path prefix with an API key, and while the engine restarts: a server of
its own for each, on the tiny random model."""

import threading

import httpx
import pytest

from polyhead.config import EngineConfig
from polyhead.engine.client import supervision
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import make_engine, serve_in_thread
from tests.reliability.test_thread_engine_restart import die_once
from tests.server.conftest import MODEL
from tests.web.conftest import open_page, screenshot, served_under_prefix

KEY = "sekret"


@pytest.fixture(scope="module")
def keyed_prefixed_server(tiny_llama):
    engine = AsyncEngine(make_engine(tiny_llama[0], max_model_len=128))
    app = build_app(engine, ServerSettings(model_names=[MODEL], api_key=KEY, default_max_tokens=6))
    try:
        with served_under_prefix(app, "/polyhead") as url:
            yield url
    finally:
        engine.stop()


def test_api_key_flow_behind_a_path_prefix(page, keyed_prefixed_server, tmp_path):
    url = keyed_prefixed_server
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    open_page(page, f"{url}/")
    assert "API key" in page.text_content("#notice")  # /v1/models answered 401: said plainly
    page.fill("#chat-input", "hi")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".message.assistant.failed")
    assert "wants an API key" in page.text_content(".message.assistant .meta")
    screenshot(page, tmp_path, "api-key")

    page.click("#chat-clear")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#chat-model option[value='tiny']", state="attached")
    assert page.is_hidden("#notice")
    page.fill("#chat-input", "hi")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".message.assistant .actions button")
    assert page.locator(".message.assistant.failed").count() == 0
    assert page.evaluate("sessionStorage.getItem('polyhead.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    assert all(u.startswith(f"{url}/") for u in requested if u.startswith("http")), "a request left the prefix"
    assert f"{url}/v1/chat/completions" in requested

    page.reload()  # the same tab keeps the key for its session
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#api-key") == KEY
    fresh = page.context.browser.new_context().new_page()  # another session has none
    fresh.goto(f"{url}/")
    fresh.wait_for_selector("body[data-ready=true]")
    assert fresh.input_value("#api-key") == "" and "API key" in fresh.text_content("#notice")
    fresh.context.close()

    page.click("#key-forget")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_restarting_engine_is_said_plainly_and_escape_stops_a_reply(page, tiny_llama, monkeypatch):
    monkeypatch.setattr(supervision, "RESTART_BACKOFF_S", (2.5,))  # long enough for the page to see it
    engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                  kv_cache_memory="16MiB", max_model_len=128))
    app = build_app(engine, ServerSettings(model_names=[MODEL], default_max_tokens=6))
    try:
        with serve_in_thread(app, start_timeout_s=60) as url:
            open_page(page, f"{url}/#dashboard")
            status = f'[data-backbone="{MODEL}"] [data-figure="status"]'
            page.wait_for_selector(f'{status}:text("running")')
            die_once(engine.engine)  # the next step kills the loop; a new engine replaces it
            request = threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",),
                                       kwargs={"json": {"model": MODEL, "prompt": "hi"}, "timeout": 60})
            request.start()
            page.wait_for_selector(f'{status}:text("restarting")')
            assert f"The engine of {MODEL} is restarting" in page.text_content("#notice")
            # a chat sent now waits for the new engine: Escape stops it (keyboard only)
            page.click("#tab-chat")
            page.fill("#chat-input", "hi")
            page.press("#chat-input", "Enter")
            page.wait_for_selector("#chat-stop-button:enabled")
            page.keyboard.press("Escape")
            page.wait_for_selector('.message.assistant.failed .meta:text("Stopped.")')
            assert page.is_enabled("#chat-send") and page.is_disabled("#chat-stop-button")
            page.click("#tab-dashboard")
            page.wait_for_selector(f'{status}:text("running")')
            page.wait_for_selector("#notice", state="hidden")
            assert page.get_attribute(f'[data-backbone="{MODEL}"] [data-figure="restarts"]', "data-value") == "1"
            request.join(60)
    finally:
        engine.stop()
