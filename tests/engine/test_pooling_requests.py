"""Pooling requests through the scheduler: prefix-cache sharing (fan-out, `after`), the cache cap
that keeps every state a head reads computed, preemption mid-prompt, aborts, bad input."""

import pytest
import torch

from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.models.heads import ClassifyHead, EmbedPooler, TagHead
from tests.conftest import make_engine
from tests.engine.pooling_reference import assert_pooled_close, make_heads, reference, register_heads
from tests.engine.test_engine import prompts_of
from tests.engine.test_pooling import finish

HEADS = make_heads()


@pytest.fixture
def engine(tiny_llama):
    engine = make_engine(tiny_llama[0], block_size=4)
    register_heads(engine, HEADS)
    return engine


def test_fan_out_second_task_computes_only_the_uncached_tail(engine, tiny_llama):
    hf = tiny_llama[1]
    text = prompts_of([21], seed=20)[0]
    torch.manual_seed(1)
    heads = {**HEADS, "intent": ClassifyHead(64, 6)}
    engine.register_head("intent", heads["intent"])
    engine.add_request(text, PoolingParams("classify", task="sentiment"), req_id="a")
    engine.add_request(text, PoolingParams("classify", task="intent"), req_id="b", after="a")  # waits for a's prompt
    steps = []
    while engine.has_unfinished_requests():
        steps.append({o.req_id: o for o in engine.step()})
        steps[-1]["tokens"] = engine.last_step_stats.num_tokens
    assert [sorted(s) for s in steps] == [["a", "tokens"], ["b", "tokens"]]
    assert steps[0]["tokens"] == 21 and steps[1]["tokens"] == 1  # 5 full blocks were hits for b
    assert steps[0]["a"].num_cached_tokens == 0 and steps[1]["b"].num_cached_tokens == 20
    assert_pooled_close(steps[0]["a"].pooled, reference(hf, HEADS, text, "classify", "sentiment"))
    assert_pooled_close(steps[1]["b"].pooled, reference(hf, heads, text, "classify", "intent"))


def test_mean_cls_and_tag_take_no_prefix_hits(engine, tiny_llama):
    hf = tiny_llama[1]
    text = prompts_of([21], seed=21)[0]
    engine.add_request(text, SamplingParams(max_tokens=1), req_id="warm")
    finish(engine)
    for task, kind in (("topic", "classify"), ("first", "classify"), ("ner", "tag")):
        engine.add_request(text, PoolingParams(kind, task=task), req_id=task)
    out = finish(engine)
    for task, kind in (("topic", "classify"), ("first", "classify"), ("ner", "tag")):
        assert out[task].num_cached_tokens == 0
        assert_pooled_close(out[task].pooled, reference(hf, HEADS, text, kind, task))


@pytest.mark.parametrize(("num_scored", "num_cached"), [(1, 20), (3, 16), (6, 12), (20, 0)])
def test_score_caps_the_prefix_hit_below_its_first_scored_token(engine, tiny_llama, num_scored, num_cached):
    hf = tiny_llama[1]
    text = prompts_of([22], seed=22)[0]
    engine.add_request(text, SamplingParams(max_tokens=1), req_id="warm")  # caches 5 full blocks
    finish(engine)
    engine.add_request(text, PoolingParams("score", num_scored_tokens=num_scored), req_id="s")
    out = finish(engine)["s"]
    assert out.num_cached_tokens == num_cached  # the state before the first scored token is computed
    assert_pooled_close(out.pooled, reference(hf, HEADS, text, "score", num_scored_tokens=num_scored))


def test_preempted_pooling_request_restarts_cleanly(tiny_llama):
    folder, hf = tiny_llama
    # 12 blocks of 4 tokens: the decodes grow until the newest request, mid-prompt, is preempted
    engine = make_engine(folder, block_size=4, kv_cache_memory=12 * 2048, max_num_batched_tokens=4,
                         enable_prefix_caching=False, pooling_token_budget=0)  # plain arrival order
    register_heads(engine, HEADS)
    gens = prompts_of([6, 5], seed=23)
    params = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True)
    for i, p in enumerate(gens):
        engine.add_request(p, params, req_id=f"gen{i}")
    text = prompts_of([32], seed=24)[0]
    engine.add_request(text, PoolingParams("classify", task="topic"), req_id="mean")
    preempted_mid_prompt = False
    results = {}
    while engine.has_unfinished_requests():
        pooled = engine.backend.scheduler.requests.get("mean")
        computed = pooled.num_computed_tokens if pooled else 0
        for out in engine.step():
            if out.finished:
                results[out.req_id] = out
        preempted_mid_prompt |= bool(pooled and computed > 0 and pooled.num_computed_tokens == 0)
    assert preempted_mid_prompt and engine.backend.scheduler.num_preemptions > 0
    assert_pooled_close(results["mean"].pooled, reference(hf, HEADS, text, "classify", "topic"))
    assert not engine.backend.runner.pooler._accumulators
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks


def test_abort_mid_prompt_and_while_parked(tiny_llama):
    engine = make_engine(tiny_llama[0], block_size=4, max_num_batched_tokens=8)
    register_heads(engine, HEADS)
    text = prompts_of([30], seed=25)[0]
    engine.add_request(text, PoolingParams("tag", task="ner"), req_id="lead")
    engine.add_request(text, PoolingParams("embed"), req_id="follow", after="lead")
    engine.step()
    scheduled = engine.backend.scheduler.requests
    assert scheduled["lead"].num_computed_tokens == 8 and "follow" not in scheduled
    engine.abort_request("follow")
    engine.abort_request("lead")
    outs = {o.req_id: o for o in engine.step()}
    assert {o.finish_reason for o in outs.values()} == {"abort"} and set(outs) == {"lead", "follow"}
    assert outs["lead"].pooled is None and not engine.has_unfinished_requests()
    assert not engine.backend.runner.pooler._accumulators and not engine._parked


def test_followers_of_a_finished_or_missing_leader_start_at_once(engine):
    text = prompts_of([9], seed=26)[0]
    engine.add_request(text, PoolingParams("embed"), req_id="b", after="gone")
    assert finish(engine)["b"].pooled is not None


def test_pooling_result_is_independent_of_the_requests_own_chunking_with_generate(engine, tiny_llama):
    hf = tiny_llama[1]
    text = prompts_of([13], seed=27)[0]
    engine.add_request(text, SamplingParams(temperature=0.0, max_tokens=3), req_id="gen")
    engine.add_request(text, PoolingParams("score", num_scored_tokens=12), req_id="s")
    out = finish(engine)
    assert_pooled_close(out["s"].pooled, reference(hf, HEADS, text, "score", num_scored_tokens=12))


@pytest.mark.parametrize(("params", "message"), [
    (PoolingParams("classify", task="nope"), "task 'nope' has no head registered"),
    (PoolingParams("classify"), "a classify request needs a task with a registered ClassifyHead"),
    (PoolingParams("tag"), "a tag request needs a task with a registered TagHead"),
    (PoolingParams("tag", task="sentiment"), "task 'sentiment' has a ClassifyHead, but a tag request needs"),
    (PoolingParams("classify", task="topic", pooling="last"), "differs from task 'topic'"),
    (PoolingParams("score", num_scored_tokens=5), r"num_scored_tokens \(5\) must be at most"),
])
def test_bad_pooling_requests_are_refused_naming_the_field(engine, params, message):
    with pytest.raises(ValueError, match=message):
        engine.add_request([1, 2, 3, 4, 5], params)
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize(("options", "message"), [
    ({"kind": "generate"}, "kind must be one of"),
    ({"kind": "embed", "pooling": "max"}, "pooling must be last, mean or cls"),
    ({"kind": "score"}, "num_scored_tokens must be >= 1"),
])
def test_bad_pooling_params(options, message):
    with pytest.raises(ValueError, match=message):
        PoolingParams(**options)


def test_register_head_checks_hidden_size_and_type(engine):
    with pytest.raises(ValueError, match="reads hidden size 32, but the backbone's hidden size is 64"):
        engine.register_head("small", ClassifyHead(32, 2))
    with pytest.raises(ValueError, match="reads hidden size 32"):
        engine.register_head("proj", EmbedPooler(projection=torch.randn(4, 32)))
    with pytest.raises(TypeError, match="must be a ClassifyHead, TagHead or EmbedPooler"):
        engine.register_head("lin", torch.nn.Linear(64, 2))
    engine.register_head("ok", TagHead(64, 3))
    assert "ok" in engine.heads


def test_embed_normalize_defaults_to_the_heads_and_can_be_overridden(engine):
    text = prompts_of([9], seed=28)[0]
    engine.add_request(text, PoolingParams("embed", task="embed"), req_id="default")
    engine.add_request(text, PoolingParams("embed", task="embed", normalize=False), req_id="raw")
    engine.add_request(text, PoolingParams("embed", normalize=True), req_id="no-head")
    out = finish(engine)
    norms = {k: float(torch.tensor(o.pooled).norm()) for k, o in out.items()}
    assert abs(norms["default"] - 1) < 1e-5 and abs(norms["no-head"] - 1) < 1e-5 and abs(norms["raw"] - 1) > 0.1
    assert len(out["raw"].pooled) == 8 and len(out["no-head"].pooled) == 64


def test_truncate_cuts_a_long_pooling_prompt_to_the_limit(tiny_llama):
    engine = make_engine(tiny_llama[0], max_model_len=16)
    long = list(range(40))
    with pytest.raises(ValueError, match="prompt has 40 tokens, but the limit is 15"):
        engine.add_request(long, PoolingParams("embed"))
    engine.add_request(long, PoolingParams("embed", truncate=True), req_id="t")
    assert finish(engine)["t"].prompt_token_ids == long[:15]


def test_next_token_candidates_are_scored_at_the_last_state_in_one_row(tiny_llama):
    """One score row with next_token_ids gives each candidate's log-prob after the prompt (what one
    per-label row scoring that token would give), with the prompt chunked and decodes beside it."""
    folder, hf = tiny_llama
    engine = make_engine(folder, block_size=4, max_num_batched_tokens=8)
    engine.add_request([3, 4, 5], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), req_id="gen")
    text = prompts_of([19], seed=30)[0]
    candidates = (7, 42, 99)
    engine.add_request(text, PoolingParams("score", next_token_ids=candidates), req_id="one-row")
    out = finish(engine)["one-row"]
    with torch.no_grad():
        expected = torch.log_softmax(hf(torch.tensor([text])).logits[0, -1].float(), dim=-1)[list(candidates)]
    assert_pooled_close(out.pooled, expected.tolist())
    for token, score in zip(candidates, out.pooled):
        assert score == pytest.approx(reference(hf, HEADS, text + [token], "score", num_scored_tokens=1), abs=1e-4)
    with pytest.raises(ValueError, match=r"next_token_ids must be token ids in \[0, 259\)"):
        engine.add_request(text, PoolingParams("score", next_token_ids=(259,)))
    with pytest.raises(ValueError, match="num_scored_tokens must be 0 when next_token_ids"):
        PoolingParams("score", num_scored_tokens=1, next_token_ids=(1,))
    with pytest.raises(ValueError, match="next_token_ids are only read by score requests"):
        PoolingParams("embed", next_token_ids=(1,))
