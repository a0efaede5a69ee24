"""logit_bias and min_tokens: the sampler's logit edits (engine/decoder/logit_edits.py), their limits,
and min_tokens holding back stop strings in the detokenizer."""

import pytest
import torch

from polyhead.engine.core.params import SamplingParams
from polyhead.engine.decoder.sampler import Sampler, SamplingRow
from tests.engine.conftest import encode, stream

EOS = 3


def _row(params: SamplingParams, output: list[int] | None = None) -> SamplingRow:
    return SamplingRow(params, [0], output or [], None, frozenset({EOS}))


def test_logit_bias_moves_the_greedy_choice_only_in_its_own_row():
    logits = torch.tensor([[5.0, 1.0, 0.0, 0.0], [5.0, 1.0, 0.0, 0.0]])
    rows = [_row(SamplingParams(temperature=0, logit_bias={1: 4.5})), _row(SamplingParams(temperature=0))]
    assert Sampler()(logits, rows).token_ids == [1, 0]
    assert logits[0, 1] == 1.0  # the caller's logits are left as they were


def test_logit_bias_of_minus_100_bans_a_token_when_sampling():
    logits = torch.zeros(64, 4)
    rows = [_row(SamplingParams(temperature=1.0, logit_bias={0: -100, 1: -100})) for _ in range(64)]
    assert set(Sampler()(logits, rows).token_ids) <= {2, 3}


def test_min_tokens_bans_eos_and_stop_token_ids_until_reached():
    logits = torch.tensor([[0.0, 0.5, 1.0, 9.0]])  # EOS (3) is by far the most likely, then stop token 2
    params = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[2])
    assert Sampler()(logits, [_row(params, output=[1])]).token_ids == [1]  # 3 and 2 banned: 1 of the rest
    assert Sampler()(logits, [_row(params, output=[1, 1])]).token_ids == [EOS]  # reached: EOS may come


def test_logprobs_are_the_raw_models_before_edits():
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    out = Sampler()(logits, [_row(SamplingParams(temperature=0, logprobs=1, logit_bias={1: 10}))])
    assert out.token_ids == [1]
    assert out.logprobs[0].logprob == pytest.approx(float(logits.log_softmax(-1)[0, 1]))


@pytest.mark.parametrize(("fields", "named"), [
    ({"logit_bias": {1: 101}}, "logit_bias"), ({"logit_bias": {-1: 1}}, "logit_bias"),
    ({"logit_bias": {1: float("nan")}}, "logit_bias"), ({"logit_bias": {i: 1 for i in range(301)}}, "logit_bias"),
    ({"min_tokens": -1}, "min_tokens"), ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
])
def test_bad_values_are_refused_naming_the_field(fields, named):
    with pytest.raises(ValueError, match=f"^{named} "):
        SamplingParams(**fields)


def test_min_tokens_keeps_a_stop_string_in_the_first_tokens_from_ending_the_output(smollm2):
    text = "Hi. Hello world. Bye"
    tokens = encode(smollm2, text)
    free, _, stop = stream(smollm2, encode(smollm2, "Q:"), tokens, SamplingParams(stop=["."]))
    assert stop == "." and free.text == "Hi"
    held, _, stop = stream(smollm2, encode(smollm2, "Q:"), tokens, SamplingParams(stop=["."], min_tokens=2))
    assert stop == "." and held.text == "Hi. Hello world"
