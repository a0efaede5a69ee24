"""One request's failure fails that request only: a row whose sampling or head fails ends with
an error while the rest of its step goes on, and a forward that fails is run once more without
the rows that joined it. Faults are injected into the real engine on the tiny model; every
survivor must get exactly the tokens or result it gets alone."""

import pytest
import torch

from polyhead.engine.core.params import PoolingParams, SamplingParams
from polyhead.models.heads import ClassifyHead
from tests.conftest import make_engine

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
POISON = 250  # a token id the injected forward fault reacts to


class ExplodingHead(ClassifyHead):
    """A task head whose forward fails, as a broken pack's head would."""

    def forward(self, pooled):
        raise RuntimeError("this head is broken")


def run(engine) -> dict:
    finals = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finals[out.req_id] = out
    return finals


def alone(folder, prompt, params, **routing):
    engine = make_engine(folder)
    if "task" in routing:
        torch.manual_seed(0)
        engine.register_head(routing["task"], ClassifyHead(64, 3))
    engine.add_request(prompt, params, "alone", **routing)
    return run(engine)["alone"]


@pytest.fixture
def engine(tiny_llama):
    return make_engine(tiny_llama[0])


def test_a_row_whose_sampling_fails_fails_alone(engine, tiny_llama, monkeypatch):
    sampler = engine.backend.runner.sampler
    real = type(sampler).__call__

    def failing_for_top_k_13(self, logits, rows):
        if any(row.params.top_k == 13 for row in rows):
            raise IndexError("index -1 is out of bounds")  # what a degenerate top_p once raised
        return real(self, logits, rows)

    monkeypatch.setattr(type(sampler), "__call__", failing_for_top_k_13)
    bad = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, top_k=13)
    for i, prompt in enumerate([[1, 2, 3], [4, 5, 6, 7], [8, 9]]):
        engine.add_request(prompt, GREEDY, f"ok-{i}")
    engine.add_request([10, 11, 12], bad, "bad")
    finals = run(engine)
    assert finals["bad"].finish_reason == "error" and "sampling failed: IndexError" in finals["bad"].error
    for i, prompt in enumerate([[1, 2, 3], [4, 5, 6, 7], [8, 9]]):
        out = finals[f"ok-{i}"]
        assert out.finish_reason == "length" and out.error is None
        assert out.token_ids == alone(tiny_llama[0], prompt, GREEDY).token_ids
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks


def test_a_failing_head_fails_its_rows_only(engine, tiny_llama):
    torch.manual_seed(0)
    engine.register_head("good", ClassifyHead(64, 3))
    engine.register_head("broken", ExplodingHead(64, 3))
    engine.add_request([1, 2, 3, 4], GREEDY, "chat")
    engine.add_request([5, 6, 7], PoolingParams("classify"), "good", task="good")
    engine.add_request([5, 6, 7], PoolingParams("classify"), "broken", task="broken")
    engine.add_request([8, 9], PoolingParams("classify"), "good-2", task="good")
    finals = run(engine)
    assert finals["broken"].finish_reason == "error" and "its task head failed" in finals["broken"].error
    assert finals["chat"].token_ids == alone(tiny_llama[0], [1, 2, 3, 4], GREEDY).token_ids
    for req_id, prompt in (("good", [5, 6, 7]), ("good-2", [8, 9])):
        expected = alone(tiny_llama[0], prompt, PoolingParams("classify"), task="good").pooled
        torch.testing.assert_close(torch.tensor(finals[req_id].pooled), torch.tensor(expected), rtol=0, atol=1e-6)


def test_a_failing_forward_is_retried_without_the_rows_that_joined_it(engine, tiny_llama, monkeypatch):
    model = engine.backend.runner.model
    real = type(model).forward

    def failing_on_poison(self, input_ids, *args, **kwargs):
        if bool((input_ids == POISON).any()):
            raise RuntimeError("a poisoned prompt")
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", failing_on_poison)
    prompts = {"a": [1, 2, 3], "b": [4, 5, 6, 7, 8]}
    for req_id, prompt in prompts.items():
        engine.add_request(prompt, GREEDY, req_id)
    engine.step()
    engine.step()  # both decode now
    engine.add_request([9, POISON, 10], GREEDY, "poisoned")  # joins a step of decode rows
    finals = run(engine)
    assert finals["poisoned"].finish_reason == "error" and "a poisoned prompt" in finals["poisoned"].error
    monkeypatch.undo()
    for req_id, prompt in prompts.items():
        assert finals[req_id].finish_reason == "length"
        assert finals[req_id].token_ids == alone(tiny_llama[0], prompt, GREEDY).token_ids


def test_a_forward_that_fails_without_new_rows_fails_the_step(engine, monkeypatch):
    model = engine.backend.runner.model
    engine.add_request([1, 2, 3], GREEDY, "a")
    engine.add_request([4, 5], GREEDY, "b")
    engine.step()
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("down")))
    outs = {o.req_id: o for o in engine.step()}
    assert {o.finish_reason for o in outs.values()} == {"error"} and set(outs) == {"a", "b"}
    assert not engine.has_unfinished_requests()
    assert engine.backend.kv_cache.num_free_blocks == engine.backend.kv_cache.num_blocks


def test_an_encoder_step_with_a_failing_head_fails_only_its_requests(tiny_encoder):
    from tests.conftest import make_encoder_engine

    engine = make_encoder_engine(tiny_encoder[0])
    hidden = engine.info.hidden_size
    torch.manual_seed(0)
    engine.register_head("good", ClassifyHead(hidden, 3))
    engine.register_head("broken", ExplodingHead(hidden, 3))
    engine.add_request("some text", PoolingParams("embed"), "embed")
    engine.add_request("some text", PoolingParams("classify"), "good", task="good")
    engine.add_request("some text", PoolingParams("classify"), "broken", task="broken")
    finals = run(engine)
    assert finals["broken"].finish_reason == "error" and "this head is broken" in finals["broken"].error
    expected = make_encoder_engine(tiny_encoder[0])
    expected.register_head("good", engine.heads["good"])
    expected.add_request("some text", PoolingParams("embed"), "embed")
    expected.add_request("some text", PoolingParams("classify"), "good", task="good")
    for req_id, out in run(expected).items():
        assert finals[req_id].finish_reason == "stop"
        torch.testing.assert_close(torch.tensor(finals[req_id].pooled), torch.tensor(out.pooled), rtol=0, atol=1e-6)
