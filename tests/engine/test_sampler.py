"""Sampler tests on tiny vocabularies: every filter, penalty and seed rule checked by hand or by counting
many draws. Unseeded tests fix the global seed, so they are deterministic."""

import math

import pytest
import torch

from polyhead.engine.core.params import SamplingParams
from polyhead.engine.decoder import sampler as sampler_module
from polyhead.engine.decoder.sampler import Sampler, SamplingRow, make_generator

# probs 0.5, 0.3, 0.15, 0.05: kept sets for each filter are easy to work out by hand
PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = PROBS.log()


def make_row(params: SamplingParams, prompt: list[int] | None = None, output: list[int] | None = None,
             generator: torch.Generator | None = None) -> SamplingRow:
    if generator is None and params.seed is not None:
        generator = make_generator(params.seed)
    return SamplingRow(params, prompt or [], output or [], generator)


def draw(logits: torch.Tensor, params: SamplingParams, n: int) -> torch.Tensor:
    """n unseeded draws from one row of logits, as one batch -> [n] token ids."""
    rows = [make_row(params) for _ in range(n)]
    return torch.tensor(Sampler()(logits.expand(n, -1), rows).token_ids)


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    kept = expected > 0
    assert counts[~kept].sum() == 0, "drew a token of probability 0"
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())


@pytest.fixture(autouse=True)
def fixed_seed():
    torch.manual_seed(0)


def test_greedy_is_argmax_in_any_dtype():
    logits = torch.randn(8, 100)
    rows = [make_row(SamplingParams(temperature=0.0)) for _ in range(8)]
    expected = logits.argmax(dim=-1).tolist()
    assert Sampler()(logits, rows).token_ids == expected
    half = logits.bfloat16()
    assert Sampler()(half, rows).token_ids == half.float().argmax(dim=-1).tolist()
    out = Sampler()(logits, rows)
    assert out.logprobs == [None] * 8


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5, -2.0]])
    row = make_row(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[0, 0], output=[1])
    penalized = logits.clone()
    sampler_module._apply_penalties(penalized, [row])
    # token 0 (prompt, twice: still once) 2 -> 1; token 1 (output) -1 -> -2; the rest unseen
    torch.testing.assert_close(penalized, torch.tensor([[1.0, -2.0, 3.0, 0.5, -2.0]]))


def test_presence_and_frequency_penalties_follow_the_output_only():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    presence = make_row(SamplingParams(presence_penalty=0.5), prompt=[3], output=[1, 1, 2])
    frequency = make_row(SamplingParams(frequency_penalty=0.5), prompt=[3], output=[1, 1, 2])
    both = make_row(SamplingParams(presence_penalty=0.25, frequency_penalty=-1.0, repetition_penalty=2.0),
                    prompt=[3], output=[1, 1, 2])
    plain = make_row(SamplingParams(), prompt=[3], output=[1, 1, 2])
    penalized = logits.repeat(4, 1)
    sampler_module._apply_penalties(penalized, [presence, frequency, both, plain])
    expected = torch.tensor([
        [1.0, 0.5, 0.5, 1.0],  # once per present token
        [1.0, 0.0, 0.5, 1.0],  # 0.5 per occurrence: token 1 twice
        # repetition first (1 -> 0.5 on tokens 1, 2, 3), then -(-1 * count + 0.25) on tokens 1, 2
        [1.0, 0.5 + 2.0 - 0.25, 0.5 + 1.0 - 0.25, 0.5],
        [1.0, 1.0, 1.0, 1.0],  # no penalty: untouched
    ])
    torch.testing.assert_close(penalized, expected)


def test_penalties_change_the_greedy_choice_without_touching_the_callers_logits():
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    original = logits.clone()
    row = make_row(SamplingParams(temperature=0.0, frequency_penalty=1.0), output=[0])
    assert Sampler()(logits, [row]).token_ids == [1]  # 3 - 1 < 2.5
    assert torch.equal(logits, original)
    assert Sampler()(logits, [make_row(SamplingParams(temperature=0.0))]).token_ids == [0]


@pytest.mark.parametrize("params, kept", [
    (SamplingParams(top_k=2), [0, 1]),
    (SamplingParams(top_p=0.7), [0, 1]),  # 0.5 < 0.7 <= 0.5 + 0.3
    (SamplingParams(top_p=0.9), [0, 1, 2]),
    (SamplingParams(min_p=0.2), [0, 1, 2]),  # drops p < 0.2 * 0.5
    # top-k drops 3; top-p 0.9 of the top-3 (.53, .32, .16) keeps 0..2; min-p drops p < 0.35 * .53
    (SamplingParams(top_k=3, top_p=0.9, min_p=0.35), [0, 1]),
    (SamplingParams(temperature=0.5, top_p=0.9), [0, 1]),  # p ~ p^2: .68, .25, .06, .01
])
def test_filters_never_draw_outside_the_kept_set_and_keep_its_proportions(params, kept):
    tokens = draw(LOGITS, params, 20_000)
    probs = (LOGITS / params.temperature).softmax(dim=-1)
    mask = torch.zeros(4, dtype=torch.bool)
    mask[kept] = True
    probs = torch.where(mask, probs, 0.0)
    probs /= probs.sum()
    assert set(tokens.tolist()) == set(kept)
    # chi-square, df <= 2: 0.1% critical value is 13.8
    assert chi_square(tokens, probs) < 13.8


@pytest.mark.parametrize("params", [
    SamplingParams(top_k=1),
    SamplingParams(top_p=0.4),
    SamplingParams(min_p=0.7),
    SamplingParams(temperature=0.01),
    SamplingParams(top_k=1, seed=5),
])
def test_a_kept_set_of_one_token_is_deterministic(params):
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])
    assert draw(logits, params, 2000).unique().tolist() == [1]


def test_temperature_one_frequencies_match_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5, -3.0])
    tokens = draw(logits, SamplingParams(temperature=1.0), 20_000)
    # df = 5: 0.1% critical value is 20.5
    assert chi_square(tokens, logits.softmax(dim=-1)) < 20.5


def test_seeded_frequencies_match_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    row = make_row(SamplingParams(temperature=0.7, seed=123))
    tokens = torch.tensor([Sampler()(logits, [row]).token_ids[0] for _ in range(4000)])
    assert chi_square(tokens, (logits[0] / 0.7).softmax(dim=-1)) < 16.3  # df = 3, 0.1%


def test_same_seed_same_samples_different_seed_different_samples():
    logits = torch.randn(1, 50)

    def sequence(seed: int) -> list[int]:
        row = make_row(SamplingParams(seed=seed))
        return [Sampler()(logits, [row]).token_ids[0] for _ in range(100)]

    first = sequence(7)
    assert sequence(7) == first
    assert sequence(8) != first
    assert len(set(first)) > 10  # it really samples


def test_a_mixed_batch_gives_each_row_what_it_gets_alone():
    vocab = 600  # above NUM_CANDIDATES, so top-p meets both the candidate and the full-sort path
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=0.3),
        SamplingParams(seed=1),
        SamplingParams(seed=2, top_k=5, temperature=0.7),
        SamplingParams(seed=3, top_p=0.9, presence_penalty=1.0),
        SamplingParams(seed=4, min_p=0.1, logprobs=3),
        SamplingParams(temperature=0.9, top_k=3),  # unseeded: only there to share the batch
        SamplingParams(seed=5, top_p=0.5, top_k=300),
    ]
    seeded = [i for i, p in enumerate(params) if p.seed is not None or p.is_greedy]
    prompt = [1, 2, 3]
    batch_rows = [make_row(p, prompt, []) for p in params]
    alone_rows = [make_row(p, prompt, []) for p in params]
    sampler = Sampler()
    for step in range(30):
        # flat logits on odd steps push top-p past the candidates, peaked ones keep it inside
        logits = torch.randn(len(params), vocab) * (0.5 if step % 2 else 4.0)
        batch = sampler(logits, batch_rows).token_ids
        for i in seeded:
            alone = sampler(logits[i:i + 1], [alone_rows[i]]).token_ids[0]
            assert batch[i] == alone, f"row {i} at step {step}"
            alone_rows[i].output_token_ids.append(alone)
        for row, token in zip(batch_rows, batch):
            row.output_token_ids.append(token)
    assert len(set(batch_rows[2].output_token_ids)) > 5


def test_top_k_top_p_cutoff_matches_a_plain_sort():
    # random rows, some flat (the kept set reaches past the candidates), some peaked
    vocab = 1000
    logits = torch.randn(40, vocab) * torch.tensor([0.3, 1.0, 3.0, 8.0]).repeat(10).unsqueeze(1)
    params = [SamplingParams(top_k=[0, 1, 7, 400, 999, 5000][i % 6], top_p=[1.0, 0.3, 0.9, 0.99][i % 4])
              for i in range(40)]
    cutoff = sampler_module._top_k_top_p_cutoff(logits, params)
    for i, p in enumerate(params):
        values = logits[i].double().sort(descending=True).values
        k = min(p.top_k, vocab) if p.top_k else vocab
        probs = values[:k].softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        n = k if p.top_p == 1.0 else int((mass_before < p.top_p).sum())
        expected = float("-inf") if k == vocab and p.top_p == 1.0 else values[n - 1].item()
        assert cutoff[i].item() == pytest.approx(expected), f"row {i}: top_k={p.top_k} top_p={p.top_p}"


def test_logprobs_are_the_raw_log_softmax_with_top_k_most_likely_first():
    logits = torch.randn(4, 30, dtype=torch.bfloat16)
    params = [
        SamplingParams(logprobs=5, temperature=0.3, repetition_penalty=1.8),  # filters must not leak in
        SamplingParams(logprobs=0, temperature=0.0),
        SamplingParams(),
        SamplingParams(logprobs=2, seed=9, top_k=3, presence_penalty=2.0),
    ]
    rows = [make_row(p, prompt=[0, 1, 2], output=[3, 4]) for p in params]
    out = Sampler()(logits, rows)
    raw = logits.float().log_softmax(dim=-1)
    assert out.logprobs[2] is None
    for i in (0, 1, 3):
        lp = out.logprobs[i]
        assert lp.logprob == pytest.approx(raw[i, out.token_ids[i]].item(), abs=1e-5)
        k = params[i].logprobs
        assert len(lp.top) == k
        expected_ids = raw[i].topk(k).indices.tolist() if k else []
        assert [t for t, _ in lp.top] == expected_ids
        for token, logprob in lp.top:
            assert logprob == pytest.approx(raw[i, token].item(), abs=1e-5)
        assert all(a[1] >= b[1] for a, b in zip(lp.top, lp.top[1:]))


def test_logprobs_of_a_greedy_row_are_those_of_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    out = Sampler()(logits, [make_row(SamplingParams(temperature=0.0, logprobs=1))])
    assert out.token_ids == [1]
    assert out.logprobs[0].logprob == pytest.approx(3.0 - math.log(1 + math.exp(3) + math.exp(1)))
    assert out.logprobs[0].top[0][0] == 1


def test_make_generator_is_seeded():
    assert torch.equal(torch.rand(5, generator=make_generator(3)), torch.rand(5, generator=make_generator(3)))
    assert not torch.equal(torch.rand(5, generator=make_generator(3)), torch.rand(5, generator=make_generator(4)))
