"""Engine behaviour around requests: bad input, aborts, stop conditions, seeds, logprobs,
and a failing step, on a tiny random model."""

import pytest
import torch

from polyhead.engine.core.params import SamplingParams
from tests.conftest import make_engine


@pytest.fixture
def engine(tiny_llama):
    return make_engine(tiny_llama[0], max_model_len=64)


def finish_all(engine) -> dict:
    results = {}
    while engine.has_unfinished_requests():
        results.update({o.req_id: o for o in engine.step() if o.finished})
    return results


@pytest.mark.parametrize(("options", "message"), [
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"min_p": 2.0}, r"min_p must be in \[0, 1\]"),
    ({"presence_penalty": 3.0}, r"presence_penalty must be in \[-2, 2\]"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ({"logprobs": 50}, r"logprobs must be None or in \[0, 20\]"),
])
def test_bad_sampling_params_name_the_parameter_and_limit(options, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**options)


def test_bad_prompts_are_rejected_and_others_are_unaffected(engine):
    engine.add_request([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), req_id="ok")
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request("", SamplingParams())
    with pytest.raises(ValueError, match=r"prompt has 64 tokens, but the limit is 63 \(max_model_len 64"):
        engine.add_request([1] * 64, SamplingParams())
    with pytest.raises(ValueError, match=r"token ids must be integers in \[0, 259\)"):
        engine.add_request([1, 9999], SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([1], SamplingParams(), req_id="ok")
    results = finish_all(engine)
    assert list(results) == ["ok"] and len(results["ok"].token_ids) == 4


def test_prompt_beyond_kv_capacity_names_that_limit(tiny_llama):
    engine = make_engine(tiny_llama[0], block_size=4, kv_cache_memory=4 * 2048)  # 4 blocks = 16 tokens
    with pytest.raises(ValueError, match="KV cache capacity 16 tokens"):
        engine.add_request([1] * 20, SamplingParams())


def test_generation_stops_at_max_model_len(engine):
    engine.add_request([1] * 60, SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True), req_id="a")
    out = finish_all(engine)["a"]
    assert out.finish_reason == "length" and len(out.token_ids) == 4  # 60 + 4 = max_model_len 64


def test_abort_frees_blocks_and_ends_the_request(engine):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    engine.add_request(list(range(30)), params, req_id="stay")
    engine.add_request(list(range(40, 70)), params, req_id="go")
    engine.step()
    engine.step()
    used = engine.backend.kv_cache.num_blocks - engine.backend.kv_cache.num_free_blocks
    assert engine.abort_request("go") and not engine.abort_request("no-such-request")
    assert engine.backend.kv_cache.num_blocks - engine.backend.kv_cache.num_free_blocks < used
    outputs = {o.req_id: o for o in engine.step()}
    assert outputs["go"].finished and outputs["go"].finish_reason == "abort"
    results = finish_all(engine)
    assert results["stay"].finish_reason == "length" and len(results["stay"].token_ids) == 20


def test_stop_token_ids_and_stop_strings(engine):
    probe = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    engine.add_request([10, 20, 30], probe, req_id="probe")
    free_run = finish_all(engine)["probe"]
    stop_token = free_run.token_ids[3]
    first_at = free_run.token_ids.index(stop_token)
    engine.add_request([10, 20, 30], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                                    stop_token_ids=[stop_token]), req_id="tok")
    stop_text = free_run.text[2:4]
    engine.add_request([10, 20, 30], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                                    stop=[stop_text]), req_id="str")
    results = finish_all(engine)
    assert results["tok"].finish_reason == "stop" and results["tok"].stop_reason == stop_token
    assert results["tok"].token_ids == free_run.token_ids[: first_at + 1]
    assert results["str"].finish_reason == "stop" and results["str"].stop_reason == stop_text
    assert results["str"].text == free_run.text[: free_run.text.index(stop_text)]


def test_same_seed_same_output_whatever_the_batch(engine):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, ignore_eos=True, seed=1234)
    engine.add_request([3, 4, 5], params, req_id="alone")
    alone = finish_all(engine)["alone"].token_ids
    engine.add_request([9, 9, 9, 9], SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True), req_id="other")
    engine.add_request([3, 4, 5], params, req_id="batched")
    engine.add_request([3, 4, 5], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, ignore_eos=True,
                                                 seed=99), req_id="other-seed")
    results = finish_all(engine)
    assert results["batched"].token_ids == alone
    assert results["other-seed"].token_ids != alone


def test_logprobs_are_the_chosen_tokens_log_softmax(engine, tiny_llama):
    hf = tiny_llama[1]
    prompt = [7, 8, 9, 10]
    engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, logprobs=2), req_id="lp")
    out = finish_all(engine)["lp"]
    assert len(out.logprobs) == 3
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + out.token_ids])).logits[0].log_softmax(-1)
    for i, (token, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        expected = logits[len(prompt) - 1 + i]
        assert lp.logprob == pytest.approx(expected[token].item(), abs=1e-4)
        assert [t for t, _ in lp.top] == expected.topk(2).indices.tolist()


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(engine, monkeypatch):
    engine.add_request([1, 2, 3], SamplingParams(max_tokens=5), req_id="victim")
    execute = engine.backend.runner.execute
    monkeypatch.setattr(engine.backend.runner, "execute", lambda sched: (_ for _ in ()).throw(RuntimeError("boom")))
    outputs = {o.req_id: o for o in engine.step()}
    assert outputs["victim"].finish_reason == "error" and "boom" in outputs["victim"].error
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks
    monkeypatch.setattr(engine.backend.runner, "execute", execute)
    engine.add_request([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True), req_id="next")
    assert len(finish_all(engine)["next"].token_ids) == 5
