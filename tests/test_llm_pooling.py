"""The offline pooling API: LLM.register_task / classify (head, fan-out) / tag / embed / encode,
and AsyncEngine.generate with PoolingParams (one final output), on a tiny random model."""

import asyncio

import pytest
import torch

from polyhead.engine.client.async_engine import AsyncEngine
from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.llm import LLM
from polyhead.models.heads import save_head
from polyhead.tasks import zero_shot
from polyhead.tasks.spec import TaskSpec
from tests.conftest import make_engine
from tests.engine.pooling_reference import assert_pooled_close, make_heads, reference

HEADS = make_heads()


@pytest.fixture
def llm(tiny_llama, tmp_path):
    llm = LLM.from_engine(make_engine(tiny_llama[0], block_size=4))
    save_head(HEADS["sentiment"], tmp_path / "sentiment.safetensors")
    save_head(HEADS["topic"], tmp_path / "topic.safetensors")
    save_head(HEADS["ner"], tmp_path / "ner.safetensors")
    llm.register_task(TaskSpec(name="sentiment", kind="classify", labels=["neg", "neu", "pos"],
                               head=str(tmp_path / "sentiment.safetensors")))
    llm.register_task(TaskSpec(name="topic", kind="classify", labels=list("abcd"), pooling="mean",
                               head=str(tmp_path / "topic.safetensors")))
    llm.register_task(TaskSpec(name="ner", kind="tag", labels=["O", "B-X", "I-X", "B-Y", "I-Y"],
                               head=str(tmp_path / "ner.safetensors")))
    llm.register_task(TaskSpec(name="emb", kind="embed", pooling="mean", normalize=True))
    llm.register_task(TaskSpec(name="zs", kind="classify", labels=["yes", "no"]))
    return llm


def ids(llm, text):
    return llm.tokenizer.encode(text, add_special_tokens=False)


def test_classify_with_heads_and_fan_out(llm, tiny_llama):
    hf = tiny_llama[1]
    texts = ["the quick brown fox jumps over", "a lazy dog"]
    single = llm.classify(texts, "sentiment")
    both = llm.classify(texts, ["sentiment", "topic"])
    for text, one, two in zip(texts, single, both):
        want = reference(hf, HEADS, ids(llm, text), "classify", "sentiment")
        assert list(one) == ["neg", "neu", "pos"]
        assert_pooled_close(list(one.values()), want)
        assert_pooled_close(list(two["sentiment"].values()), want)
        assert_pooled_close(list(two["topic"].values()), reference(hf, HEADS, ids(llm, text), "classify", "topic"))


def test_tag_embed_and_encode(llm, tiny_llama):
    hf = tiny_llama[1]
    text = "hello world"
    (tagged,) = llm.tag(text, "ner")
    probs = reference(hf, HEADS, ids(llm, text), "tag", "ner")
    labels = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    assert [t for t, _, _ in tagged] == list(text)  # the tiny tokenizer has one token per byte
    assert [label for _, label, _ in tagged] == [labels[max(range(5), key=p.__getitem__)] for p in probs]
    (vector,) = [out.pooled for out in llm.embed(text, task="emb")]
    raw = reference(hf, HEADS, ids(llm, text), "embed", pooling="mean", normalize=True)
    assert_pooled_close(vector, raw)
    (out,) = llm.encode(ids(llm, text), PoolingParams("score", num_scored_tokens=3))
    assert_pooled_close(out.pooled, reference(hf, HEADS, ids(llm, text), "score", num_scored_tokens=3))


def test_zero_shot_label_rows_share_one_prefill(llm):
    spec = llm.tasks["zs"]
    plan = zero_shot.build_plan(spec, llm.tokenizer, "is it raining?")
    (probs,) = llm.classify("is it raining?", "zs")
    assert list(probs) == ["yes", "no"] and abs(sum(probs.values()) - 1) < 1e-6
    engine = llm.engine
    engine.backend.kv_cache.reset_prefix_cache()
    leader = engine.add_request(*plan.requests()[0])
    follower = engine.add_request(*plan.requests()[1], after=leader)
    outs = {}
    while engine.has_unfinished_requests():
        outs.update({o.req_id: o for o in engine.step()})
    num_full = (len(plan.prompt_token_ids) - 1) // 4 * 4  # the prompt's full blocks, minus the last token
    assert outs[leader].num_cached_tokens == 0 and outs[follower].num_cached_tokens == num_full
    assert_pooled_close(list(plan.probabilities([outs[leader].pooled, outs[follower].pooled]).values()),
                        list(probs.values()))


def test_unknown_and_mismatched_tasks(llm):
    with pytest.raises(ValueError, match="task 'nope' is not registered"):
        llm.classify("x", "nope")
    with pytest.raises(ValueError, match="task 'ner' is a tag task, not classify"):
        llm.classify("x", "ner")
    with pytest.raises(ValueError, match="is a generate task"):
        llm.register_task(TaskSpec(name="chat", kind="generate"))
    assert not llm.engine.has_unfinished_requests()


def test_async_engine_pooling_request_yields_one_final_output(tiny_llama):
    engine = AsyncEngine(make_engine(tiny_llama[0])).start()
    engine.engine.register_head("ner", HEADS["ner"])
    try:
        async def run():
            tag = [o async for o in engine.generate([5, 6, 7], PoolingParams("tag", task="ner"))]
            gen = engine.generate([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
            emb = engine.generate([5, 6, 7], PoolingParams("embed"))
            return tag, *(await asyncio.gather(_collect(gen), _collect(emb)))

        tag, gen, emb = asyncio.run(run())
        assert len(tag) == 1 and tag[0].finished and len(tag[0].pooled) == 3 and len(tag[0].pooled[0]) == 5
        assert len(gen) == 3 and gen[-1].pooled is None
        assert len(emb) == 1 and len(emb[0].pooled) == 64
        with pytest.raises(ValueError, match="a tag request needs"):
            engine.generate([1], PoolingParams("tag"))
    finally:
        engine.stop()


def test_zero_shot_through_the_async_engine(tiny_llama):
    engine = AsyncEngine(make_engine(tiny_llama[0])).start()
    spec = TaskSpec(name="zs", kind="classify", labels=["yes", "no"], verbalizers={"no": "no way"})
    try:
        probs = asyncio.run(zero_shot.classify_async(engine, spec, "is it raining?", "zs-1"))
    finally:
        engine.stop()
    plan = zero_shot.build_plan(spec, engine.tokenizer, "is it raining?")
    offline = zero_shot.classify(make_engine(tiny_llama[0]), [plan])[0]
    assert list(probs) == ["yes", "no"]
    assert_pooled_close(list(probs.values()), list(offline.values()))
    assert torch.tensor(list(probs.values())).sum().item() == pytest.approx(1.0)


async def _collect(stream):
    return [o async for o in stream]
