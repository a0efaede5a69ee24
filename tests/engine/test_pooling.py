"""Pooling rows (classify / tag / embed / score) equal references computed from the model's own
hidden states, alone, chunked, and mixed into steps with decodes and prefill chunks; the
generated tokens beside them do not change."""

import pytest

from polyhead.engine.core.params import PoolingParams, SamplingParams
from tests.conftest import make_engine
from tests.engine.pooling_reference import assert_pooled_close, make_heads, reference, register_heads
from tests.engine.test_engine import hf_greedy, prompts_of

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
HEADS = make_heads()

# (PoolingParams, reference options): every kind and every pooling
CASES = {
    "classify-last": (PoolingParams("classify", task="sentiment"), {"task": "sentiment"}),
    "classify-mean": (PoolingParams("classify", task="topic"), {"task": "topic"}),
    "classify-cls": (PoolingParams("classify", task="first"), {"task": "first"}),
    "tag": (PoolingParams("tag", task="ner"), {"task": "ner"}),
    "embed-head": (PoolingParams("embed", task="embed"), {"task": "embed"}),
    "embed-raw-last": (PoolingParams("embed"), {}),
    "embed-raw-mean-normalized": (PoolingParams("embed", pooling="mean", normalize=True),
                                  {"pooling": "mean", "normalize": True}),
    "score": (PoolingParams("score", num_scored_tokens=4), {"num_scored_tokens": 4}),
}


def expected(hf, prompt, name):
    params, options = CASES[name]
    return reference(hf, HEADS, prompt, params.kind, **options)


def finish(engine) -> dict:
    results = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                results[out.req_id] = out
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_each_kind_matches_the_model_run_alone(tiny_llama, name):
    folder, hf = tiny_llama
    engine = make_engine(folder, block_size=4)
    register_heads(engine, HEADS)
    prompt = prompts_of([19], seed=10)[0]
    engine.add_request(prompt, CASES[name][0], req_id="p")
    steps = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        steps += 1
    (out,) = outputs
    assert steps == 1 and out.finished and out.finish_reason == "stop"  # prefill-only: one step
    assert out.token_ids == [] and out.text == ""
    assert_pooled_close(out.pooled, expected(hf, prompt, name))
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks


def test_chunked_pooling_equals_unchunked(tiny_llama):
    folder, hf = tiny_llama
    prompt = prompts_of([37], seed=11)[0]
    results = {}
    for budget in (64, 8, 5):
        engine = make_engine(folder, block_size=4, max_num_batched_tokens=budget)
        register_heads(engine, HEADS)
        for name, (params, _) in CASES.items():
            engine.add_request(prompt, params, req_id=name)
        results[budget] = finish(engine)
    for name in CASES:
        want = expected(hf, prompt, name)
        for budget in (64, 8, 5):
            assert_pooled_close(results[budget][name].pooled, want)


def test_mixed_step_gives_every_row_what_it_gets_alone(tiny_llama):
    folder, hf = tiny_llama
    engine = make_engine(folder, block_size=4, max_num_batched_tokens=256)
    register_heads(engine, HEADS)
    decodes = prompts_of([6, 11, 3], seed=12)
    for i, p in enumerate(decodes):
        engine.add_request(p, GREEDY, req_id=f"gen{i}")
    engine.step()  # their prefills; from now on they decode
    long_prompt, text = prompts_of([120, 23], seed=13)
    for name, (params, _) in CASES.items():
        engine.add_request(text, params, req_id=name)
    engine.add_request(long_prompt, GREEDY, req_id="long")  # gets what the budget leaves: a chunk
    results = {}
    stats = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                results[out.req_id] = out
        stats.append(engine.last_step_stats)
    mixed = stats[0]
    assert mixed.is_mixed and mixed.rows == {"generate": 4, "classify": 3, "tag": 1, "embed": 3, "score": 1}
    assert mixed.num_tokens == 256  # 3 decodes + 8 x 23 pooling tokens + a 69-token chunk of "long"
    assert not stats[-1].is_mixed and stats[-1].rows == {"generate": 1}
    for i, p in enumerate(decodes):  # greedy, float32: the pooling rows beside them change nothing
        assert results[f"gen{i}"].token_ids == hf_greedy(hf, p, GREEDY.max_tokens)
    assert results["long"].token_ids == hf_greedy(hf, long_prompt, GREEDY.max_tokens)
    for name in CASES:
        assert results[name].finish_reason == "stop"
        assert_pooled_close(results[name].pooled, expected(hf, text, name))


def test_step_stats_without_pooling_rows(tiny_llama):
    folder, _ = tiny_llama
    engine = make_engine(folder)
    engine.add_request([1, 2, 3], GREEDY)
    engine.step()
    assert engine.last_step_stats.rows == {"generate": 1} and engine.last_step_stats.num_tokens == 3
    assert not engine.last_step_stats.is_mixed
    finish(engine)
    engine.step()
    assert engine.last_step_stats.rows == {} and engine.last_step_stats.num_tokens == 0
