"""The task endpoints on a live server over tiny random models, checked against transformers:
/v1/tasks, /v1/classify (head, zero-shot, fan-out sharing one prefill), /v1/tag, /v1/embeddings
(through the official openai client), chat with a generate task's template, and the metrics."""

import asyncio

import httpx
import pytest
import torch
import torch.nn.functional as F
from openai import OpenAI
from safetensors.torch import load_file
from transformers import AutoModel

from polyhead.server.tag import entity_spans
from tests.conftest import tiny_bert_tokenizer, tiny_tokenizer
from tests.server.task_fixtures import MODEL, SHARED, TAGS, bert, manifest_dir, running_task_server  # noqa: F401


@pytest.fixture(scope="module", params=["thread", "process"])
def task_server(request, manifest_dir, tiny_llama):  # noqa: F811
    """The same server with the tiny Llama's engine on a thread here and in a child process."""
    with running_task_server(manifest_dir[1], tiny_llama[0], request.param) as (url, app):
        yield url, app


def post(url, path, **body):
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def hf_states(hf_model, tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        return ids, hf_model.model(torch.tensor([ids])).last_hidden_state[0]


def test_tasks_are_listed_with_kind_labels_and_backbone(task_server, bert):  # noqa: F811
    url, _ = task_server
    cards = {c["id"]: c for c in httpx.get(f"{url}/v1/tasks", timeout=30).json()["data"]}
    assert set(cards) == {"chat", "shout", "shout-lora", "sentiment", "yesno", "ner", "embed", "embed-llm"}
    assert cards["shout-lora"]["adapter"] and not cards["shout"]["adapter"]
    assert cards["sentiment"]["kind"] == "classify" and cards["sentiment"]["labels"] == ["neg", "neu", "pos"]
    assert cards["yesno"]["zero_shot"] and not cards["sentiment"]["zero_shot"]
    assert cards["embed"]["backbone"] == str(bert[0]) and cards["embed"]["dimensions"] == 32
    assert cards["ner"]["backbone"] == MODEL and cards["ner"]["labels"] == TAGS
    models = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
    assert models[0] == MODEL and "shout" in models and "embed" in models and "sentiment" not in models


def test_classify_with_a_head_matches_transformers(task_server, tiny_llama, manifest_dir):  # noqa: F811
    url, app = task_server
    tokenizer = app.state.server.tokenizer
    head = load_file(str(manifest_dir[0] / "sentiment.safetensors"))
    texts = ["great stuff", "it broke on day two"]
    out = post(url, "/v1/classify", task="sentiment", input=texts).json()
    assert [d["index"] for d in out["data"]] == [0, 1]
    for text, item in zip(texts, out["data"]):
        _, states = hf_states(tiny_llama[1], tokenizer, SHARED + text)
        expected = F.linear(states[-1], head["weight"], head["bias"]).softmax(-1)
        torch.testing.assert_close(torch.tensor(item["probs"]), expected, atol=1e-4, rtol=1e-4)
        assert item["label"] == ["neg", "neu", "pos"][int(expected.argmax())] and item["task"] == "sentiment"
    assert out["usage"]["prompt_tokens"] == sum(len(tokenizer.encode(SHARED + t)) for t in texts)


def test_zero_shot_scores_each_label_answer(task_server, tiny_llama):
    url, app = task_server
    tokenizer = app.state.server.tokenizer
    prompt = SHARED + "is it good? Answer:"
    item = post(url, "/v1/classify", task="yesno", input="is it good?").json()["data"][0]
    scores = []
    for answer in (" yes", " no way"):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        answer_ids = tokenizer.encode(answer, add_special_tokens=False)
        with torch.no_grad():
            logprobs = tiny_llama[1](torch.tensor([ids + answer_ids])).logits[0].log_softmax(-1)
        # mean log-prob per answer token: " no way" is 7 byte tokens, " yes" 4
        scores.append(sum(logprobs[len(ids) - 1 + i, t] for i, t in enumerate(answer_ids)) / len(answer_ids))
    expected = torch.stack(scores).softmax(-1)
    torch.testing.assert_close(torch.tensor(item["probs"]), expected, atol=1e-4, rtol=1e-4)


def hit_tokens(url) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    name = f'polyhead_prefix_cache_hit_tokens_total{{backbone="{MODEL}"'
    line = next(x for x in text.splitlines() if x.startswith(name))
    return float(line.split()[-1])


def test_fan_out_shares_one_prefill_and_answers_like_single_requests(task_server):
    url, _ = task_server
    text = "fresh words, never sent"
    before = hit_tokens(url)
    fan = post(url, "/v1/classify", tasks=["sentiment", "yesno"], input=text).json()
    assert "data" in fan, fan
    fan = fan["data"]
    hits = hit_tokens(url) - before
    # sentiment leads; the two zero-shot label rows follow it and reuse its full blocks
    assert hits >= 2 * 16 * ((len(SHARED) + len(text)) // 16)
    assert [d["task"] for d in fan] == ["sentiment", "yesno"]
    for item in fan:
        alone = post(url, "/v1/classify", task=item["task"], input=text).json()["data"][0]
        torch.testing.assert_close(torch.tensor(item["probs"]), torch.tensor(alone["probs"]), atol=1e-4, rtol=1e-4)


def test_tag_spans_point_into_the_input(task_server):
    url, _ = task_server
    texts = ["Alice met Bob in Paris", "nothing here"]
    data = post(url, "/v1/tag", task="ner", input=texts).json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    for text, item in zip(texts, data):
        for entity in item["entities"]:
            assert text[entity["start"]:entity["end"]] == entity["text"] and entity["text"].strip() == entity["text"]
            assert entity["label"] in ("PER", "LOC") and 0 < entity["score"] <= 1
    assert data[0]["entities"], "the sharpened random head tags something in a 22-character input"


def test_entity_spans_merge_word_pieces_and_follow_bio():
    from polyhead.server.tag import _encode

    class Task:  # what _encode reads of a ServedTask
        class spec:
            prompt_template = "Tag: {input}"

            @staticmethod
            def render(text):
                return "Tag: " + text

        class backbone:
            add_special_tokens = False

    Task.backbone.tokenizer = tiny_tokenizer()
    text = "Ann Lee, Rome"
    encoding = _encode(Task, text)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    # byte tokens: "Tag: " is outside the input; then the words A n n | _ L e e | , | _ R o m e
    tags = ["O"] * 5 + ["B-PER", "O", "O"] + ["I-PER", "O", "O", "O"] + ["O"] + ["B-LOC", "O", "O", "O", "O"]
    assert len(tags) == len(encoding["input_ids"])
    probs = [[0.9 if label == tag else 0.025 for label in labels] for tag in tags]
    entities = entity_spans(text, encoding, probs, labels)
    assert [(e.label, e.text, e.start, e.end) for e in entities] == [("PER", "Ann Lee", 0, 7), ("LOC", "Rome", 9, 13)]
    # a word's later pieces count with the probability of the word's tag (0.025 here), not their own
    assert entities[0].score == pytest.approx((0.9 * 2 + 0.025 * 5) / 7)


def test_embeddings_through_the_openai_client(task_server, bert):  # noqa: F811
    url, _ = task_server
    client = OpenAI(base_url=f"{url}/v1", api_key="none")
    texts = ["the cat sat on the mat", "hello world"]
    response = client.embeddings.create(model="embed", input=texts)  # the client asks for base64
    assert [d.index for d in response.data] == [0, 1] and response.model == "embed"
    reference = AutoModel.from_pretrained(bert[0]).eval()
    batch = tiny_bert_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(torch.tensor([d.embedding for d in response.data]), expected, atol=1e-4, rtol=1e-4)
    assert response.usage.prompt_tokens == int(batch["attention_mask"].sum())
    floats = post(url, "/v1/embeddings", model="embed", input="hello world", encoding_format="float").json()
    torch.testing.assert_close(torch.tensor(floats["data"][0]["embedding"]), expected[1], atol=1e-4, rtol=1e-4)
    assert len(client.embeddings.create(model="embed-llm", input="hello").data[0].embedding) == 64


def test_chat_with_a_generate_task_applies_its_template_and_defaults(task_server):
    url, _ = task_server
    client = OpenAI(base_url=f"{url}/v1", api_key="none")
    by_task = client.chat.completions.create(model="shout", messages=[{"role": "user", "content": "hi"}])
    by_hand = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say loudly: hi"}],
                                             max_tokens=5, temperature=0)
    assert by_task.choices[0].message.content == by_hand.choices[0].message.content
    assert by_task.usage.completion_tokens == 5 and by_task.usage.prompt_tokens == by_hand.usage.prompt_tokens


def test_a_generate_task_runs_with_its_adapter(task_server, manifest_dir, tiny_llama):  # noqa: F811
    from tests.lora.conftest import peft_reference

    url, app = task_server
    client = OpenAI(base_url=f"{url}/v1", api_key="none")
    reply = client.chat.completions.create(model="shout-lora", messages=[{"role": "user", "content": "hi"}])
    plain = client.chat.completions.create(model="shout", messages=[{"role": "user", "content": "hi"}])
    tokenizer = app.state.server.tokenizer
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Say loudly: hi"}], add_generation_prompt=True,
                                        tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    reference = peft_reference(tiny_llama[0], manifest_dir[0] / "adapter")
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)
    assert reply.choices[0].message.content == tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert reply.choices[0].message.content != plain.choices[0].message.content


def test_metrics_carry_task_rows_by_kind_and_mixed_steps(task_server):
    url, _ = task_server

    async def mixed():
        async with httpx.AsyncClient(timeout=60) as client:
            chat = client.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "count", "max_tokens": 40,
                                                              "ignore_eos": True, "temperature": 0})
            classify = [client.post(f"{url}/v1/classify", json={"task": "sentiment", "input": f"text {i}"})
                        for i in range(6)]
            return await asyncio.gather(chat, *classify)

    responses = asyncio.run(mixed())
    assert all(r.status_code == 200 for r in responses)
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'polyhead_requests_total{status="ok",task="sentiment"}' in text
    assert 'polyhead_e2e_latency_seconds_count{task="sentiment"}' in text
    assert 'polyhead_batch_rows_count{kind="classify"}' in text and 'polyhead_batch_rows_count{kind="generate"}' in text
    mixed_line = next(x for x in text.splitlines() if x.startswith(f'polyhead_mixed_steps_total{{backbone="{MODEL}"'))
    assert float(mixed_line.split()[-1]) >= 1  # classify rows rode along with the decode steps
    assert 'polyhead_queue_waiting{backbone="' in text
