"""docs/img/web-*.png, the README's screenshots: the real default model behind `polyhead serve --tasks
default`, each view after real use. Runs only with POLYHEAD_WEB_SCREENSHOTS=1 (about a minute on two
cores): `POLYHEAD_WEB_SCREENSHOTS=1 python -m pytest tests/web/test_screenshots.py`."""

import threading

import httpx
import pytest

from polyhead.cli import build_parser, build_task_registry
from polyhead.models.registry import DEFAULT_MODEL
from polyhead.server.app import ServerSettings, build_app
from tests.conftest import serve_in_thread
from tests.web.conftest import WRITES_DOC_SCREENSHOTS, open_page, screenshot

pytestmark = [pytest.mark.model, pytest.mark.skipif(not WRITES_DOC_SCREENSHOTS,
                                                    reason="writes docs/img: set POLYHEAD_WEB_SCREENSHOTS=1")]
REVIEW = "The parcel arrived two weeks late and the box was torn, but support refunded me within an hour."
TEXTS = ["A cat sat on the mat.", "A kitten slept on the rug.", "Stock markets fell sharply today.",
         "Shares dropped after the report."]


@pytest.fixture(scope="module")
def default_server():
    args = build_parser().parse_args(["serve", "--tasks", "default", "--engine-mode", "thread",
                                      "--kv-cache-memory", "256MiB", "--default-max-tokens", "64"])
    registry = build_task_registry(args, DEFAULT_MODEL)
    app = build_app(registry.backbones[registry.default_backbone].engine,
                    ServerSettings(model_names=[DEFAULT_MODEL], default_max_tokens=64), registry)
    try:
        with serve_in_thread(app, start_timeout_s=120) as url:
            yield url
    finally:
        registry.stop()


def test_screenshots_of_each_view(page, default_server, tmp_path):
    url = default_server
    page.set_default_timeout(120_000)  # the real model on a shared CPU
    open_page(page, url)
    page.select_option("#chat-model", "chat")
    page.fill("#chat-system", "You are a concise assistant.")
    page.fill("#chat-temperature", "0.2")
    page.fill("#chat-input", "Write a haiku about the sea.")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".message.assistant .actions button")
    assert page.text_content(".message.assistant .content").strip()
    screenshot(page, tmp_path, "chat", for_docs=True)

    page.click("#tab-tasks")
    page.fill("#tasks-input", REVIEW)
    page.click("#tasks-run")
    page.wait_for_selector('figure.classify[data-task="topic"]')
    page.select_option("#embed-model", "embed")
    page.fill("#embed-input", "\n".join(TEXTS))
    page.click("#embed-run")
    page.wait_for_selector("table.heatmap")
    screenshot(page, tmp_path, "tasks", for_docs=True)

    stop = threading.Event()

    def load(body_path: str, body: dict):
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                client.post(f"{url}{body_path}", json=body)

    loads = [("/v1/chat/completions", {"model": "chat", "max_tokens": 32,
                                       "messages": [{"role": "user", "content": "Name three rivers."}]})] * 3
    loads += [("/v1/classify", {"tasks": ["sentiment", "topic"], "input": REVIEW}),
              ("/v1/embeddings", {"model": "embed", "input": TEXTS})]
    threads = [threading.Thread(target=load, args=item) for item in loads]
    for thread in threads:
        thread.start()
    try:
        page.click("#tab-dashboard")
        page.wait_for_selector('#latency-table tr[data-task="chat"]')
        page.wait_for_timeout(8000)  # lines over several seconds of load
        screenshot(page, tmp_path, "dashboard", for_docs=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.click("#tab-chat")
    page.click("#chat-settings summary")  # folded on a narrow window
    page.select_option("#chat-model", "chat")
    page.fill("#chat-temperature", "0.2")
    page.click("#chat-settings summary")
    page.fill("#chat-input", "What is a KV cache, in one sentence?")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".message.assistant .actions button")
    screenshot(page, tmp_path, "narrow", for_docs=True)
