"""Zero-shot classification by label verbalizers: prompt building, word boundaries, the
probabilities from scores, and, on the real default model, the right sentiment."""

import math

import pytest
import torch

from polyhead.config import EngineConfig
from polyhead.tasks import zero_shot
from polyhead.tasks.spec import TaskSpec
from tests.conftest import tiny_tokenizer

SENTIMENT = TaskSpec(name="sentiment", kind="classify", labels=["negative", "neutral", "positive"])


def test_plan_shares_one_prompt_and_keeps_the_verbalizers_leading_space():
    tok = tiny_tokenizer()
    spec = TaskSpec(name="s", kind="classify", labels=["neg", "pos"], verbalizers={"pos": "great"},
                    prompt_template="Review: {input} Verdict:")
    plan = zero_shot.build_plan(spec, tok, "fine food")
    assert tok.decode(plan.prompt_token_ids) == "Review: fine food Verdict:"  # as written: no chat template
    assert [tok.decode(c) for c in plan.continuations] == [" neg", " great"]
    (first, p1), (second, p2) = plan.requests()
    assert first[: len(plan.prompt_token_ids)] == second[: len(plan.prompt_token_ids)] == plan.prompt_token_ids
    assert (p1.kind, p1.num_scored_tokens, p2.num_scored_tokens) == ("score", 4, 6)
    spaced = zero_shot.build_plan(TaskSpec(name="t", kind="classify", labels=["a", "b"], prompt_template="{input}: "),
                                  tok, "x")
    assert spaced.continuations == [tok.encode("a"), tok.encode("b")]  # after a space: no second one


def test_a_task_without_template_gets_the_default_instruction():
    tok = tiny_tokenizer()
    plan = zero_shot.build_plan(TaskSpec(name="s", kind="classify", labels=["neg", "pos"],
                                         verbalizers={"pos": " great "}), tok, "fine food")
    instruction = zero_shot.DEFAULT_INSTRUCTION.format(labels="neg, great", input="fine food")
    assert tok.decode(plan.prompt_token_ids) == instruction + "\n" + zero_shot.ANSWER_PREFIX
    assert [tok.decode(c) for c in plan.continuations] == [" neg", " great"]


def test_probabilities_are_a_softmax_over_mean_token_log_probs():
    plan = zero_shot.ZeroShotPlan("t", ["a", "b"], [1], [[2], [3, 4]])
    probs = plan.probabilities([math.log(0.5), 2 * math.log(0.5)])  # b: two tokens at 0.5 each
    assert probs == pytest.approx({"a": 0.5, "b": 0.5})  # per token, a and b are equally likely
    probs = plan.probabilities([math.log(0.8), 2 * math.log(0.2)])
    assert probs["a"] == pytest.approx(0.8 / (0.8 + 0.2)) and list(probs) == ["a", "b"]


def test_one_token_answers_make_one_row_scoring_them_all():
    plan = zero_shot.ZeroShotPlan("t", ["a", "b", "c"], [1, 2], [[5], [6], [7]])
    ((prompt, params),) = plan.requests()
    assert prompt == [1, 2] and params.kind == "score" and params.next_token_ids == (5, 6, 7)
    assert plan.scores([[-1.0, -2.0, -3.0]]) == [-1.0, -2.0, -3.0]
    longer = zero_shot.ZeroShotPlan("t", ["a", "b"], [1, 2], [[5], [6, 7]])
    assert [len(p) for p, _ in longer.requests()] == [3, 4] and longer.scores([-1.0, -2.0]) == [-1.0, -2.0]


def test_plan_refuses_tasks_with_heads_and_empty_text():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="is not zero-shot"):
        zero_shot.build_plan(TaskSpec(name="h", kind="classify", labels=["a"], head="h.safetensors"), tok, "x")
    with pytest.raises(ValueError, match="text is empty"):
        zero_shot.build_plan(SENTIMENT, tok, "")


@pytest.mark.model
def test_default_model_gets_clear_sentiments_right(default_model):
    from polyhead.engine.core.engine import Engine
    from polyhead.engine.decoder.backend import DecoderBackend

    engine = Engine(DecoderBackend(EngineConfig(dtype="float32", kv_cache_memory="64MiB"), default_model))
    texts = ["I absolutely loved this movie, it was wonderful!", "The food was cold and the waiter was rude."]
    plans = [zero_shot.build_plan(SENTIMENT, engine.tokenizer, text) for text in texts]
    positive, negative = zero_shot.classify(engine, plans)
    assert max(positive, key=positive.get) == "positive"
    assert max(negative, key=negative.get) == "negative"
    assert sum(positive.values()) == pytest.approx(1.0)
    assert plans[0].is_one_row  # one-token answers: one row
    assert torch.tensor(list(positive.values())).min() > 0
