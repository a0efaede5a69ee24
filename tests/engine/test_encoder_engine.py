"""The encoder engine on a tiny random BERT (against transformers) and on the real
all-MiniLM-L6-v2 (against sentence-transformers): embeddings, batching, budgets, heads, bad input."""

import asyncio

import pytest
import torch
import torch.nn.functional as F

from polyhead.cpu import cpu_features
from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.engine.decoder.backend import DecoderBackend
from polyhead.engine.encoder.backend import EncoderBackend
from polyhead.engine.factory import build_engine
from polyhead.llm import LLM
from polyhead.models.heads import ClassifyHead, EmbedPooler, TagHead
from tests.conftest import MINILM_SENTENCES, make_encoder_engine

TEXTS = ["the cat sat on the mat", "hello world", "a dog runs fast", "cats", "the dog sat on a mat , hello",
         "hello", "runs", "the mat"]


@pytest.fixture
def engine(tiny_encoder):
    return make_encoder_engine(tiny_encoder[0], max_num_batched_tokens=24)


def run_all(engine) -> dict:
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: o for o in engine.step()})
    return results


def run_one(engine, prompt, params=None, **routing):
    req_id = engine.add_request(prompt, params, **routing)
    return run_all(engine)[req_id]


def hf_states(hf, engine, text):
    ids = engine.tokenizer(text)["input_ids"]
    with torch.no_grad():
        return hf(torch.tensor([ids])).last_hidden_state[0]  # [T, H]


def test_embeddings_match_transformers_mean_pooled_and_normalized(engine, tiny_encoder):
    ids = [engine.add_request(t) for t in TEXTS]
    outs = run_all(engine)
    for req_id, text in zip(ids, TEXTS):
        out = outs[req_id]
        assert out.finished and out.finish_reason == "stop" and out.prompt == text
        assert out.prompt_token_ids[0] == engine.tokenizer.cls_token_id
        assert out.prompt_token_ids[-1] == engine.tokenizer.sep_token_id
        expected = F.normalize(hf_states(tiny_encoder[1], engine, text).mean(0), dim=-1)
        torch.testing.assert_close(torch.tensor(out.pooled), expected, atol=2e-6, rtol=1e-5)


def test_steps_respect_token_and_sequence_budgets_in_arrival_order(tiny_encoder):
    engine = make_encoder_engine(tiny_encoder[0], max_num_batched_tokens=24, max_num_seqs=3)
    lens = {engine.add_request(t): len(engine.tokenizer(t)["input_ids"]) for t in TEXTS}
    steps = []
    while engine.has_unfinished_requests():
        outs = engine.step()
        assert sum(lens[o.req_id] for o in outs) == engine.last_step_num_tokens <= 24
        assert 1 <= len(outs) <= 3
        steps.append([o.req_id for o in outs])
    assert [r for step in steps for r in step] == list(lens)  # arrival order, nothing overtakes
    assert len(steps) < len(TEXTS)  # and steps do batch


def test_a_sequence_embeds_the_same_alone_or_in_a_batch(engine):
    alone = run_one(engine, TEXTS[0]).pooled
    big = make_encoder_engine(engine.backend.model_folder, max_num_batched_tokens=400)
    ids = [big.add_request(t) for t in TEXTS * 2]
    outs = {o.req_id: o for o in big.step()}
    assert len(outs) == 16  # all in one step
    torch.testing.assert_close(torch.tensor(outs[ids[8]].pooled), torch.tensor(alone), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("prompt", "params", "message"), [
    ("", None, "prompt is empty"),
    ([], None, "prompt is empty"),
    ([1, 10_000], None, r"integers in \[0, \d+\) \(vocab_size\)"),
    ("cat " * 30, None, r"prompt has 32 tokens .* limit is 24 \(max_model_len\); PoolingParams\(truncate=True\)"),
    ("hello", SamplingParams(max_tokens=4), "is an encoder backbone: it serves only embed, classify and tag"),
    ("hello", PoolingParams(kind="score", num_scored_tokens=1), "kind 'score' is not served by the encoder"),
    ("hello", PoolingParams(kind="classify", task="sentiment"), "task 'sentiment' has no head registered"),
    ("hello", PoolingParams(kind="tag"), "a tag request needs a task with a registered TagHead"),
])
def test_bad_requests_are_rejected_with_the_reason(engine, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    assert not engine.has_unfinished_requests()


def test_adapters_are_rejected(engine):
    with pytest.raises(ValueError, match="serves no LoRA adapters"):
        engine.add_request("hello", adapter="lora-1")


def test_truncate_cuts_to_the_limit_keeping_sep(engine, tiny_encoder):
    text = "cat " * 30
    out = run_one(engine, text, PoolingParams(kind="embed", truncate=True))
    assert len(out.prompt_token_ids) == 24 and out.prompt_token_ids[-1] == engine.tokenizer.sep_token_id
    ids = engine.tokenizer(text, truncation=True, max_length=24)["input_ids"]
    with torch.no_grad():
        expected = F.normalize(tiny_encoder[1](torch.tensor([ids])).last_hidden_state[0].mean(0), dim=-1)
    torch.testing.assert_close(torch.tensor(out.pooled), expected, atol=2e-6, rtol=1e-5)
    cut = run_one(engine, list(range(5, 40)), PoolingParams(kind="embed", truncate=True))
    assert cut.prompt_token_ids == list(range(5, 29))


def test_pooling_and_normalize_overrides(engine, tiny_encoder):
    states = hf_states(tiny_encoder[1], engine, TEXTS[0])
    cls = run_one(engine, TEXTS[0], PoolingParams(kind="embed", pooling="cls", normalize=False))
    torch.testing.assert_close(torch.tensor(cls.pooled), states[0], atol=2e-6, rtol=1e-5)
    last = run_one(engine, TEXTS[0], PoolingParams(kind="embed", pooling="last"))
    torch.testing.assert_close(torch.tensor(last.pooled), F.normalize(states[-1], dim=-1), atol=2e-6, rtol=1e-5)


def test_task_heads_classify_tag_and_embed_in_one_step(tiny_encoder):
    engine = make_encoder_engine(tiny_encoder[0], max_num_batched_tokens=200)
    torch.manual_seed(0)
    head, tagger = ClassifyHead(32, 3, pooling="cls"), TagHead(32, 5)
    head.linear.weight.data.normal_()
    projection = torch.randn(8, 32)
    engine.register_head("sentiment", head)
    engine.register_head("ner", tagger)
    engine.register_head("short-embed", EmbedPooler("mean", normalize=False, projection=projection))
    a = engine.add_request(TEXTS[0], PoolingParams(kind="classify"), task="sentiment")
    b = engine.add_request(TEXTS[0], PoolingParams(kind="embed", task="short-embed"))
    c = engine.add_request(TEXTS[0])  # no task: the model's own embedding in the same step
    d = engine.add_request(TEXTS[1], PoolingParams(kind="tag", task="ner"))
    outs = {o.req_id: o for o in engine.step()}
    assert engine.last_step_stats.rows == {"classify": 1, "embed": 2, "tag": 1}
    states = hf_states(tiny_encoder[1], engine, TEXTS[0])
    torch.testing.assert_close(torch.tensor(outs[a].pooled), head(states[0][None])[0].softmax(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(outs[b].pooled), projection @ states.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(outs[c].pooled), F.normalize(states.mean(0), dim=-1), atol=2e-6, rtol=0)
    tags = tagger(hf_states(tiny_encoder[1], engine, TEXTS[1])).softmax(-1)  # [CLS] ... [SEP]
    assert len(outs[d].pooled) == len(outs[d].prompt_token_ids)
    torch.testing.assert_close(torch.tensor(outs[d].pooled), tags, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="differs from task 'sentiment'"):
        engine.add_request(TEXTS[0], PoolingParams(kind="classify", pooling="mean", task="sentiment"))


def test_register_head_checks_kind_and_size(engine):
    with pytest.raises(TypeError, match="must be a ClassifyHead, TagHead or EmbedPooler, got Linear"):
        engine.register_head("x", torch.nn.Linear(32, 5))
    with pytest.raises(ValueError, match="vectors of size 16, the backbone's hidden size is 32"):
        engine.register_head("x", ClassifyHead(16, 2))


def test_abort_a_waiting_request(engine):
    req = engine.add_request("hello")
    assert engine.abort_request(req) and not engine.abort_request("nope")
    (out,) = engine.step()
    assert out.finish_reason == "abort" and out.pooled is None
    assert not engine.has_unfinished_requests()


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(engine, monkeypatch):
    req = engine.add_request("hello")
    execute = engine.backend.runner.execute
    monkeypatch.setattr(engine.backend.runner, "execute", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    (out,) = engine.step()
    assert out.req_id == req and out.finish_reason == "error" and "boom" in out.error
    monkeypatch.setattr(engine.backend.runner, "execute", execute)
    assert run_one(engine, "hello").finish_reason == "stop"


def test_limits_are_checked_at_start(tiny_encoder):
    with pytest.raises(ValueError, match=r"max_model_len \(30\) exceeds the encoder's limit \(24"):
        make_encoder_engine(tiny_encoder[0], max_model_len=30)
    with pytest.raises(ValueError, match=r"max_num_batched_tokens \(16\) must be >= max_model_len \(24\)"):
        make_encoder_engine(tiny_encoder[0], max_num_batched_tokens=16)


def test_build_engine_picks_by_model_type(tiny_encoder, tiny_llama):
    from polyhead.config import EngineConfig

    assert isinstance(build_engine(EngineConfig(model=str(tiny_encoder[0]), dtype="float32")).backend, EncoderBackend)
    assert isinstance(build_engine(EngineConfig(model=str(tiny_llama[0]), dtype="float32",
                                                kv_cache_memory="4MiB")).backend, DecoderBackend)


def test_llm_embed_and_generate_on_an_encoder(tiny_encoder):
    llm = LLM(model=str(tiny_encoder[0]), dtype="float32")
    outs = llm.embed(TEXTS[:3])
    assert [o.prompt for o in outs] == TEXTS[:3]
    assert all(abs(torch.tensor(o.pooled).norm().item() - 1) < 1e-5 for o in outs)
    with pytest.raises(ValueError, match="is an encoder backbone"):
        llm.generate("hello", SamplingParams(max_tokens=2))
    assert not llm.engine.has_unfinished_requests()


def test_async_engine_drives_the_encoder(tiny_encoder):
    from polyhead.config import EngineConfig

    async_engine = AsyncEngine.from_config(EngineConfig(model=str(tiny_encoder[0]), dtype="float32"))
    assert isinstance(async_engine.engine.backend, EncoderBackend)

    async def embed_all():
        async def one(text):
            return [o async for o in async_engine.generate(text, PoolingParams(kind="embed"))][-1]
        return await asyncio.gather(*(one(t) for t in TEXTS))

    try:
        outs = asyncio.run(embed_all())
    finally:
        async_engine.stop()
    assert [o.prompt for o in outs] == TEXTS and all(o.finish_reason == "stop" and o.pooled for o in outs)


# --- the real all-MiniLM-L6-v2 against sentence-transformers -------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_minilm_embeddings_equal_sentence_transformers(minilm_reference, dtype):
    if dtype == "bfloat16" and not cpu_features().native_bf16:
        pytest.skip("needs native bf16 (AVX512-BF16): bfloat16 is refused on this CPU")
    folder, reference = minilm_reference
    llm = LLM(model="all-MiniLM-L6-v2", dtype=dtype, max_num_batched_tokens=1024)
    assert llm.engine.backend.model_folder == folder
    outs = llm.embed(MINILM_SENTENCES, PoolingParams(kind="embed", truncate=True))
    got = torch.tensor([o.pooled for o in outs])
    assert got.shape == (len(MINILM_SENTENCES), 384)
    assert len(outs[10].prompt_token_ids) == 256  # the long one was cut to max_seq_length
    cosine = F.cosine_similarity(got, reference.float(), dim=-1)
    assert cosine.min() > (0.99999 if dtype == "float32" else 0.9995), cosine.tolist()
    # batching independence: alone, or among 11 others in one step. Exact up to float32 rounding;
    # in bfloat16 the attention of a sequence padded within its bucket rounds differently (~1e-3).
    for i in (3, 7):
        alone = torch.tensor(llm.embed(MINILM_SENTENCES[i])[0].pooled)
        torch.testing.assert_close(alone, got[i], atol=1e-6 if dtype == "float32" else 5e-3, rtol=0)
        assert F.cosine_similarity(alone, got[i], dim=0) > (0.999999 if dtype == "float32" else 0.9998)
