"""`polyhead bench serve` without a model: statistics, SSE parsing, and the load loop against a fake
OpenAI-style server that this module starts on a free local port."""

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from polyhead.bench.report import RequestResult, markdown_table, percentile, summarize_level
from polyhead.bench.serve import (
    SSEParser,
    make_prompts,
    read_payload,
    request_body,
    run_closed_level,
    send_request,
)
from polyhead.cli import main
from tests.conftest import serve_in_thread

NUM_CHUNKS = 5  # text chunks per streamed reply, 10 ms apart
TOKENS_PER_CHUNK = 2  # what the fake usage reports, so counting chunks instead would show
LENGTH_HINTS = ("ignore_eos", "min_tokens", "n_predict")


def fake_app(state: dict) -> FastAPI:
    """Streams NUM_CHUNKS chunks per request; every 4th POST gets HTTP 500; `strict` rejects extra fields."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    async def reply(request: Request, chat: bool):
        body = await request.json()
        state["posts"] += 1
        state["bodies"].append(body)
        if state["strict"] and any(key in body for key in LENGTH_HINTS):
            return JSONResponse({"detail": "Unexpected fields in the request"}, status_code=422)
        if state["posts"] % 4 == 0:
            return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)

        async def events():
            if chat:  # a role-only first delta carries no text, so it must not count as the first token
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'role': 'assistant'}}]})}\n\n"
            for i in range(NUM_CHUNKS):
                await asyncio.sleep(state["delay"])
                choice = {"index": 0, "delta": {"content": f"w{i} "}} if chat else {"index": 0, "text": f"w{i} "}
                yield f"data: {json.dumps({'choices': [choice]})}\n\n"
            if not chat and body.get("stream_options", {}).get("include_usage"):
                usage = {"prompt_tokens": 7, "completion_tokens": NUM_CHUNKS * TOKENS_PER_CHUNK}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await reply(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await reply(request, chat=True)

    return app


@pytest.fixture(scope="module")
def fake_server():
    state = {}
    with serve_in_thread(fake_app(state)) as url:
        yield url, state


@pytest.fixture
def server(fake_server):
    url, state = fake_server
    state.clear()
    state.update(posts=0, bodies=[], strict=False, delay=0.01)
    return url, state


def test_percentile_matches_linear_interpolation():
    values = list(range(100, 0, -1))  # 1..100, unsorted on purpose
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([0.0, 10.0], 25) == pytest.approx(2.5)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_summarize_level_counts_errors_and_times_tokens():
    results = [RequestResult(1.0, 0.1, 10), RequestResult(2.0, 0.2, 19), RequestResult(0.5, 0.5, 1),
               RequestResult(0.3, error="HTTP 500: boom")]
    row = summarize_level(results, wall_s=2.0, concurrency=4)
    assert (row["num_requests"], row["num_ok"], row["num_errors"]) == (4, 3, 1)
    assert row["requests_per_s"] == pytest.approx(1.5)
    assert row["output_tok_s"] == pytest.approx(15.0)  # (10 + 19 + 1) / 2 s
    assert row["tpot_p50_ms"] == pytest.approx(100.0)  # one-token reply has no TPOT; the others are 0.1 s
    assert row["ttft_p50_s"] == pytest.approx(0.2)
    assert row["e2e_p99_s"] == pytest.approx(1.98)
    assert row["error_samples"] == ["HTTP 500: boom"]
    table = markdown_table([row])
    assert table.splitlines()[0].startswith("| concurrency |")
    assert "| 4 | 1.50 | 15.0 |" in table and "| 1/4 |" in table
    open_row = summarize_level([RequestResult(1.0, error="x")], wall_s=1.0, rate=2.5)
    assert open_row["ttft_p50_s"] is None and open_row["requests_per_s"] == 0.0
    assert markdown_table([open_row]).splitlines()[0].startswith("| rate (req/s) |")


STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"id":"c1","object":"text_completion","choices":[{"index":0,"text":"Hel"}]}\r\n\r\n'
    + 'data: {"id":"c1","choices":[{"index":0,"text":"lo w\u00f6rld"}]}\n\n'.encode()
    + b'data: {"id":"c1","choices":[{"index":0,"text":"","finish_reason":"length"}]}\n\n'
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_sse_parser_survives_any_chunking(size):
    parser = SSEParser()
    payloads = []
    for i in range(0, len(STREAM), size):  # cuts land inside "data:", inside "\r\n" and inside the "ö"
        payloads += parser.feed(STREAM[i:i + size])
    assert len(payloads) == 5 and payloads[-1] == "[DONE]"
    parsed = [read_payload(json.loads(p)) for p in payloads[:-1]]
    assert "".join(text for text, _, _ in parsed) == "Hello w\u00f6rld"
    assert parsed[-1][1]["completion_tokens"] == 3
    assert all(error is None for _, _, error in parsed)


def test_sse_parser_joins_multiline_data_and_reads_chat_and_errors():
    assert SSEParser().feed(b"data: a\ndata: b\n\ndata: c") == ["a\nb"]  # "c" waits for its blank line
    assert read_payload({"choices": [{"delta": {"content": "hi"}}]}) == ("hi", None, None)
    assert read_payload({"error": {"message": "too long"}}) == ("", None, "too long")


def test_prompts_are_seeded_and_near_input_len():
    prompts = make_prompts(6, 1000, seed=3)
    assert prompts == make_prompts(6, 1000, seed=3) != make_prompts(6, 1000, seed=4)
    assert all(len(p.split()) == 750 for p in prompts)  # wraps around the fixed text
    chat = request_body("chat", "m", "hello", 8, length_hints=False)
    assert chat["messages"] == [{"role": "user", "content": "hello"}] and "prompt" not in chat
    assert not any(key in chat for key in LENGTH_HINTS) and chat["stream"] is True


class Counter:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


def test_load_loop_times_each_request_and_survives_failures(server):
    url, state = server
    body = request_body("chat", "fake-model", "hello", NUM_CHUNKS)

    async def go(timeout):
        async with httpx.AsyncClient(base_url=url) as client:
            progress = Counter()
            results = await run_closed_level(client, "/v1/chat/completions", [body] * 8, 3, timeout, progress)
            return results, progress.n

    results, done = asyncio.run(go(10.0))
    assert done == 8 and state["posts"] == 8
    errors = [r for r in results if r.error]
    assert len(errors) == 2 and all(r.error.startswith("HTTP 500") for r in errors)
    for r in results:
        if r.error is None:
            assert 0.009 <= r.ttft_s <= r.e2e_s
            assert r.e2e_s - r.ttft_s >= 0.035  # four more 10 ms gaps after the first chunk
            assert r.output_tokens == NUM_CHUNKS  # no usage on chat here: text chunks are counted
    state["delay"] = 0.5
    slow = asyncio.run(send_request_once(url, body, timeout=0.05))
    assert slow.error == "timeout after 0.05 s" and slow.e2e_s < 0.4


async def send_request_once(url, body, timeout):
    async with httpx.AsyncClient(base_url=url) as client:
        return await send_request(client, "/v1/chat/completions", body, timeout)


def test_cli_closed_loop_writes_table_json_and_plot(server, tmp_path, capsys):
    url, state = server
    out_json, out_png = tmp_path / "serve.json", tmp_path / "serve.png"
    assert main(["bench", "serve", "--url", url + "/", "--concurrency", "1,4", "--num-requests", "8",
                 "--input-len", "16", "--output-len", "5", "--label", "fake", "--json", str(out_json),
                 "--plot", str(out_png)]) == 0
    # POSTs: one warm-up, then 8 per level; every 4th fails, so each level sees exactly 2 errors
    assert state["posts"] == 17
    body = state["bodies"][-1]
    assert body["model"] == "fake-model" and body["stream"] and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["min_tokens"], body["n_predict"], body["ignore_eos"]) == (5, 5, 5, True)
    assert len(body["prompt"].split()) == 12
    report = json.loads(out_json.read_text())
    assert [row["concurrency"] for row in report["rows"]] == [1, 4]
    for row in report["rows"]:
        assert (row["num_ok"], row["num_errors"]) == (6, 2)
        assert row["mean_output_tokens"] == NUM_CHUNKS * TOKENS_PER_CHUNK  # from usage, not chunk count
        assert row["ttft_p99_s"] <= row["e2e_p99_s"] and row["output_tok_s"] > 0
    assert report["label"] == "fake" and report["machine"]["cpu_count"] >= 1 and report["args"]["length_hints"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "| 4 |" in printed and "\n$ " in printed


def test_cli_open_loop_drops_hints_for_a_strict_server(server, tmp_path):
    url, state = server
    state["strict"] = True
    out_json = tmp_path / "open.json"
    assert main(["bench", "serve", "--url", url, "--model", "m", "--endpoint", "chat", "--rate", "200",
                 "--num-requests", "4", "--output-len", "5", "--json", str(out_json)]) == 0
    # POSTs: warm-up refused (422), plain warm-up, then 4 requests of which the 4th POST fails
    assert state["posts"] == 6
    assert not any(key in body for body in state["bodies"][1:] for key in LENGTH_HINTS)
    report = json.loads(out_json.read_text())
    (row,) = report["rows"]
    assert (row["rate"], row["concurrency"], row["num_ok"], row["num_errors"]) == (200.0, None, 3, 1)
    assert row["mean_output_tokens"] == NUM_CHUNKS and report["args"]["length_hints"] is False


def test_fewer_requests_than_clients_is_refused(capsys):
    # 8 clients and 4 requests would measure concurrency 4 under the label 8
    assert main(["bench", "serve", "--url", "http://127.0.0.1:9", "--concurrency", "1,8", "--num-requests", "4"]) == 2
    assert "--num-requests (4) must be at least the highest --concurrency (8)" in capsys.readouterr().err
