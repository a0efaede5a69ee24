"""Unicode at the edges, one test each: lone surrogates in the new fields, NUL, right-to-left text,
and a 4-byte emoji whose bytes are separate tokens, streamed: no delta may split it."""

import json

import httpx
import openai
import pytest
import torch

from tests.conftest import make_tiny_model, tiny_tokenizer
from tests.server.conftest import MODEL, running_server

EMOJI = "\U0001f389"  # 🎉: four UTF-8 bytes, four tokens of the byte-level tiny tokenizer
RTL = "שלום \u202eabc\u202c مرحبا"  # Hebrew, a right-to-left override, Arabic


@pytest.fixture(scope="module")
def server(tiny_llama):
    with running_server(tiny_llama[0]) as (url, _):
        yield url


def post(url: str, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800, as a client in another language would send it
    return httpx.post(f"{url}{path}", content=json.dumps(body), headers={"content-type": "application/json"},
                      timeout=30)


def round_trip(url: str, text: str) -> str:
    ids = post(url, "/tokenize", {"prompt": text}).json()["tokens"]
    return post(url, "/detokenize", {"tokens": ids}).json()["prompt"]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "ok"}, {"type": "text", "text": "a\ud800b"}]}]}, "messages.0.content"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x", "name": "\udc00"}]},
     "messages.0.name"),
    ("/v1/completions", {"model": MODEL, "prompt": ["ok", "a\ud800b"]}, "prompt"),
    ("/tokenize", {"prompt": "a\ud800b"}, "prompt"),
])
def test_a_lone_surrogate_in_the_new_fields_is_a_400_naming_it(server, path, body, param):
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "lone surrogate" in error["message"], error


def test_nul_is_served_and_kept(server):
    text = "a\x00b"
    assert round_trip(server, text) == text
    out = post(server, "/v1/completions", {"model": MODEL, "prompt": text, "max_tokens": 2, "echo": True}).json()
    assert out["choices"][0]["text"].startswith(text)


def test_right_to_left_text_is_served_and_kept(server):
    assert round_trip(server, RTL) == RTL
    out = post(server, "/v1/completions", {"model": MODEL, "prompt": RTL, "max_tokens": 2, "echo": True}).json()
    assert out["choices"][0]["text"].startswith(RTL)
    chat = post(server, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": RTL}],
                                                 "max_tokens": 2})
    assert chat.status_code == 200


@pytest.fixture(scope="module")
def emoji_model(tmp_path_factory):
    """A real one-layer model whose weights are set so that, greedily, "x" is followed by the emoji's
    bytes over and over: attention and MLP write nothing, so the last state is the token's embedding,
    and the LM head's row for each next byte is the embedding of the token before it."""
    folder = tmp_path_factory.mktemp("emoji-model")
    model = make_tiny_model(folder, "llama-untied-llama3-rope", num_layers=1)
    tokenizer = tiny_tokenizer()
    start, emoji = tokenizer.encode("x"), tokenizer.encode(EMOJI)
    assert len(start) == 1 and len(emoji) == 4
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight  # [V, H]
        normalized = embed / embed.pow(2).mean(dim=-1, keepdim=True).sqrt()  # what the final RMSNorm gives
        head = model.lm_head.weight
        head.zero_()
        for before, after in zip(start + emoji, emoji + emoji[:1]):
            head[after] += normalized[before]
    model.save_pretrained(folder)
    return folder


def test_a_4_byte_emoji_split_over_tokens_streams_whole(emoji_model):
    with running_server(emoji_model) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=30, max_retries=0)
        kwargs = {"model": MODEL, "prompt": "x", "max_tokens": 12, "temperature": 0, "extra_body": {"ignore_eos": True}}
        whole = client.completions.create(**kwargs).choices[0].text
        deltas = [c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices]
    assert whole == EMOJI * 3
    assert [d for d in deltas if d] == [EMOJI] * 3  # each character whole, none split, no U+FFFD
