"""The playground's routes over plain HTTP (no browser): the page and its assets from package data,
--no-web, /web/config.json, /stats, and the public paths behind a path prefix with an API key."""

import re
import threading
import time

import httpx
import pytest
import uvicorn

from polyhead.cli import build_parser
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.server.app import ServerSettings, build_app
from polyhead.server.live_stats import LATENCY_WINDOW_S, RATE_WINDOW_S, LiveStats, percentile
from polyhead.server.playground import WEB_FOLDER
from polyhead.server.registry import TaskRegistry
from tests.conftest import free_port, make_engine
from tests.server.conftest import MODEL, running_server
from tests.web.conftest import served_under_prefix


def test_page_and_every_asset_it_names_are_served(task_server):
    url, _ = task_server
    page = httpx.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(web/[^"]+)"', page.text)
    for script in sorted(WEB_FOLDER.glob("js/*.js")):  # what the modules import, relative to js/
        assets += [f"web/js/{name}" for name in re.findall(r'from "\./([\w.]+)"', script.read_text())]
        assets += [f"web/{name}" for name in re.findall(r'from "\.\./([\w./]+)"', script.read_text())]
    assert "web/js/main.js" in assets and "web/vendor/uPlot.esm.js" in assets
    for asset in set(assets):
        response = httpx.get(f"{url}/{asset}", timeout=30)
        assert response.status_code == 200, asset
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text), "the page loads nothing from elsewhere"
    for path in ("/web/js/nope.js", "/web/..%2f..%2fapp.py", "/web/%2e%2e/playground.py"):
        missing = httpx.get(f"{url}{path}", timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error", path
    wrong_method = httpx.post(f"{url}/", json={}, timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"


def test_no_web_serves_no_page_but_keeps_the_api_and_stats(tiny_llama):
    with running_server(tiny_llama[0], web=False) as (url, _):
        for path in ("/", "/web/js/main.js", "/web/config.json"):
            response = httpx.get(f"{url}{path}", timeout=30)
            assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error", path
        assert httpx.get(f"{url}/stats", timeout=30).status_code == 200
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 200


def test_config_names_the_defaults_the_server_applies(task_server):
    url, _ = task_server
    config = httpx.get(f"{url}/web/config.json", timeout=30).json()
    assert config["api_key_required"] is False and config["default_model"] == MODEL
    assert config["sampling_defaults"]["temperature"] == 1.0 and config["sampling_defaults"]["max_tokens"] == 8
    assert config["task_sampling"]["shout"] == {"max_tokens": 5, "temperature": 0.0}
    generative = {name: b["generative"] for name, b in config["backbones"].items()}
    assert generative[MODEL] is True and False in generative.values()  # the tiny BERT


def test_stats_after_a_chat_and_a_classify(task_server):
    url, _ = task_server
    chat = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "ignore_eos": True})
    assert chat.status_code == 200
    assert httpx.post(f"{url}/v1/classify", json={"task": "sentiment", "input": "fine"}, timeout=60).status_code == 200
    stats = httpx.get(f"{url}/stats", timeout=30).json()
    assert stats["rate_window_s"] == RATE_WINDOW_S and stats["latency_window_s"] == LATENCY_WINDOW_S
    tiny = stats["backbones"][MODEL]
    assert tiny["status"] == "running" and tiny["generative"] is True
    assert tiny["tokens_per_s"] > 0 and tiny["steps_per_s"] > 0  # the chat's steps are within the window
    assert tiny["rows_per_step"]["generate"] > 0 and tiny["rows_per_step"]["classify"] > 0
    assert 0 <= tiny["kv_cache_usage"] <= 1 and 0 <= tiny["prefix_hit_rate"] <= 1
    assert 0 <= tiny["mixed_step_share"] <= 1
    chat_figures = stats["tasks"]["chat"]
    assert chat_figures["requests"] >= 1 and 0 < chat_figures["ttft_p50"] <= chat_figures["ttft_p99"]
    assert 0 < chat_figures["tpot_p50"] <= chat_figures["tpot_p99"]
    assert stats["tasks"]["sentiment"]["ttft_p50"] is None  # a pooling request has no first token


def test_stats_in_process_mode(tiny_llama):
    with running_server(tiny_llama[0], "process") as (url, _):
        response = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4,
                                                             "ignore_eos": True}, timeout=60)
        assert response.status_code == 200
        stats = httpx.get(f"{url}/stats", timeout=30).json()
    tiny = stats["backbones"][MODEL]
    assert tiny["status"] == "running" and tiny["tokens_per_s"] > 0 and tiny["rows_per_step"]["generate"] > 0
    assert stats["tasks"]["completion"]["requests"] == 1 and stats["tasks"]["completion"]["ttft_p50"] > 0


def test_live_stats_windows_and_percentiles():
    now = [100.0]
    live = LiveStats(clock=lambda: now[0])
    registry = TaskRegistry({}, {}, "none")
    for i, ttft in enumerate([0.5, 0.1, 0.3, 0.2]):
        now[0] = 100.0 + i
        live.record_request("chat", ttft, ttft / 10, 10)
    figures = live.snapshot(registry)["tasks"]["chat"]
    assert figures["requests"] == 4 and figures["ttft_p50"] == 0.2 and figures["ttft_p99"] == 0.5
    assert figures["output_tokens_per_s"] == pytest.approx(40 / RATE_WINDOW_S)
    now[0] = 103.0 + LATENCY_WINDOW_S - 0.5  # the first three have left the latency window
    figures = live.snapshot(registry)["tasks"]["chat"]
    assert figures["requests"] == 1 and figures["ttft_p50"] == figures["ttft_p99"] == 0.2
    assert figures["output_tokens_per_s"] == 0  # and every one has left the rate window
    assert percentile([], 50) is None and percentile([1.0, 2.0], 50) == 1.0 and percentile([1.0, 2.0], 51) == 2.0


def test_behind_a_prefix_with_an_api_key_the_page_is_public_and_the_api_is_not(tiny_llama):
    engine = AsyncEngine(make_engine(tiny_llama[0], max_model_len=128))
    app = build_app(engine, ServerSettings(model_names=[MODEL], api_key="sekret", default_max_tokens=4))
    try:
        with served_under_prefix(app, "/polyhead") as url:
            for path in ("/", "/web/js/main.js", "/web/config.json", "/stats", "/health", "/metrics"):
                assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path
            assert httpx.get(f"{url}/web/config.json", timeout=30).json()["api_key_required"] is True
            denied = httpx.get(f"{url}/v1/models", timeout=30)
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
            models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sekret"}, timeout=30)
            assert models.status_code == 200 and models.json()["data"][0]["id"] == MODEL
    finally:
        engine.stop()


def test_uvicorn_root_path_as_serve_sets_it(tiny_llama):
    """`polyhead serve --root-path /polyhead` behind a proxy that strips the prefix: uvicorn puts it
    back in front of the path, and the routes and the public paths still match."""
    engine = AsyncEngine(make_engine(tiny_llama[0], max_model_len=128))
    app = build_app(engine, ServerSettings(model_names=[MODEL], api_key="sekret"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           root_path="/polyhead"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{server.config.port}"  # what the proxy forwards to: the prefix stripped
        for path in ("/", "/web/js/main.js", "/health", "/stats"):
            assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sekret"}, timeout=30).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
        engine.stop()


def test_serve_flags_parse():
    args = build_parser().parse_args(["serve", "--no-web", "--root-path", "/polyhead/"])
    assert args.no_web is True and args.root_path == "/polyhead/"
    args = build_parser().parse_args(["serve"])
    assert args.no_web is False and args.root_path == ""
