"""The official openai client against a live polyhead server (tiny random model, local port);
the `client` and `any_server` tests run against both engine modes."""

import asyncio

import httpx
import openai
import pytest

from tests.server.conftest import MODEL


@pytest.fixture
def client(any_server):
    return openai.OpenAI(base_url=f"{any_server}/v1", api_key="unused", timeout=30, max_retries=0)


def test_completion_and_usage(client):
    out = client.completions.create(model=MODEL, prompt="hello", max_tokens=5, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 5
    assert out.usage.prompt_tokens == 5 and out.usage.total_tokens == 10


def test_chat_streaming_matches_non_streaming(client):
    messages = [{"role": "user", "content": "hi there"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                          extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6 and not chunks[-1].choices


def test_n_choices_and_seeded_sampling_repeat(client):
    kwargs = {"model": MODEL, "prompt": "abc", "max_tokens": 6, "temperature": 1.0, "seed": 7, "n": 2,
                  "extra_body": {"ignore_eos": True}}
    first, second = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert len(first.choices) == 2 and first.usage.completion_tokens == 12


def test_stop_string(client):
    free = client.completions.create(model=MODEL, prompt="xyz", max_tokens=8, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = free[3:5]
    out = client.completions.create(model=MODEL, prompt="xyz", max_tokens=8, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert out.finish_reason == "stop" and out.text == free[: free.index(stop)]


def test_async_client_concurrent_requests(server):
    async def many():
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", timeout=30, max_retries=0)
        return await asyncio.gather(*(client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=4,
                                                                temperature=0, extra_body={"ignore_eos": True})
                                      for i in range(6)))

    outs = asyncio.run(many())
    assert all(o.usage.completion_tokens == 4 for o in outs)


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x" * 200}, 400, "prompt"),
    ({"model": "nope", "prompt": "x"}, 404, "model"),
])
def test_errors_have_openai_shape_and_name_the_field(any_server, body, status, param):
    response = httpx.post(f"{any_server}/v1/completions", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_malformed_json_and_health_and_models(server):
    response = httpx.post(f"{server}/v1/completions", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"]
    assert httpx.get(f"{server}/health", timeout=30).json()["status"] == "ok"
    assert [m["id"] for m in httpx.get(f"{server}/v1/models", timeout=30).json()["data"]] == [MODEL]


def test_n_choices_share_one_prefill(any_server):
    server = any_server

    def hits():
        text = httpx.get(f"{server}/metrics", timeout=30).text
        line = next(x for x in text.splitlines() if x.startswith("polyhead_prefix_cache_hit_tokens_total"))
        return float(line.split()[-1])

    before = hits()
    prompt = "a prompt that fills a few KV blocks of sixteen tokens each"  # 58 byte tokens
    out = httpx.post(f"{server}/v1/completions", json={"model": MODEL, "prompt": prompt, "n": 3, "max_tokens": 2},
                     timeout=30).json()
    assert len(out["choices"]) == 3
    prompt_tokens = out["usage"]["prompt_tokens"]
    assert hits() - before >= 2 * ((prompt_tokens - 1) // 16 * 16)  # choices 2 and 3 reuse choice 1's blocks


def test_logprobs_in_both_endpoints(client):
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                          temperature=0, logprobs=True, top_logprobs=2,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)
    assert "".join(c.token for c in content) == chat.choices[0].message.content  # byte tokens: text adds up
    assert all(c.logprob <= 0 and c.top_logprobs[0].logprob >= c.logprob for c in content)
    completion = client.completions.create(model=MODEL, prompt="hi", max_tokens=3, temperature=0, logprobs=1,
                                           extra_body={"ignore_eos": True})
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 3
